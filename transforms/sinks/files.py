"""Windowed files of prediction rows and dead letters, local or ``gs://``.

Layout: one file set per window, pane and shard, flat under the output path::

  <output_path>/predictions-20261124T080000Z-20261124T080100Z-pane-0-00000-of-00002.jsonl
  <output_path>/predictions-global-pane-0-00001-of-00002.parquet      (GlobalWindow)
  <output_path>/predictions-run20261124T075502Z-20261124T080000Z-20261124T080100Z-pane-1-00001-of-00002.jsonl
                                                                     (streaming: run tag)

The window part is the window's start and end in UTC (``%Y%m%dT%H%M%SZ``,
with ``.%f`` when not whole seconds), or ``global`` for the GlobalWindow.
``pane-N`` is the pane index of the firing (0 for the only or first firing,
then 1, 2, ... for early, on-time and late firings), ``SSSSS-of-NNNNN`` the
shard and the configured shard count. A pane with fewer rows than shards has
fewer files: empty shards are not written, so ``of-NNNNN`` is an upper
bound, not a promise. Names are deterministic (window, pane, shard), so a
retried bundle overwrites its own earlier attempt instead of adding a
duplicate file.

Atomicity: every file is written under a temporary directory outside the
output path (default ``<output_path>.tmp/<uuid>/``; GCS: a sibling prefix)
and then renamed to its final name (``os.rename`` locally: atomic on one
filesystem; GCS: server-side copy then delete: the object appears whole). A
reader of the output path never sees a partial file; a failed write leaves
nothing there (and deletes its temporary file).

Why not ``apache_beam.io.fileio.WriteToFiles``: in Beam 2.77 it passes no pane
to the file naming (``pane=None``; the name template has no pane part) and
documents that it "does not support multiple firings per window" in
streaming: an early and an on-time pane (or a late pane) of one window get the
same names and overwrite each other. Its shard count is not honoured either
(files per window = bundles that saw the window), and its temporary files
live under the output path by default. This module encodes rows into a few
bytes blobs per window and bundle, groups them with one GroupByKey on the
shard key, and writes each (window, pane, shard) firing in one DoFn call.

Triggers are not set here: the jobs set them upstream (``WindowFeatures(...,
trigger=...)``). The default fires once when the watermark passes the end of
the window, then once per late element. For long windows in streaming, pass
``early_firing_trigger(seconds)`` so rows are written every ``seconds`` of
processing time before the window closes. Use DISCARDING accumulation (the
WindowFeatures default): with ACCUMULATING, each pane's files repeat the
rows of the earlier panes.

Streaming file names carry a run tag, the UTC time the pipeline was built
(``predictions-run20261124T080512Z-20261124T080000Z-20261124T080100Z-pane-0-
00000-of-00002.jsonl``): a new job (restart, drain and resubmit) starts its
pane indices at 0 again and re-reads from the committed offsets, so without
the tag its first pane of a window could overwrite a file of the previous
run and lose the rows only that file had. With the tag it adds a file
instead (at-least-once, like the Kafka sink). Within one job the tag is
fixed, so bundle retries still overwrite their own attempts. Batch names
have no tag: re-running a backfill replaces its files. Streaming in the
GlobalWindow needs an early trigger (the watermark never passes the end of
the GlobalWindow).
"""

import collections.abc
import logging
import math
import os
import random
import time
import uuid
from typing import Any, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.transforms import trigger as trigger_lib
from apache_beam.transforms import window as window_lib
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming, WindowedValue

from transforms import example_coder, tfrecord
from transforms.outage import OutagePolicy, call_through_outage

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'file_sink'

FILE_FORMATS = ('jsonl', 'parquet', 'tfrecord')
SUFFIXES = {'jsonl': '.jsonl', 'parquet': '.parquet', 'tfrecord': '.tfrecord'}
_MIME_TYPES = {'jsonl': 'application/x-ndjson',
               'parquet': 'application/vnd.apache.parquet',
               'tfrecord': 'application/octet-stream'}
COLUMN_TYPES = ('STRING', 'FLOAT', 'INTEGER', 'BOOLEAN')
_ARROW_TYPES = {'STRING': pa.string(), 'FLOAT': pa.float64(),
                'INTEGER': pa.int64(), 'BOOLEAN': pa.bool_()}

DEFAULT_NUM_SHARDS = 2
GLOBAL_WINDOW_LABEL = 'global'
# Rows per Parquet row group: big enough for columnar compression, small
# enough that a writer holds little more than one group in memory.
PARQUET_ROW_GROUP_ROWS = 65536
# String columns with one value per row: no Parquet dictionary for them.
_UNIQUE_COLUMNS = frozenset({'event_id'})
# Encoding buffers (_EncodeShards): rows per blob, and rows held per bundle
# before every window's rows are encoded.
_ENCODE_BLOB_ROWS = 32768
_ENCODE_BUFFER_ROWS = 131072


def _processing_delay(seconds: float) -> int:
  """A processing-time delay Beam can translate: whole seconds.

  Beam 2.77 turns AfterProcessingTime(d) into ``delay_millis=d * 1000``; a
  float there is rejected by protobuf, so a float delay makes the pipeline
  unbuildable on every portable runner (Dataflow, Prism, Flink).
  """
  return max(1, math.ceil(seconds))


def early_firing_trigger(seconds: float):
  """Fires every ``seconds`` of processing time while a window is open, at
  the watermark, then once per late element.

  Pass it to ``WindowFeatures(..., trigger=early_firing_trigger(30))`` so long
  windows are written before they close (one ``pane-N`` file set per firing).
  """
  if not seconds > 0:
    raise ValueError(f'early firing period must be > 0 s, got {seconds}')
  return trigger_lib.AfterWatermark(
      early=trigger_lib.AfterProcessingTime(_processing_delay(seconds)),
      late=trigger_lib.AfterCount(1))


def check_columns(columns: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
  """``columns`` as a list of (name, type); ValueError on unknown types,
  duplicate or empty names."""
  out = []
  seen = set()
  for name, typ in columns:
    if not name:
      raise ValueError('column with an empty name')
    if name in seen:
      raise ValueError(f'duplicate column {name!r}')
    if typ not in COLUMN_TYPES:
      raise ValueError(f'column {name!r}: type {typ!r} is not one of '
                       f'{COLUMN_TYPES}')
    seen.add(name)
    out.append((name, typ))
  if not out:
    raise ValueError('no columns')
  return out


def arrow_schema(columns: Sequence[tuple[str, str]]) -> pa.Schema:
  """The Parquet/Arrow schema of ``columns``: STRING->string,
  FLOAT->float64, INTEGER->int64, BOOLEAN->bool, all nullable."""
  return pa.schema([pa.field(name, _ARROW_TYPES[typ], nullable=True)
                    for name, typ in check_columns(columns)])


def _utc(ts: Timestamp) -> str:
  dt = ts.to_utc_datetime()
  if ts.micros % 1_000_000:
    return dt.strftime('%Y%m%dT%H%M%S.%fZ')
  return dt.strftime('%Y%m%dT%H%M%SZ')


def window_label(window) -> str:
  """``20261124T080000Z-20261124T080100Z`` for an interval window (UTC),
  ``global`` for the GlobalWindow."""
  if isinstance(window, window_lib.GlobalWindow):
    return GLOBAL_WINDOW_LABEL
  return f'{_utc(window.start)}-{_utc(window.end)}'


def file_name(prefix: str, window, pane_index: int, shard: int,
              num_shards: int, suffix: str, run_tag: Optional[str] = None
              ) -> str:
  """The final name of one shard file of one window and pane."""
  parts = [prefix] if prefix else []
  if run_tag:
    parts.append(run_tag)
  parts.append(window_label(window))
  return (f'{"-".join(parts)}-pane-{pane_index}-{shard:05d}-of-'
          f'{num_shards:05d}{suffix}')


def _run_tag() -> str:
  return time.strftime('run%Y%m%dT%H%M%SZ', time.gmtime())


def default_temp_directory(output_path: str) -> str:
  """A fresh temporary directory beside (not under) ``output_path``."""
  path = output_path.rstrip('/')
  if path.startswith('gs://') and '/' not in path[len('gs://'):]:
    raise ValueError(
        f'output path {output_path!r} is a bucket root: give a prefix '
        '(gs://bucket/predictions) or a temp_directory, so temporary files '
        'are not written under the output path')
  return FileSystems.join(path + '.tmp', uuid.uuid4().hex)


# --- Row formats ---------------------------------------------------------------
#
# Rows are encoded in the step before the GroupByKey: what the shuffle moves
# is a few bytes blobs per window and bundle (JSONL lines, framed TFRecords,
# or an Arrow IPC stream for Parquet), not thousands of dicts: per-element
# coder work is the cost of a Python pipeline. The writer after the GroupByKey only
# concatenates blobs (JSONL, TFRecord) or turns Arrow batches into row groups
# (Parquet).


class _FileWriter:
  """Writes encoded blobs of one format to one open binary file handle."""

  def __init__(self, fh):
    self._fh = fh

  def write(self, blob: bytes) -> None:
    self._fh.write(blob)

  def close(self) -> None:
    """Flushes what is buffered; the caller closes the handle."""


class _ParquetFileWriter(_FileWriter):

  def __init__(self, fh, schema: pa.Schema):
    super().__init__(fh)
    self._schema = schema
    # Dictionary pages only for strings that repeat (keys): on unique ids
    # and floats a dictionary is pure work (measured on 1M prediction rows:
    # 0.82 s and 64 MB with dictionaries everywhere, 0.30 s and 52 MB).
    dictionary = [f.name for f in schema
                  if pa.types.is_string(f.type) and f.name not in
                  _UNIQUE_COLUMNS]
    self._writer = pq.ParquetWriter(pa.PythonFile(fh, mode='w'), schema,
                                    use_dictionary=dictionary)
    self._pending: list[pa.RecordBatch] = []
    self._pending_rows = 0

  def write(self, blob):
    for batch in pa.ipc.open_stream(blob):
      self._pending.append(batch)
      self._pending_rows += batch.num_rows
    if self._pending_rows >= PARQUET_ROW_GROUP_ROWS:
      self._flush()

  def _flush(self):
    if self._pending:
      table = pa.Table.from_batches(self._pending, schema=self._schema)
      self._writer.write_table(table, row_group_size=PARQUET_ROW_GROUP_ROWS)
      self._pending, self._pending_rows = [], 0

  def close(self):
    self._flush()
    self._writer.close()


# Epoch-second columns of the output rows; TFRecord adds exact <name>_us.
TIME_COLUMNS = frozenset(('event_time', 'read_time', 'scored_time',
                          'window_start', 'window_end'))
# Largest epoch second whose microseconds fit in an int64.
_MAX_US_SECONDS = (2**63 - 1) / 1e6


class _RowCodec:
  """One file format: ``encode(rows) -> bytes`` before the shuffle,
  ``writer(fh)`` after it. Picklable; heavy state is built lazily.

  TFRecord: each row is a ``tf.train.Example`` with one feature per column:
  STRING -> bytes_list (UTF-8), INTEGER -> int64_list, BOOLEAN -> int64_list
  (0/1), FLOAT -> float_list (float32: the only float type of tf.Example),
  None -> the feature with an empty list. float32 keeps ~7 significant
  digits: right for scores and features, not for epoch-second times (128 s
  apart around 2026), so each time column (``TIME_COLUMNS``) also gets an
  exact int64 feature ``<name>_us`` (epoch microseconds).
  """

  def __init__(self, file_format: str, columns):
    if file_format not in FILE_FORMATS:
      raise ValueError(f'file format {file_format!r}: use one of '
                       f'{FILE_FORMATS}')
    self.file_format = file_format
    self.columns = tuple(check_columns(columns))
    self._schema = None
    self._encoder = None

  def __getstate__(self):
    return {'file_format': self.file_format, 'columns': self.columns}

  def __setstate__(self, state):
    self.__init__(state['file_format'], state['columns'])

  @property
  def schema(self) -> pa.Schema:
    if self._schema is None:
      self._schema = arrow_schema(self.columns)
    return self._schema

  def encode(self, rows: Sequence[dict]) -> bytes:
    if self.file_format == 'jsonl':
      dumps = orjson.dumps
      opt = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
      return b''.join([dumps(r, option=opt) for r in rows])
    if self.file_format == 'parquet':
      return self.encode_many([rows])
    return tfrecord.frame_all(self._examples(rows))

  def encode_many(self, row_lists: Sequence[Sequence[dict]]) -> bytes:
    """Several row lists as one blob (Parquet: one Arrow IPC stream of one
    record batch per list)."""
    if self.file_format != 'parquet':
      return b''.join([self.encode(rows) for rows in row_lists])
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, self.schema) as w:
      for rows in row_lists:
        w.write_batch(self._record_batch(rows))
    return sink.getvalue().to_pybytes()

  def _record_batch(self, rows) -> pa.RecordBatch:
    to_record_batch = getattr(rows, 'to_record_batch', None)
    if to_record_batch is not None:
      # Columnar rows (transforms.prediction_rows.PredictionRows): no dicts.
      return to_record_batch(self.schema)
    return pa.RecordBatch.from_pylist(list(rows), schema=self.schema)

  def writer(self, fh) -> _FileWriter:
    if self.file_format == 'parquet':
      return _ParquetFileWriter(fh, self.schema)
    return _FileWriter(fh)

  def _examples(self, rows) -> list[bytes]:
    """Rows as serialized tf.Examples (class docstring), encoded in C++."""
    batch = self._record_batch(rows)
    cols = {}
    for (name, typ), values in zip(self.columns, batch.columns):
      cols[name] = example_coder.list_column(values, _EXAMPLE_KINDS[typ])
      if name in TIME_COLUMNS:
        seconds = values.to_numpy(zero_copy_only=False).astype(float)
        # The global window's bounds are beyond int64 microseconds: no
        # exact twin for those.
        with np.errstate(invalid='ignore'):
          exact = np.isfinite(seconds) & (np.abs(seconds) < _MAX_US_SECONDS)
        cols[f'{name}_us'] = example_coder.column(
            np.round(np.where(exact, seconds, 0.0) * 1e6), example_coder.INT,
            present=exact)
    if self._encoder is None:
      self._encoder = example_coder.Encoder()
    return self._encoder.encode(example_coder.record_batch(cols))


_EXAMPLE_KINDS = {'STRING': example_coder.BYTES, 'FLOAT': example_coder.FLOAT,
                  'INTEGER': example_coder.INT, 'BOOLEAN': example_coder.INT}


def read_row_file(path: str, file_format: str,
                  columns: Optional[Sequence[tuple[str, str]]] = None
                  ) -> list[dict]:
  """Reads back one file written by this module (local or gs://).

  TFRecord needs ``columns`` (to tell BOOLEAN from INTEGER); its FLOAT
  values are float32 values widened to Python floats.
  """
  with FileSystems.open(path,
                        compression_type=CompressionTypes.UNCOMPRESSED) as f:
    data = f.read()
  if file_format == 'jsonl':
    return [orjson.loads(line) for line in data.splitlines() if line]
  if file_format == 'parquet':
    return pq.read_table(pa.BufferReader(data)).to_pylist()
  if file_format == 'tfrecord':
    if columns is None:
      raise ValueError('reading tfrecord needs the columns')
    rows = []
    for doc in example_coder.decode_dicts(tfrecord.records(data, path)):
      if isinstance(doc, Exception):
        raise doc
      row = {name: doc.get(name) for name, _ in columns}
      for name, typ in columns:
        if typ == 'BOOLEAN' and row[name] is not None:
          row[name] = bool(row[name])
      rows.append(row)
    return rows
  raise ValueError(f'file format {file_format!r}: use one of {FILE_FORMATS}')


# --- The windowed write -------------------------------------------------------


class WrittenFile(NamedTuple):
  """One final file: where, which window/pane/shard, how many rows."""
  path: str
  window: str
  pane_index: int
  timing: str        # EARLY, ON_TIME, LATE or UNKNOWN (batch)
  shard: int
  num_shards: int
  rows: int


class _EncodeShards(beam.DoFn):
  """Row lists -> (shard, (row count, encoded blob)) per window.

  Rows are buffered per window within a bundle and encoded in blobs of up
  to ``_ENCODE_BLOB_ROWS`` rows (at the bundle's end, or earlier when a
  window or the whole buffer is full): the GroupByKey behind then moves a
  few large blobs instead of one or two per input batch (per-element work
  and per-blob framing dominate otherwise). A window's rows go to the
  shards in about equal runs of whole lists (a list is sliced only when
  there are fewer lists than shards), round-robin from a random start per
  DoFn instance, so shards fill evenly across bundles and workers.
  """

  def __init__(self, num_shards: int, codec: _RowCodec):
    self._num_shards = num_shards
    self._codec = codec

  def setup(self):
    self._next = random.randrange(self._num_shards)

  def start_bundle(self):
    # window -> [min timestamp, rows, [row lists]]
    self._buffer: dict = {}
    self._buffered = 0

  def process(self, rows, window=beam.DoFn.WindowParam,
              timestamp=beam.DoFn.TimestampParam):
    if not isinstance(rows, collections.abc.Sequence):
      rows = list(rows)
    n = len(rows)
    if not n:
      return
    entry = self._buffer.get(window)
    if entry is None:
      entry = self._buffer[window] = [timestamp, 0, []]
    entry[0] = min(entry[0], timestamp)
    entry[1] += n
    entry[2].append(rows)
    self._buffered += n
    if entry[1] >= _ENCODE_BLOB_ROWS * self._num_shards:
      yield from self._flush(window)
    elif self._buffered >= _ENCODE_BUFFER_ROWS:
      for w in list(self._buffer):
        yield from self._flush(w)

  def finish_bundle(self):
    for w in list(self._buffer):
      yield from self._flush(w)

  def _flush(self, window):
    timestamp, total, lists = self._buffer.pop(window)
    self._buffered -= total
    if len(lists) < self._num_shards:
      # Too few lists to spread: contiguous slices of them.
      parts = min(self._num_shards, total)
      size = -(-total // parts)
      lists = [rows[i:i + size] for rows in lists
               for i in range(0, len(rows), size)]
    per_shard = -(-total // self._num_shards)
    group, count = [], 0
    for rows in lists:
      group.append(rows)
      count += len(rows)
      if count >= per_shard:
        yield self._output(group, count, timestamp, window)
        group, count = [], 0
    if group:
      yield self._output(group, count, timestamp, window)

  def _output(self, group, count, timestamp, window):
    shard = self._next
    self._next = (self._next + 1) % self._num_shards
    # The earliest input timestamp: never behind the output watermark of
    # a bundle that still holds these rows.
    return WindowedValue((shard, (count, self._codec.encode_many(group))),
                         timestamp, [window])


def _is_transient_io_error(error: BaseException) -> bool:
  """Filesystem and storage-API errors, which can heal (a full disk, a
  permission fixed, a 503); not encoding errors, which would repeat."""
  if isinstance(error, OSError):
    return True
  try:
    from google.api_core import exceptions as gexc  # pylint: disable=import-outside-toplevel
  except ImportError:
    return False
  return isinstance(error, (gexc.GoogleAPIError, gexc.RetryError))


def _is_local(path: str) -> bool:
  return '://' not in path


class _WriteShardFile(beam.DoFn):
  """(shard, [(count, blob)]) of one window and pane -> one final file.

  Retry policy: a failed write (filesystem or storage API error) deletes
  its temporary file and is attempted again in place, with capped backoff,
  while ``outage_policy`` allows (transforms/outage.py); then it raises
  naming the output. The runner's own retry of the bundle rewrites the same
  final name. Nothing is dead-lettered here: rows that reach this sink were
  already validated, and a file sink has no per-row rejection.

  Temporary files go to a directory of this DoFn instance under the
  transform's temporary directory; teardown removes the (empty) directories
  it made, so a clean stop leaves none behind.
  """

  def __init__(self, output_path, temp_directory, prefix, num_shards,
               codec: _RowCodec, run_tag, outage_policy: OutagePolicy,
               owned_directories: tuple = ()):
    self._output_path = output_path
    self._temp_directory = temp_directory
    # Directories this write created (the default temporary directory and
    # its parent), removed at teardown when empty, innermost first.
    self._owned_directories = tuple(owned_directories)
    self._prefix = prefix
    self._num_shards = num_shards
    self._codec = codec
    self._suffix = SUFFIXES[codec.file_format]
    self._mime_type = _MIME_TYPES[codec.file_format]
    self._run_tag = run_tag
    self._outage_policy = outage_policy
    self._instance_directory = None
    self._files = Metrics.counter(_NAMESPACE, 'files_written')
    self._rows = Metrics.counter(_NAMESPACE, 'rows_written')
    self._failures = Metrics.counter(_NAMESPACE, 'file_write_failures')

  def setup(self):
    try:
      FileSystems.mkdirs(self._output_path)
    except IOError:
      pass  # exists already (local) or not needed (GCS)
    self._instance_directory = FileSystems.join(self._temp_directory,
                                                uuid.uuid4().hex[:16])

  def teardown(self):
    # Only local directories exist apart from their files; rmdir removes
    # nothing but an empty directory, so files of other instances are safe.
    if self._instance_directory is None or not _is_local(
        self._temp_directory):
      return
    for d in (self._instance_directory,) + self._owned_directories:
      try:
        os.rmdir(d)
      except OSError:
        return  # not empty (another instance is writing) or gone

  def process(self, element, window=beam.DoFn.WindowParam,
              pane=beam.DoFn.PaneInfoParam):
    shard, blobs = element
    pane_index = pane.index if pane is not None else 0
    timing = (PaneInfoTiming.to_string(pane.timing) if pane is not None else
              'UNKNOWN')
    name = file_name(self._prefix, window, pane_index, shard,
                     self._num_shards, self._suffix, self._run_tag)
    final = FileSystems.join(self._output_path, name)
    blobs = blobs if isinstance(blobs, list) else list(blobs)
    count = call_through_outage(
        lambda: self._write(final, name, blobs),
        f'file output {self._output_path}', self._outage_policy,
        retriable=_is_transient_io_error,
        on_failure=lambda unused_e: self._failures.inc())
    self._files.inc()
    self._rows.inc(count)
    _LOGGER.debug('wrote %s (%d rows)', final, count)
    yield WrittenFile(final, window_label(window), pane_index, timing, shard,
                      self._num_shards, count)

  def _write(self, final: str, name: str, blobs: list) -> int:
    """One attempt: the temporary file, then the rename; the row count."""
    temp = FileSystems.join(self._instance_directory,
                            f'{name}.{uuid.uuid4().hex}.tmp')
    count = 0
    try:
      fh = FileSystems.create(temp, mime_type=self._mime_type,
                              compression_type=CompressionTypes.UNCOMPRESSED)
      try:
        writer = self._codec.writer(fh)
        for n, blob in blobs:
          writer.write(blob)
          count += n
        writer.close()
      finally:
        fh.close()
      FileSystems.rename([temp], [final])
    except Exception as e:
      try:
        FileSystems.delete([temp])
      except Exception:  # pylint: disable=broad-except
        pass  # never created, or already renamed
      if _is_transient_io_error(e):
        raise IOError(f'cannot write {final}: {e}') from e
      raise RuntimeError(f'cannot write {final}: {e!r}') from e
    return count


def _is_streaming(pcoll, streaming: Optional[bool]) -> bool:
  if streaming is not None:
    return streaming
  return bool(pcoll.pipeline.options.view_as(StandardOptions).streaming or
              not pcoll.is_bounded)


def _never_fires_before_end(windowing) -> bool:
  """True when the trigger waits for the watermark to pass the window end."""
  t = windowing.triggerfn
  if isinstance(t, trigger_lib.DefaultTrigger):
    return True
  return isinstance(t, trigger_lib.AfterWatermark) and t.early is None


class _WriteRowFiles(beam.PTransform):
  """Lists of row dicts (in any windows) -> WrittenFile per window/pane/shard."""

  def __init__(self, output_path, file_format, columns, *, num_shards,
               streaming, prefix, temp_directory, run_tag, outage_policy):
    super().__init__()
    if not output_path:
      raise ValueError('output path is empty')
    if file_format not in FILE_FORMATS:
      raise ValueError(f'file format {file_format!r}: use one of '
                       f'{FILE_FORMATS}')
    if not (isinstance(num_shards, int) and num_shards >= 1):
      raise ValueError(f'num_shards must be an int >= 1, got {num_shards!r}')
    self._output_path = output_path
    self._format = file_format
    self._columns = tuple(check_columns(columns))
    self._num_shards = num_shards
    self._streaming = streaming
    self._prefix = prefix
    self._temp_directory = temp_directory
    self._run_tag = run_tag
    self._outage_policy = outage_policy or OutagePolicy()

  def expand(self, pcoll):
    streaming = _is_streaming(pcoll, self._streaming)
    windowing = pcoll.windowing
    global_window = isinstance(windowing.windowfn, window_lib.GlobalWindows)
    if streaming and global_window and _never_fires_before_end(windowing):
      raise ValueError(
          'streaming file writes in the GlobalWindow need an early trigger '
          '(the watermark never passes its end): set the trigger upstream, '
          'e.g. WindowFeatures(..., trigger=early_firing_trigger(60))')
    run_tag = self._run_tag
    if run_tag is None and streaming:
      run_tag = _run_tag()
    owned = ()
    temp_directory = self._temp_directory
    if not temp_directory:
      temp_directory = default_temp_directory(self._output_path)
      owned = (temp_directory, temp_directory.rsplit('/', 1)[0])
    codec = _RowCodec(self._format, self._columns)
    return (pcoll
            | 'EncodeShards' >> beam.ParDo(
                _EncodeShards(self._num_shards, codec)).with_output_types(
                    tuple[int, tuple[int, bytes]])
            | 'GroupPerWindowPaneShard' >> beam.GroupByKey()
            | 'WriteAndRename' >> beam.ParDo(_WriteShardFile(
                self._output_path, temp_directory, self._prefix,
                self._num_shards, codec, run_tag, self._outage_policy,
                owned)).with_output_types(WrittenFile))


class WritePredictionFiles(beam.PTransform):
  """Lists of prediction rows -> files, one set per window and pane.

  Returns the PCollection of ``WrittenFile`` (one per final file, in the
  window it belongs to), so jobs and tests can see what was written.
  See the module docstring for the layout, atomicity and triggers.
  """

  def __init__(self, output_path: str, file_format: str,
               columns: Sequence[tuple[str, str]], *,
               num_shards: int = DEFAULT_NUM_SHARDS,
               streaming: Optional[bool] = None,
               prefix: str = 'predictions',
               temp_directory: Optional[str] = None,
               run_tag: Optional[str] = None,
               outage_policy: Optional[OutagePolicy] = None):
    """Configures the write.

    Args:
      output_path: directory or gs:// prefix for the final files.
      file_format: jsonl, parquet or tfrecord.
      columns: (name, type) pairs, e.g. ``output.output_columns(schema)``;
        types STRING, FLOAT, INTEGER, BOOLEAN. Parquet and TFRecord write
        these columns (missing values are null); JSONL writes each row as is.
      num_shards: files (at most) per window, pane; one writer each.
      streaming: whether the pipeline streams (default: the pipeline's
        ``--streaming`` or an unbounded input). Streaming tags file names
        with the run; in the GlobalWindow it needs an early trigger
        (ValueError otherwise).
      prefix: first part of every file name.
      temp_directory: where files are written before the rename; default a
        new ``<output_path>.tmp/<uuid>`` (must be on the same local
        filesystem as output_path for an atomic rename).
      run_tag: overrides the run tag of streaming file names ('' for
        none; default ``run<UTC time the pipeline was built>``).
      outage_policy: how long a failing write is retried in place
        (default: transforms.outage.OutagePolicy()).
    """
    super().__init__()
    self._write = _WriteRowFiles(
        output_path, file_format, columns, num_shards=num_shards,
        streaming=streaming, prefix=prefix, temp_directory=temp_directory,
        run_tag=run_tag, outage_policy=outage_policy)

  def expand(self, pcoll):
    return pcoll | 'WriteRowFiles' >> self._write


DEAD_LETTER_COLUMNS = (
    ('stage', 'STRING'), ('reason', 'STRING'), ('detail', 'STRING'),
    ('source', 'STRING'), ('position', 'INTEGER'), ('event_id', 'STRING'),
    ('payload_b64', 'STRING'), ('time', 'FLOAT'),
)


def _dead_letter_rows(dead_letter) -> list[dict]:
  return [dead_letter.to_dict()]


DEFAULT_DEAD_LETTER_FLUSH_S = 60.0
# Dead letters are never dropped as late by their own file sink: their
# timestamps are their records' (a too-late event's is far behind the
# watermark), and a late one is written at once in a late pane.
DEAD_LETTER_ALLOWED_LATENESS_S = 10 * 365 * 24 * 3600.0


class WriteDeadLetterFiles(beam.PTransform):
  """DeadLetter -> JSONL files of ``DeadLetter.to_dict()``.

  Batch: the GlobalWindow, one pane, files
  ``dead-letters-global-pane-0-00000-of-00001.jsonl``. Streaming: fixed
  event-time windows of ``flush_every_s`` on each dead letter's timestamp
  (its record's), written when the watermark passes a window's end, files
  ``dead-letters-run<start>-<window>-pane-<n>-00000-of-00001.jsonl``.

  Why event-time windows: a file is then written when the watermark passes
  its window, like the prediction files, so the local runner can tell from
  the watermark holds which records' dead letters are still buffered and
  commit offsets behind them (transforms/kafka/local_streaming.py); a
  processing-time flush in the GlobalWindow hides that. Dead letters behind
  the watermark (too-late events, records of a replayed backlog) are late
  data of an old window: the allowed lateness is long enough that none is
  ever dropped, and each is written at once in a late pane. The run tag
  (when the pipeline was built) keeps a restarted job, whose pane indices
  start again at 0, from overwriting the files of the previous run.
  """

  def __init__(self, path: str, *, num_shards: int = 1,
               streaming: Optional[bool] = None,
               flush_every_s: float = DEFAULT_DEAD_LETTER_FLUSH_S,
               prefix: str = 'dead-letters',
               temp_directory: Optional[str] = None,
               run_tag: Optional[str] = None,
               outage_policy: Optional[OutagePolicy] = None):
    super().__init__()
    if not flush_every_s > 0:
      raise ValueError(f'flush_every_s must be > 0, got {flush_every_s}')
    self._path = path
    self._num_shards = num_shards
    self._streaming = streaming
    self._flush_every_s = flush_every_s
    self._prefix = prefix
    self._temp_directory = temp_directory
    self._run_tag = run_tag
    self._outage_policy = outage_policy

  def expand(self, pcoll):
    streaming = _is_streaming(pcoll, self._streaming)
    if streaming:
      windowed = pcoll | 'IntoFlushWindows' >> beam.WindowInto(
          window_lib.FixedWindows(self._flush_every_s),
          trigger=trigger_lib.AfterWatermark(late=trigger_lib.AfterCount(1)),
          accumulation_mode=trigger_lib.AccumulationMode.DISCARDING,
          allowed_lateness=DEAD_LETTER_ALLOWED_LATENESS_S)
    else:
      windowed = pcoll | 'IntoGlobalWindow' >> beam.WindowInto(
          window_lib.GlobalWindows())
    return (windowed
            | 'ToDicts' >> beam.Map(_dead_letter_rows)
            | 'WriteJsonl' >> _WriteRowFiles(
                self._path, 'jsonl', DEAD_LETTER_COLUMNS,
                num_shards=self._num_shards, streaming=streaming,
                prefix=self._prefix, temp_directory=self._temp_directory,
                run_tag=self._run_tag, outage_policy=self._outage_policy))


__all__: Sequence[str] = [
    'FILE_FORMATS', 'WriteDeadLetterFiles', 'WritePredictionFiles',
    'WrittenFile', 'arrow_schema', 'early_firing_trigger', 'read_row_file',
]
