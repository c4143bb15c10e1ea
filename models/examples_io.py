"""Training data on disk: spans of gzip TFRecord files of tf.Example.

Layout (written by the Beam ingest job; ``write_span`` writes the same for
tests and benchmarks)::

  <root>/span-<N>/schema.json            {"features": [...], "label": "label",
                                          "id": "event_id"}
  <root>/span-<N>/<split>/*.tfrecord.gz  splits "train" and "eval"

Each ``tf.Example`` holds one float feature per feature name (a float_list of
length 1), ``label`` (int64), ``event_id`` and ``detector`` (bytes) and
``event_time`` (float, epoch seconds).

``make_dataset`` reads every span by default (``spans=None``): a span is a
slice of time, and training on all of them is the safe default; pass
``spans=[...]`` to train on recent data only.

TensorFlow is imported where it is used: the ingest job imports this module,
and its ``--help`` must not start TensorFlow.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from models import susy

_LOGGER = logging.getLogger(__name__)

SCHEMA_FILE = 'schema.json'
LABEL_KEY = 'label'
ID_KEY = 'event_id'
DETECTOR_KEY = 'detector'
TIME_KEY = 'event_time'
FILE_SUFFIX = '.tfrecord.gz'
_SPAN_RE = re.compile(r'^span-(\d+)/?$')

Rows = Union[susy.SusyData, Iterable[Mapping]]


def span_dir(root: str, span: int) -> str:
  """``<root>/span-<span>``."""
  return posixpath.join(os.fspath(root), f'span-{int(span)}')


def make_example(features_row: Sequence[float], label: int, event_id: str,
                 key: str, event_time: float, *,
                 feature_names: Sequence[str] = susy.FEATURE_NAMES
                 ) -> tf.train.Example:
  """One training example in the layout above.

  Args:
    features_row: feature values, in ``feature_names`` order.
    label: 0 or 1.
    event_id: the event's id.
    key: the detector (the Kafka message key of the scored stream).
    event_time: epoch seconds.
    feature_names: the names of ``features_row``'s values.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  if len(features_row) != len(feature_names):
    raise ValueError(f'{len(features_row)} values for '
                     f'{len(feature_names)} feature names')
  feature = {
      name: tf.train.Feature(float_list=tf.train.FloatList(value=[value]))
      for name, value in zip(feature_names, features_row)
  }
  feature[LABEL_KEY] = tf.train.Feature(
      int64_list=tf.train.Int64List(value=[int(label)]))
  feature[ID_KEY] = tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[event_id.encode('utf-8')]))
  feature[DETECTOR_KEY] = tf.train.Feature(
      bytes_list=tf.train.BytesList(value=[key.encode('utf-8')]))
  feature[TIME_KEY] = tf.train.Feature(
      float_list=tf.train.FloatList(value=[float(event_time)]))
  return tf.train.Example(features=tf.train.Features(feature=feature))


class ExampleEncoder:
  """Serializes examples like ``make_example(...).SerializeToString()``, fast.

  Reuses one proto and overwrites its values in place (~10x faster than
  building a new ``tf.train.Example`` per row). Not thread-safe: one
  encoder per thread.
  """

  def __init__(self, feature_names: Sequence[str] = susy.FEATURE_NAMES):
    self._names = list(feature_names)
    self._proto = make_example([0.0] * len(self._names), 0, '', '', 0.0,
                               feature_names=self._names)
    fmap = self._proto.features.feature
    self._values = [fmap[n].float_list.value for n in self._names]
    self._label = fmap[LABEL_KEY].int64_list.value
    self._id = fmap[ID_KEY].bytes_list.value
    self._key = fmap[DETECTOR_KEY].bytes_list.value
    self._time = fmap[TIME_KEY].float_list.value

  def encode(self, features_row: Sequence[float], label: int, event_id: str,
             key: str, event_time: float) -> bytes:
    """Serialized example; arguments as for ``make_example``."""
    if len(features_row) != len(self._values):
      raise ValueError(f'{len(features_row)} values for '
                       f'{len(self._values)} feature names')
    for values, value in zip(self._values, features_row):
      values[0] = value
    self._label[0] = int(label)
    self._id[0] = event_id.encode('utf-8')
    self._key[0] = key.encode('utf-8')
    self._time[0] = float(event_time)
    return self._proto.SerializeToString()

  def encode_event(self, event: Mapping) -> bytes:
    """Serialized example of an event dict (as produced to Kafka)."""
    return self.encode([event[n] for n in self._names], event[LABEL_KEY],
                       str(event[ID_KEY]), str(event[DETECTOR_KEY]),
                       event[TIME_KEY])


def _examples(rows: Rows, feature_names: Sequence[str], first_index: int):
  """Serialized examples of SusyData (ids from ``first_index``) or events."""
  if isinstance(rows, susy.SusyData):
    rows = susy.to_events(rows, start_index=first_index)
  encoder = ExampleEncoder(feature_names)
  for event in rows:
    yield encoder.encode_event(event)


def write_span(root: str, span: int, rows_by_split: Mapping[str, Rows], *,
               feature_names: Sequence[str] = susy.FEATURE_NAMES,
               shards: int = 2) -> str:
  """Writes one span: schema.json and gzip TFRecord shards per split.

  Args:
    root: data root (local or gs://).
    span: span number.
    rows_by_split: split name -> rows, either ``susy.SusyData`` (event ids,
      detectors and times are made by ``susy.to_events``, numbered on across
      the splits in the given order so ids are unique within the span) or
      event dicts as produced to Kafka.
    feature_names: feature columns, recorded in schema.json.
    shards: files per split (rows are dealt round-robin).

  Returns:
    The span directory.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  directory = span_dir(root, span)
  tf.io.gfile.makedirs(directory)
  options = tf.io.TFRecordOptions(compression_type='GZIP')
  first_index = 0
  for split, rows in rows_by_split.items():
    split_dir = posixpath.join(directory, split)
    tf.io.gfile.makedirs(split_dir)
    writers = [
        tf.io.TFRecordWriter(
            posixpath.join(split_dir,
                           f'part-{i:05d}-of-{shards:05d}{FILE_SUFFIX}'),
            options) for i in range(shards)
    ]
    count = 0
    try:
      for count, record in enumerate(
          _examples(rows, feature_names, first_index), start=1):
        writers[(count - 1) % shards].write(record)
    finally:
      for writer in writers:
        writer.close()
    first_index += count
    _LOGGER.info('Wrote %d examples to %s', count, split_dir)
  # The schema goes last: a reader treats a span without it as incomplete.
  with tf.io.gfile.GFile(posixpath.join(directory, SCHEMA_FILE), 'w') as f:
    f.write(json.dumps({'features': list(feature_names), 'label': LABEL_KEY,
                        'id': ID_KEY}, indent=2) + '\n')
  return directory


def list_spans(root: str) -> list[int]:
  """Spans under ``root`` that have a schema.json, ascending."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  root = os.fspath(root)
  if not tf.io.gfile.isdir(root):
    return []
  spans = []
  for name in tf.io.gfile.listdir(root):
    match = _SPAN_RE.match(name)
    if match and tf.io.gfile.exists(
        posixpath.join(span_dir(root, int(match.group(1))), SCHEMA_FILE)):
      spans.append(int(match.group(1)))
  return sorted(spans)


def read_schema(root: str, span: int) -> dict:
  """schema.json of a span."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with tf.io.gfile.GFile(posixpath.join(span_dir(root, span), SCHEMA_FILE),
                         'r') as f:
    return json.loads(f.read())


def split_files(root: str, split: str, spans: Sequence[int]) -> list[str]:
  """The TFRecord files of ``split`` in ``spans``, sorted."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  files = []
  for span in spans:
    pattern = posixpath.join(span_dir(root, span), split, '*' + FILE_SUFFIX)
    files.extend(sorted(tf.io.gfile.glob(pattern)))
  return files


def parse_fn(feature_names: Sequence[str]):
  """A function: batch of serialized examples -> (features [B, F], label [B]).

  Features are float32 in ``feature_names`` order; the label is float32
  (0.0 / 1.0), what binary cross-entropy and the metrics expect.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  names = list(feature_names)
  spec = {n: tf.io.FixedLenFeature([1], tf.float32) for n in names}
  spec[LABEL_KEY] = tf.io.FixedLenFeature([1], tf.int64)

  def parse(serialized):
    parsed = tf.io.parse_example(serialized, spec)
    features = tf.concat([parsed[n] for n in names], axis=1)
    label = tf.cast(tf.reshape(parsed[LABEL_KEY], [-1]), tf.float32)
    return features, label

  return parse


def resolve_spans(root: str, spans: Optional[Sequence[int]] = None
                  ) -> list[int]:
  """``spans`` checked against what exists, or all spans when None.

  Raises:
    FileNotFoundError: no span exists, or a requested one is missing.
  """
  available = list_spans(root)
  if not available:
    raise FileNotFoundError(f'no spans (span-<N>/{SCHEMA_FILE}) under {root}')
  if spans is None:
    return available
  missing = sorted(set(spans) - set(available))
  if missing:
    raise FileNotFoundError(f'spans {missing} not found under {root}; '
                            f'available: {available}')
  return sorted(set(int(s) for s in spans))


def make_dataset(root: str, split: str, *,
                 spans: Optional[Sequence[int]] = None, batch_size: int = 256,
                 feature_names: Sequence[str] = susy.FEATURE_NAMES,
                 shuffle_buffer: int = 0, seed: Optional[int] = None,
                 num_parallel_reads: Optional[int] = None,
                 drop_remainder: bool = False) -> tf.data.Dataset:
  """A dataset of ``(features [B, F] float32, label [B] float32)`` batches.

  Args:
    root: data root.
    split: "train" or "eval".
    spans: spans to read; None (the default) reads ALL spans under root.
    batch_size: rows per batch.
    feature_names: feature columns, in model input order.
    shuffle_buffer: records to shuffle over (0 = file order; files are
      interleaved in parallel, so order is stable only with shuffle 0 and a
      single file).
    seed: shuffle seed.
    num_parallel_reads: files read in parallel (default: tf.data.AUTOTUNE).
    drop_remainder: drop a last, smaller batch.

  Raises:
    FileNotFoundError: no spans or no files for the split.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  spans = resolve_spans(root, spans)
  files = split_files(root, split, spans)
  if not files:
    raise FileNotFoundError(f'no {split} files in spans {spans} of {root}')
  _LOGGER.info('Reading %s split: spans %s, %d files', split, spans,
               len(files))
  if num_parallel_reads is None:
    num_parallel_reads = tf.data.AUTOTUNE
  ds = tf.data.TFRecordDataset(files, compression_type='GZIP',
                               num_parallel_reads=num_parallel_reads)
  if shuffle_buffer:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  # Batch first, then parse the whole batch at once: far cheaper than
  # parsing example by example.
  ds = ds.batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.map(parse_fn(feature_names), num_parallel_calls=tf.data.AUTOTUNE)
  return ds.prefetch(tf.data.AUTOTUNE)


def read_arrays(root: str, split: str, **kwargs) -> tuple[np.ndarray,
                                                          np.ndarray]:
  """The whole split in memory: (features [N, F] float32, labels [N] int64)."""
  features, labels = [], []
  for x, y in make_dataset(root, split, **kwargs):
    features.append(x.numpy())
    labels.append(y.numpy())
  if not features:
    return (np.zeros((0, len(kwargs.get('feature_names', susy.FEATURE_NAMES))),
                     np.float32), np.zeros((0,), np.int64))
  return np.concatenate(features), np.concatenate(labels).astype(np.int64)
