"""File sources for batch jobs: files -> chunks of records to parse.

``ReadFileChunks(pattern, ...)`` reads every file matching a glob (local or
``gs://``, via Beam's FileSystems) and emits lists of ~``chunk_records``
records, all of one file: per-element work dominates Python pipelines
(docs/performance.md), so one element is a chunk, as with the Kafka read. The chunks go
straight into ``ParseEvents``:

* line files (JSON lines, CSV, anything one-record-per-line; optionally
  compressed, e.g. ``.gz``): ``RawRecord(source='file:<path>',
  position=<line number, 1-based as editors count>, payload=<line bytes
  without the end of line>, timestamp=<default time>)``. Blank lines are
  skipped (they still count for line numbers; metric ``blank_lines``); the
  first ``skip_header_lines`` lines of each file are skipped.
* Parquet: ``Document(source='file:<path>', position=<row index, 0-based>,
  doc=<the row as a dict>)``, validated by ``RecordParser.parse_documents``.
* TFRecord files of ``tf.train.Example``: ``Document(..., position=<record
  index, 0-based>, doc=<features as a dict>, payload=<the serialized
  Example>)``. A feature with one value becomes a scalar (bytes_list values
  become UTF-8 text), an empty one is absent, several values stay a list
  (a wrong_type dead letter for scalar fields); the examples of a chunk are
  decoded together by tfx-bsl's C++ decoder. float_list values are
  float32: store event times as int64 (s or ms) or as ISO strings, not as
  floats (a float32 epoch time is off by up to 64 s).

Splitting: each match is planned into splits that workers read
independently, after a Reshuffle. Uncompressed line files larger than
``split_bytes`` are cut into byte ranges (a range owns the lines that
*start* in it, as Hadoop's line reader does); line numbers stay exact
because a first, cheap pass counts the newlines of each range in parallel
(``bytes.count``, ~1 GB/s) and a per-file prefix sum gives every range its
first line number. Parquet files split by row group. Compressed files and
TFRecord files (no sync markers) are one split each: give such inputs as
several files to spread them. The splits are static (no dynamic work
rebalancing).

Event times: records carry ``timestamp`` = ``default_time`` (epoch seconds,
or ``'file_mtime'`` for each file's modification time). The parser uses it
only when the schema has no time field.

Retry policy: I/O errors raise (the runner retries the bundle; reads are
deterministic, so a retry yields the same records). A TFRecord whose length
header fails its CRC cannot be re-framed: the read raises, naming the file
and byte offset. A record whose data fails its CRC, or that is not a
``tf.train.Example``, becomes a dead letter (reason malformed).
"""

import itertools
import logging
import os
import pickle
from typing import Iterator, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from transforms import example_coder, tfrecord
from transforms.events import Document, RawRecord
from transforms.parse.decoders import line_formats

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'source'

LINES = 'lines'
PARQUET = 'parquet'
TFRECORD = 'tfrecord'
FILE_KINDS = (LINES, PARQUET, TFRECORD)
# --file_format values: a kind, or jsonl/csv (line files with that payload
# format), or auto (by the pattern's extension).
FILE_FORMATS = ('auto', 'jsonl', 'csv', LINES, PARQUET, TFRECORD)
FILE_MTIME = 'file_mtime'

DEFAULT_CHUNK_RECORDS = 1000
DEFAULT_SPLIT_BYTES = 64 << 20
_READ_BLOCK_BYTES = 4 << 20

_EXTENSIONS = {
    '.jsonl': ('jsonl'), '.ndjson': 'jsonl', '.json': 'jsonl',
    '.csv': 'csv', '.parquet': PARQUET, '.pq': PARQUET,
    '.tfrecord': TFRECORD, '.tfrecords': TFRECORD, '.tfr': TFRECORD,
}
_COMPRESSED_EXTENSIONS = ('.gz', '.gzip', '.bz2', '.deflate', '.zst',
                          '.zstd', '.lzma', '.xz', '.snappy')


class FileFormat(NamedTuple):
  """How a job reads its files.

  Attributes:
    kind: lines, parquet or tfrecord.
    payload_format: for line files, the parser's input format of each line
      (json or csv); None for typed rows.
  """
  kind: str
  payload_format: Optional[str]


def resolve_file_format(pattern: str, file_format: str,
                        input_format: str) -> FileFormat:
  """The FileFormat for ``--file_format`` and ``--input_format``.

  ``auto`` looks at the pattern's extension (before a compression suffix):
  .jsonl/.ndjson/.json -> JSON lines, .csv -> CSV lines, .parquet/.pq ->
  Parquet, .tfrecord/.tfrecords/.tfr -> TFRecord; anything else (including
  a pattern ending in ``*``) -> lines decoded per ``input_format``.

  Raises:
    ValueError: an unknown format, or lines of an input format that has
      no one-record-per-line form (its decoder is not ``line_based``:
      avro).
  """
  if file_format not in FILE_FORMATS:
    raise ValueError(f'file format {file_format!r}: use one of '
                     f'{FILE_FORMATS}')
  if file_format == 'auto':
    name = pattern.lower()
    for suffix in _COMPRESSED_EXTENSIONS:
      if name.endswith(suffix):
        name = name[:-len(suffix)]
        break
    file_format = _EXTENSIONS.get(os.path.splitext(name)[1], LINES)
  if file_format == 'jsonl':
    return FileFormat(LINES, 'json')
  if file_format == 'csv':
    return FileFormat(LINES, 'csv')
  if file_format == LINES:
    if input_format not in line_formats():
      raise ValueError(f'input format {input_format!r} has no one-record-'
                       f'per-line form: line files hold '
                       f'{" or ".join(line_formats())}')
    return FileFormat(LINES, input_format)
  return FileFormat(file_format, None)


class FileSplit(NamedTuple):
  """A part of one file that one worker reads.

  Attributes:
    path: the file.
    kind: lines, parquet or tfrecord.
    start, stop: byte range (lines; the split owns the lines starting in
      it), or row-group range (parquet), or 0 and the size (whole files).
    index, count: this split's number and the file's number of splits.
    size: the file's size in bytes.
    first_position: line number (1-based) or record index (0-based) of
      the split's first record; None until the lines were counted.
    timestamp: the records' default event time (epoch seconds) or None.
    compressed: the file is compressed (read whole, decompressing).
  """
  path: str
  kind: str
  start: int
  stop: int
  index: int
  count: int
  size: int
  first_position: Optional[int]
  timestamp: Optional[float]
  compressed: bool


def _is_compressed(path: str) -> bool:
  return (CompressionTypes.detect_compression_type(path) !=
          CompressionTypes.UNCOMPRESSED)


class _PlanSplits(beam.DoFn):
  """FileMetadata -> (path, FileSplit) for every split of the file."""

  def __init__(self, kind: str, split_bytes: int,
               default_time: Union[None, float, str]):
    self._kind = kind
    self._split_bytes = split_bytes
    self._default_time = default_time
    self.files = Metrics.counter(_NAMESPACE, 'files')
    self.bytes = Metrics.counter(_NAMESPACE, 'file_bytes')

  def process(self, meta):
    path, size = meta.path, meta.size_in_bytes
    self.files.inc()
    self.bytes.inc(size)
    if self._default_time == FILE_MTIME:
      ts = meta.last_updated_in_seconds
    else:
      ts = self._default_time
    compressed = _is_compressed(path)
    split = lambda start, stop, i, n, first: (path, FileSplit(
        path, self._kind, start, stop, i, n, size, first, ts, compressed))
    if self._kind == PARQUET:
      # One split per row group; positions from the footer's row counts.
      import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
      with FileSystems.open(path, compression_type=CompressionTypes.
                            UNCOMPRESSED) as f:
        metadata = pq.ParquetFile(f).metadata
      groups = metadata.num_row_groups
      first = 0
      for g in range(groups):
        yield split(g, g + 1, g, groups, first)
        first += metadata.row_group(g).num_rows
      if not groups:
        _LOGGER.warning('%s: Parquet file without row groups', path)
      return
    if (self._kind == TFRECORD or compressed or
        size <= self._split_bytes or size == 0):
      first = 1 if self._kind == LINES else 0
      yield split(0, size, 0, 1, first)
      return
    count = -(-size // self._split_bytes)
    bounds = [size * i // count for i in range(count + 1)]
    for i in range(count):
      yield split(bounds[i], bounds[i + 1], i, count, 1 if i == 0 else None)


def count_line_starts(f, start: int, stop: int, size: int) -> int:
  """How many lines start at a byte offset in [start, stop) of a file.

  Line starts are offset 0 and every offset after a newline, before the
  end of the file (a final newline starts no line).
  """
  stop = min(stop, size)
  if stop <= start:
    return 0
  count = 1 if start == 0 else 0
  # Newlines at offsets [start - 1, stop - 1) start a line in the range;
  # one at size - 1 starts none.
  lo = max(start - 1, 0)
  hi = min(stop - 1, size - 1)
  f.seek(lo)
  remaining = hi - lo
  while remaining > 0:
    block = f.read(min(_READ_BLOCK_BYTES, remaining))
    if not block:
      break
    count += block.count(b'\n')
    remaining -= len(block)
  return count


class _CountLines(beam.DoFn):
  """(path, FileSplit) -> (path, (FileSplit, lines starting in it)).

  Only the splits before the last one of a cut line file need counting.
  """

  def __init__(self):
    self.counted = Metrics.counter(_NAMESPACE, 'bytes_counted')

  def process(self, element):
    path, split = element
    if split.first_position is not None and split.count == 1:
      yield path, (split, 0)
      return
    if split.kind != LINES or split.index == split.count - 1:
      yield path, (split, 0)
      return
    with FileSystems.open(path, compression_type=CompressionTypes.
                          UNCOMPRESSED) as f:
      n = count_line_starts(f, split.start, split.stop, split.size)
    self.counted.inc(split.stop - split.start)
    yield path, (split, n)


class _NumberSplits(beam.DoFn):
  """(path, [(FileSplit, lines)]) -> FileSplits with their first line."""

  def process(self, element):
    unused_path, counted = element
    counted = sorted(counted, key=lambda c: c[0].index)
    line = 1
    for split, lines in counted:
      if split.first_position is None:
        split = split._replace(first_position=line)
      line = split.first_position + lines
      yield split


def _iter_line_blocks(f, start: int, stop: Optional[int]
                     ) -> Iterator[list[bytes]]:
  """Lists of the lines (without end of line, ``\r\n`` or ``\n``) that
  start at a byte offset in [start, stop) of the binary file ``f``, which
  is at offset 0; the last line may end past ``stop``. ``stop`` None: to
  the end. One list per block read (a few MB), in file order.
  """
  pending = b''
  if start > 0:
    # The line at ``start`` is ours only if a newline precedes it.
    f.seek(start - 1)
    pos = start - 1
    while True:
      block = f.read(_READ_BLOCK_BYTES)
      if not block:
        return
      nl = block.find(b'\n')
      if nl >= 0:
        pos += nl + 1
        pending = block[nl + 1:]
        break
      pos += len(block)
  else:
    pos = 0
  # ``pos`` is the offset of the first byte of ``pending``, a line start.
  while True:
    block = f.read(_READ_BLOCK_BYTES)
    data = pending + block if pending else block
    lines = data.split(b'\n')
    if block:
      pending = lines.pop()
      end = pos + len(data) - len(pending)  # after the last full line
    else:
      pending = b''
      if not lines[-1]:
        lines.pop()  # data ended with a newline (or was empty)
      end = pos + len(data) + 1
    done = not block
    if stop is not None and end > stop:
      # The block crosses ``stop``: keep the lines starting before it.
      keep = 0
      line_start = pos
      for line in lines:
        if line_start >= stop:
          break
        line_start += len(line) + 1
        keep += 1
      del lines[keep:]
      done = True
    if b'\r' in data:
      lines = [line[:-1] if line.endswith(b'\r') else line for line in lines]
    if lines:
      yield lines
    if done:
      return
    pos = end


class RecordChunk(list):
  """The records of one element of the file source (a list), with the
  size of their payloads: Beam estimates element sizes by encoding samples
  of them, which for a list of 1000 records meant 1000 pickles per sample;
  RecordChunkCoder answers from ``nbytes``."""

  __slots__ = ('nbytes',)

  def __init__(self, items=(), nbytes: int = 0):
    super().__init__(items)
    self.nbytes = nbytes

  def __reduce__(self):
    return RecordChunk, (list(self), self.nbytes)


class RecordChunkCoder(coders.Coder):
  """Pickles a RecordChunk; estimates its size without encoding it."""

  def encode(self, value: RecordChunk) -> bytes:
    return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

  def decode(self, encoded: bytes) -> RecordChunk:
    return pickle.loads(encoded)

  def estimate_size(self, value: RecordChunk) -> int:
    return int(getattr(value, 'nbytes', 0)) + 32 * len(value)

  def is_deterministic(self) -> bool:
    return False

  def to_type_hint(self):
    return RecordChunk


coders.registry.register_coder(RecordChunk, RecordChunkCoder)


class _ReadSplit(beam.DoFn):
  """FileSplit -> lists of RawRecord (lines) or Document (typed rows)."""

  def __init__(self, *, chunk_records: int, skip_header_lines: int):
    self._chunk = chunk_records
    self._skip_header = skip_header_lines
    self.records = Metrics.counter(_NAMESPACE, 'records_read')
    self.blank = Metrics.counter(_NAMESPACE, 'blank_lines')
    self.splits = Metrics.counter(_NAMESPACE, 'splits_read')
    self.bad_records = Metrics.counter(_NAMESPACE, 'undecodable_records')

  def process(self, split: FileSplit):
    self.splits.inc()
    if split.kind == LINES:
      chunks = self._lines(split)
    elif split.kind == PARQUET:
      chunks = self._parquet(split)
    else:
      chunks = self._tfrecord(split)
    for chunk in chunks:
      self.records.inc(len(chunk))
      yield chunk

  def _lines(self, split: FileSplit) -> Iterator[list]:
    source = f'file:{split.path}'
    ts = split.timestamp
    size = self._chunk
    number = split.first_position
    header = self._skip_header if split.index == 0 else 0
    blank = 0
    if split.compressed:
      f = FileSystems.open(split.path,
                           compression_type=CompressionTypes.AUTO)
      bounds = (0, None)
    else:
      f = FileSystems.open(split.path,
                           compression_type=CompressionTypes.UNCOMPRESSED)
      bounds = (split.start, split.stop)
    make = RawRecord
    buffered: list = []
    with f:
      for lines in _iter_line_blocks(f, *bounds):
        if header:
          skipped = min(header, len(lines))
          header -= skipped
          number += skipped
          lines = lines[skipped:]
        records = [make(source, n, line, ts)
                   for n, line in enumerate(lines, number) if line]
        blank += len(lines) - len(records)
        number += len(lines)
        buffered += records
        while len(buffered) >= size:
          yield self._chunk_of(buffered[:size])
          del buffered[:size]
    if buffered:
      yield self._chunk_of(buffered)
    if blank:
      self.blank.inc(blank)

  @staticmethod
  def _chunk_of(records: list) -> RecordChunk:
    return RecordChunk(records, sum([len(r.payload) for r in records]))

  def _parquet(self, split: FileSplit) -> Iterator[list]:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
    source = f'file:{split.path}'
    ts = split.timestamp
    position = split.first_position
    with FileSystems.open(split.path, compression_type=CompressionTypes.
                          UNCOMPRESSED) as f:
      pf = pq.ParquetFile(f)
      for batch in pf.iter_batches(batch_size=self._chunk,
                                   row_groups=list(range(split.start,
                                                         split.stop))):
        rows = batch.to_pylist()
        yield RecordChunk([Document(source, position + i, row, ts)
                           for i, row in enumerate(rows)], batch.nbytes)
        position += len(rows)

  def _tfrecord(self, split: FileSplit) -> Iterator[list]:
    source = f'file:{split.path}'
    with FileSystems.open(split.path,
                          compression_type=CompressionTypes.AUTO) as f:
      framed = tfrecord.iter_records(f, split.path)
      index = 0
      while True:
        chunk = list(itertools.islice(framed, self._chunk))
        if not chunk:
          return
        yield self._documents(source, split.timestamp, index, chunk)
        index += len(chunk)

  def _documents(self, source: str, ts, first: int, chunk: list
                ) -> RecordChunk:
    """Framed records -> Documents; the examples of a chunk are decoded
    together (tfx-bsl, C++)."""
    decoded = iter(example_coder.decode_dicts(
        [record for record, error in chunk if error is None]))
    documents = []
    for index, (record, error) in enumerate(chunk, first):
      doc = error if error is not None else next(decoded)
      if isinstance(doc, Exception):
        self.bad_records.inc()
      documents.append(Document(source, index, doc, ts, None, record))
    return RecordChunk(documents, sum([len(r) for r, _ in chunk]))


class ReadFileChunks(beam.PTransform):
  """A file glob -> PCollection of lists of RawRecord or Document.

  Example::

    chunks = p | ReadFileChunks('gs://bucket/events/*.jsonl.gz', 'lines')
    parsed = chunks | ParseEvents(schema, 'json')

  See the module docstring for the records, splitting and event times.
  """

  def __init__(self, pattern: str, kind: str = LINES, *,
               chunk_records: int = DEFAULT_CHUNK_RECORDS,
               split_bytes: int = DEFAULT_SPLIT_BYTES,
               skip_header_lines: int = 0,
               default_time: Union[None, float, str] = None):
    """Configures the read.

    Args:
      pattern: a file or glob, local or gs:// (matched when the pipeline
        runs; no match is an error).
      kind: lines, parquet or tfrecord (see ``resolve_file_format``).
      chunk_records: records per output element.
      split_bytes: uncompressed line files larger than this are read as
        several splits of about this size.
      skip_header_lines: lines to skip at the start of each line file.
      default_time: the records' timestamp: epoch seconds, ``'file_mtime'``
        or None.
    """
    super().__init__()
    if not pattern:
      raise ValueError('file pattern is empty')
    if kind not in FILE_KINDS:
      raise ValueError(f'file kind {kind!r}: use one of {FILE_KINDS}')
    if chunk_records < 1:
      raise ValueError(f'chunk_records must be >= 1, got {chunk_records}')
    if split_bytes < 1:
      raise ValueError(f'split_bytes must be >= 1, got {split_bytes}')
    if skip_header_lines < 0:
      raise ValueError(f'skip_header_lines must be >= 0, got '
                       f'{skip_header_lines}')
    if isinstance(default_time, str) and default_time != FILE_MTIME:
      raise ValueError(f'default_time {default_time!r}: epoch seconds, '
                       f'{FILE_MTIME!r} or None')
    self._pattern = pattern
    self._kind = kind
    self._chunk_records = chunk_records
    self._split_bytes = split_bytes
    self._skip_header_lines = skip_header_lines
    self._default_time = default_time

  def expand(self, pbegin):
    splits = (
        pbegin
        | 'MatchFiles' >> fileio.MatchFiles(self._pattern,
                                            empty_match_treatment='DISALLOW')
        | 'PlanSplits' >> beam.ParDo(_PlanSplits(
            self._kind, self._split_bytes, self._default_time))
        # Spread the counting of big files' ranges over workers.
        | 'SpreadCounting' >> beam.Reshuffle()
        | 'CountLines' >> beam.ParDo(_CountLines())
        | 'GroupSplitsByFile' >> beam.GroupByKey()
        | 'NumberSplits' >> beam.ParDo(_NumberSplits()))
    return (splits
            | 'SpreadSplits' >> beam.Reshuffle()
            | 'ReadSplits' >> beam.ParDo(_ReadSplit(
                chunk_records=self._chunk_records,
                skip_header_lines=self._skip_header_lines)).with_output_types(
                    RecordChunk))


__all__: Sequence[str] = [
    'FILE_FORMATS', 'FILE_KINDS', 'FILE_MTIME', 'FileFormat', 'FileSplit',
    'ReadFileChunks', 'RecordChunk', 'count_line_starts',
    'resolve_file_format',
]
