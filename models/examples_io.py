"""Training data on disk: spans in TFX's ExampleGen layout, read with TFXIO.

Layout (written by the Beam ingest job; ``write_span`` writes the same for
tests, benchmarks and the demo)::

  <root>/span-<N>/version-<V>/
      Split-<split>/data_tfrecord-SSSSS-of-NNNNN.gz   gzip TFRecords of
                                                     tf.Example
      statistics/Split-<split>/FeatureStats.pb         DatasetFeatureStatisticsList
      schema/schema.pbtxt                              Schema (text); written
                                                       last: the version is
                                                       complete

These are the shapes of TFX's artifacts: the version directory is an
Examples artifact (what ExampleGen writes and ImportExampleGen reads with
the input pattern ``span-{SPAN}/version-{VERSION}/Split-<split>/*``),
``statistics/`` an ExampleStatistics artifact (StatisticsGen) and
``schema/`` a Schema artifact (SchemaGen). docs/tfx_interop.md has the
ImportExampleGen configuration and what this relies on. The examples'
columns are models/example_layout.py's; the schema tags the model inputs,
so training needs nothing else.

Spans written before this layout (``<root>/span-<N>/<split>/*.tfrecord.gz``
with a ``schema.json``) are still read: their schema is derived from the
JSON (``legacy_schema``); they have no statistics.

A span may hold several versions (a re-ingest of the same data); readers
take its highest complete version. ``make_dataset`` reads every span by
default (``spans=None``): a span is a slice of time, and training on all of
them is the safe default; pass ``spans=[...]`` to train on recent data only.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import posixpath
import re
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence, Union

import numpy as np
from google.protobuf import text_format

from models import example_layout as el
from models import susy
from transforms import example_coder, statistics, tfrecord


class _LazyTensorFlow:
  """``tensorflow``, imported on first use: listing and reading spans needs
  it, a job's ``--help`` and its import must not pay for it."""

  def __getattr__(self, name):
    import tensorflow  # pylint: disable=import-outside-toplevel
    return getattr(tensorflow, name)


tf = _LazyTensorFlow()

_LOGGER = logging.getLogger(__name__)

SCHEMA_DIR = 'schema'
SCHEMA_FILE = 'schema.pbtxt'
STATISTICS_DIR = 'statistics'
STATISTICS_FILE = 'FeatureStats.pb'
SPLIT_PREFIX = 'Split-'
DATA_PREFIX = 'data_tfrecord'
FILE_SUFFIX = '.gz'
DEFAULT_VERSION = 0
LEGACY_SCHEMA_FILE = 'schema.json'
LEGACY_FILE_SUFFIX = '.tfrecord.gz'
# The example keys, for callers that only know this module.
LABEL_KEY = el.LABEL_KEY
ID_KEY = el.ID_KEY
DETECTOR_KEY = el.DETECTOR_KEY
TIME_KEY = el.TIME_KEY

_SPAN_RE = re.compile(r'^span-(\d+)/?$')
_VERSION_RE = re.compile(r'^version-(\d+)/?$')

Rows = Union[susy.SusyData, Iterable[Mapping]]


class Span(NamedTuple):
  """One complete span (its newest complete version).

  Attributes:
    span: the span number.
    version: the version read, or None for a span in the legacy layout.
    directory: the version directory (legacy: the span directory).
  """
  span: int
  version: Optional[int]
  directory: str

  @property
  def legacy(self) -> bool:
    return self.version is None


def span_dir(root: str, span: int) -> str:
  """``<root>/span-<span>``."""
  return posixpath.join(os.fspath(root), f'span-{int(span)}')


def version_dir(root: str, span: int, version: int = DEFAULT_VERSION) -> str:
  """``<root>/span-<span>/version-<version>``."""
  return posixpath.join(span_dir(root, span), f'version-{int(version)}')


def split_prefix(directory: str, split: str) -> str:
  """Path prefix of a split's shards in a version directory (the shard
  name and ``FILE_SUFFIX`` follow)."""
  return posixpath.join(directory, SPLIT_PREFIX + split, DATA_PREFIX)


def schema_path(directory: str) -> str:
  return posixpath.join(directory, SCHEMA_DIR, SCHEMA_FILE)


def statistics_path(directory: str, split: str) -> str:
  return posixpath.join(directory, STATISTICS_DIR, SPLIT_PREFIX + split,
                        STATISTICS_FILE)


def schema_text(schema) -> str:
  """A Schema as the text SchemaGen writes."""
  return text_format.MessageToString(schema)


def _numbered(directory: str, pattern: re.Pattern) -> list[int]:
  if not tf.io.gfile.isdir(directory):
    return []
  return sorted(int(m.group(1)) for m in map(pattern.match,
                                             tf.io.gfile.listdir(directory))
                if m)


def find_span(root: str, span: int) -> Optional[Span]:
  """The newest complete version of ``span``, or None."""
  directory = span_dir(root, span)
  for version in reversed(_numbered(directory, _VERSION_RE)):
    path = version_dir(root, span, version)
    if tf.io.gfile.exists(schema_path(path)):
      return Span(span, version, path)
  if tf.io.gfile.exists(posixpath.join(directory, LEGACY_SCHEMA_FILE)):
    return Span(span, None, directory)
  return None


def list_spans(root: str) -> list[int]:
  """Spans under ``root`` with a complete version (either layout)."""
  root = os.fspath(root)
  return [s for s in _numbered(root, _SPAN_RE)
          if find_span(root, s) is not None]


def _require(root: str, span: int) -> Span:
  found = find_span(root, span)
  if found is None:
    raise FileNotFoundError(f'span {span} under {root} has no complete '
                            f'version')
  return found


def legacy_schema(document: Mapping):
  """The Schema of a legacy span, from its schema.json."""
  kinds = document.get('columns') or dict(
      {n: example_coder.FLOAT for n in document['features']},
      **{LABEL_KEY: example_coder.INT, ID_KEY: example_coder.BYTES,
         DETECTOR_KEY: example_coder.BYTES, TIME_KEY: example_coder.FLOAT})
  features = set(document['features'])
  roles = {LABEL_KEY: el.ROLE_LABEL, ID_KEY: el.ROLE_ID,
           DETECTOR_KEY: el.ROLE_KEY, TIME_KEY: el.ROLE_TIME,
           el.EVENT_TIME_MS_KEY: el.ROLE_TIME}
  return el.make_schema({
      name: (kind, el.ROLE_FEATURE if name in features else
             roles.get(name, el.ROLE_WINDOW))
      for name, kind in kinds.items()})


def read_schema(root: str, span: int):
  """The span's tensorflow_metadata Schema (derived for legacy spans)."""
  # pylint: disable-next=import-outside-toplevel
  from tensorflow_metadata.proto.v0 import schema_pb2
  found = _require(root, span)
  if found.legacy:
    with tf.io.gfile.GFile(posixpath.join(found.directory,
                                          LEGACY_SCHEMA_FILE)) as f:
      return legacy_schema(json.loads(f.read()))
  with tf.io.gfile.GFile(schema_path(found.directory)) as f:
    return text_format.Parse(f.read(), schema_pb2.Schema())


def read_statistics(root: str, span: int, split: str):
  """The split's ``DatasetFeatureStatisticsList``.

  Raises:
    FileNotFoundError: no such span or split, or a legacy span.
  """
  # pylint: disable-next=import-outside-toplevel
  from tensorflow_metadata.proto.v0 import statistics_pb2
  found = _require(root, span)
  if found.legacy:
    raise FileNotFoundError(f'span {span} under {root} is in the legacy '
                            f'layout: it has no statistics')
  path = statistics_path(found.directory, split)
  with tf.io.gfile.GFile(path, 'rb') as f:
    return statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())


def split_files(root: str, split: str, spans: Sequence[int]) -> list[str]:
  """The TFRecord files of ``split`` in ``spans``, sorted per span."""
  files = []
  for span in spans:
    found = _require(root, span)
    pattern = (posixpath.join(found.directory, split, '*' + LEGACY_FILE_SUFFIX)
               if found.legacy else
               split_prefix(found.directory, split) + '-*' + FILE_SUFFIX)
    files.extend(sorted(tf.io.gfile.glob(pattern)))
  return files


def resolve_spans(root: str, spans: Optional[Sequence[int]] = None
                  ) -> list[int]:
  """``spans`` checked against what exists, or all spans when None.

  Raises:
    FileNotFoundError: no span exists, or a requested one is missing.
  """
  available = list_spans(root)
  if not available:
    raise FileNotFoundError(f'no spans (span-<N>/version-<V>/{SCHEMA_DIR}/'
                            f'{SCHEMA_FILE}) under {root}')
  if spans is None:
    return available
  missing = sorted(set(spans) - set(available))
  if missing:
    raise FileNotFoundError(f'spans {missing} not found under {root}; '
                            f'available: {available}')
  return sorted(set(int(s) for s in spans))


def model_inputs(schema) -> list[str]:
  """The model inputs a span schema names, in order."""
  return list(el.layout_of(schema).features)


def make_dataset(root: str, split: str, *,
                 spans: Optional[Sequence[int]] = None, batch_size: int = 256,
                 feature_names: Optional[Sequence[str]] = None,
                 shuffle_buffer: int = 0, seed: Optional[int] = None,
                 num_parallel_reads: Optional[int] = None,
                 drop_remainder: bool = False) -> tf.data.Dataset:
  """A dataset of ``(features [B, F] float32, label [B] float32)`` batches,
  read by tfx-bsl's TFXIO (``TFExampleRecord`` with the span's schema).

  Args:
    root: data root.
    split: "train" or "eval".
    spans: spans to read; None (the default) reads ALL spans under root.
    batch_size: rows per batch.
    feature_names: model input columns, in order (default: the schema's).
    shuffle_buffer: records to shuffle over (0 = file order; files are
      interleaved in parallel, so order is stable only with shuffle 0 and a
      single file).
    seed: shuffle seed.
    num_parallel_reads: files read in parallel (default: tf.data.AUTOTUNE).
    drop_remainder: drop a last, smaller batch.

  Raises:
    FileNotFoundError: no spans or no files for the split.
  """
  # pylint: disable-next=import-outside-toplevel
  from tfx_bsl.public import tfxio
  spans = resolve_spans(root, spans)
  files = split_files(root, split, spans)
  if not files:
    raise FileNotFoundError(f'no {split} files in spans {spans} of {root}')
  schema = read_schema(root, spans[-1])
  names = list(feature_names) if feature_names else model_inputs(schema)
  _LOGGER.info('Reading %s split: spans %s, %d files', split, spans,
               len(files))
  source = tfxio.TFExampleRecord(file_pattern=files, schema=schema,
                                 telemetry_descriptors=['kbi', 'train'])
  source = source.Project(names + [LABEL_KEY])
  ds = source.TensorFlowDataset(tfxio.TensorFlowDatasetOptions(
      batch_size=batch_size, drop_final_batch=drop_remainder, num_epochs=1,
      shuffle=bool(shuffle_buffer), shuffle_buffer_size=max(shuffle_buffer, 1),
      shuffle_seed=seed, reader_num_threads=(
          tf.data.AUTOTUNE if num_parallel_reads is None else
          num_parallel_reads),
      label_key=LABEL_KEY))

  def to_model_input(features, label):
    x = tf.concat([tf.cast(features[n], tf.float32) for n in names], axis=1)
    return x, tf.cast(tf.reshape(label, [-1]), tf.float32)

  return ds.map(to_model_input, num_parallel_calls=tf.data.AUTOTUNE)


def read_arrays(root: str, split: str, **kwargs) -> tuple[np.ndarray,
                                                          np.ndarray]:
  """The whole split in memory: (features [N, F] float32, labels [N] int64)."""
  features, labels = [], []
  for x, y in make_dataset(root, split, **kwargs):
    features.append(x.numpy())
    labels.append(y.numpy())
  if not features:
    return (np.zeros((0, len(kwargs.get('feature_names') or
                             susy.FEATURE_NAMES)), np.float32),
            np.zeros((0,), np.int64))
  return np.concatenate(features), np.concatenate(labels).astype(np.int64)


def _record_batch(layout: el.ExampleLayout, rows: Rows, first_index: int):
  """SusyData (ids from ``first_index``) or event dicts -> columns."""
  if isinstance(rows, susy.SusyData):
    rows = susy.to_events(rows, start_index=first_index)
  rows = list(rows)
  names = layout.features
  return layout.record_batch(
      np.asarray([[e[n] for n in names] for e in rows], np.float32).reshape(
          len(rows), len(names)),
      [str(e[ID_KEY]) for e in rows], [str(e[DETECTOR_KEY]) for e in rows],
      np.asarray([e[TIME_KEY] for e in rows], np.float64),
      labels=np.asarray([e[LABEL_KEY] for e in rows], np.int64))


def write_span(root: str, span: int, rows_by_split: Mapping[str, Rows], *,
               feature_names: Sequence[str] = susy.FEATURE_NAMES,
               shards: int = 2, version: int = DEFAULT_VERSION) -> str:
  """Writes one span version in the layout above, with its statistics.

  Args:
    root: data root (local or gs://).
    span: span number.
    rows_by_split: split name -> rows, either ``susy.SusyData`` (event ids,
      detectors and times are made by ``susy.to_events``, numbered on across
      the splits in the given order so ids are unique within the span) or
      event dicts as produced to Kafka.
    feature_names: the model input columns.
    shards: files per split (rows are dealt round-robin).
    version: the span version.

  Returns:
    The version directory.
  """
  layout = el.ExampleLayout(tuple(feature_names))
  directory = version_dir(root, span, version)
  encoder = example_coder.Encoder()
  first_index = 0
  for split, rows in rows_by_split.items():
    batch = _record_batch(layout, rows, first_index)
    records = encoder.encode(batch) if batch.num_rows else []
    prefix = split_prefix(directory, split)
    tf.io.gfile.makedirs(posixpath.dirname(prefix))
    for i in range(shards):
      path = f'{prefix}-{i:05d}-of-{shards:05d}{FILE_SUFFIX}'
      with tf.io.gfile.GFile(path, 'wb') as f:
        f.write(gzip.compress(tfrecord.frame_all(records[i::shards])))
    accumulator = statistics.Accumulator()
    accumulator.add(batch)
    _write_bytes(statistics_path(directory, split), statistics.statistics_list(
        {split: accumulator.to_proto()}).SerializeToString())
    first_index += batch.num_rows
    _LOGGER.info('Wrote %d examples to %s', batch.num_rows,
                 posixpath.dirname(prefix))
  # The schema goes last: a reader treats a version without it as incomplete.
  _write_bytes(schema_path(directory),
               schema_text(layout.schema()).encode('utf-8'))
  return directory


def _write_bytes(path: str, data: bytes) -> None:
  tf.io.gfile.makedirs(posixpath.dirname(path))
  with tf.io.gfile.GFile(path, 'wb') as f:
    f.write(data)
