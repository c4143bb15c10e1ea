"""File sources: formats, splits with exact line numbers, typed rows."""

import gzip
import io
import os
import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from transforms import sources, tfrecord
from transforms.events import Document, RawRecord
from transforms.tfrecord import frame as tfrecord_frame


def example_bytes(**features) -> bytes:
  from tensorflow.core.example import example_pb2
  ex = example_pb2.Example()
  for name, value in features.items():
    f = ex.features.feature[name]
    values = value if isinstance(value, list) else [value]
    if values and isinstance(values[0], str):
      f.bytes_list.value.extend(v.encode() for v in values)
    elif values and isinstance(values[0], float):
      f.float_list.value.extend(values)
    else:
      f.int64_list.value.extend(values)
  return ex.SerializeToString()


_COLLECTED: list = []


def _collect(chunk):
  # Module-level, so it survives the runner's DoFn pickling (a bound
  # list.append would append to a copy).
  _COLLECTED.append(chunk)


def read(pattern, kind='lines', **kwargs):
  """Runs ReadFileChunks; returns the chunks (lists of records)."""
  _COLLECTED.clear()
  with beam.Pipeline(runner=FnApiRunner()) as p:
    _ = (p | sources.ReadFileChunks(pattern, kind, **kwargs)
         | beam.Map(_collect))
  out = list(_COLLECTED)
  _COLLECTED.clear()
  return out


# --- formats ------------------------------------------------------------------


@pytest.mark.parametrize('pattern, file_format, input_format, expected', [
    ('gs://b/x/*.jsonl', 'auto', 'csv', ('lines', 'json')),
    ('/d/events.ndjson.gz', 'auto', 'json', ('lines', 'json')),
    ('/d/SUSY.csv.gz', 'auto', 'json', ('lines', 'csv')),
    ('/d/rows.parquet', 'auto', 'json', ('parquet', None)),
    ('/d/part-*.tfrecord.gz', 'auto', 'json', ('tfrecord', None)),
    ('/d/*', 'auto', 'csv', ('lines', 'csv')),
    ('/d/x.log', 'lines', 'json', ('lines', 'json')),
    ('/d/x.jsonl', 'csv', 'json', ('lines', 'csv')),
])
def test_file_format_from_flags_and_extension(pattern, file_format,
                                              input_format, expected):
  assert tuple(sources.resolve_file_format(pattern, file_format,
                                           input_format)) == expected


def test_avro_payloads_have_no_line_form():
  with pytest.raises(ValueError, match='no one-record-per-line form'):
    sources.resolve_file_format('/d/x.bin', 'auto', 'avro')


# --- lines and splits ---------------------------------------------------------


def test_every_split_owns_the_lines_starting_in_it(monkeypatch):
  """Any cut of any file: the splits' lines are the file's lines, once, in
  order, and the newline count of each split says how many it has."""
  monkeypatch.setattr(sources, '_READ_BLOCK_BYTES', 5)  # every boundary case
  rng = random.Random(7)
  for _ in range(2000):
    parts = [bytes(rng.choice(b'ab\r') for _ in range(rng.randint(0, 6)))
             for _ in range(rng.randint(0, 9))]
    data = b'\n'.join(parts) + (b'\n' if rng.random() < 0.5 else b'')
    size = len(data)
    expected = data.split(b'\n')
    if expected and expected[-1] == b'':
      expected.pop()
    expected = [l[:-1] if l.endswith(b'\r') else l for l in expected]
    cuts = sorted({0, size, *(rng.randint(0, size) for _ in range(3))})
    got = []
    for start, stop in zip(cuts, cuts[1:]):
      lines = [l for block in sources._iter_line_blocks(
          io.BytesIO(data), start, stop) for l in block]
      assert sources.count_line_starts(io.BytesIO(data), start, stop,
                                       size) == len(lines)
      got += lines
    assert got == expected, (data, cuts)


def _lines_file(path, n, *, blank_every=0, crlf=False):
  eol = b'\r\n' if crlf else b'\n'
  lines = []
  with open(path, 'wb') as f:
    for i in range(n):
      if blank_every and i % blank_every == blank_every - 1:
        f.write(eol)
        lines.append(None)
      else:
        payload = (b'{"n": %d, "pad": "%s"}' % (i, b'x' * (i % 37)))
        f.write(payload + eol)
        lines.append(payload)
  return lines


def test_big_file_splits_keep_exact_line_numbers(tmp_path):
  path = str(tmp_path / 'events.jsonl')
  lines = _lines_file(path, 5000, blank_every=97, crlf=True)
  chunks = read(path, split_bytes=20_000, chunk_records=300)
  records = [r for c in chunks for r in c]
  expected = [(i + 1, p) for i, p in enumerate(lines) if p is not None]
  assert sorted((r.position, r.payload) for r in records) == expected
  assert all(r.source == f'file:{path}' and r.timestamp is None
             for r in records)
  assert all(isinstance(c, sources.RecordChunk) and 0 < len(c) <= 300
             for c in chunks)
  # Several splits were read (the file is ~250 KB).
  assert len(chunks) > 5000 // 300 + 1


def test_compressed_files_are_read_whole_with_a_header_skipped(tmp_path):
  path = str(tmp_path / 'rows.csv.gz')
  body = [b'%d,%d' % (i, i * i) for i in range(2500)]
  with gzip.open(path, 'wb') as f:
    f.write(b'a,b\n' + b'\n'.join(body) + b'\n')
  records = [r for c in read(path, split_bytes=1000, skip_header_lines=1)
             for r in c]
  assert sorted((r.position, r.payload) for r in records) == [
      (i + 2, p) for i, p in enumerate(body)]


def test_default_time_is_a_fixed_time_or_the_file_mtime(tmp_path):
  a, b = tmp_path / 'a.jsonl', tmp_path / 'b.jsonl'
  a.write_bytes(b'{}\n')
  b.write_bytes(b'{}\n{}\n')
  os.utime(a, (1_700_000_000, 1_700_000_000))
  os.utime(b, (1_700_000_500, 1_700_000_500))
  records = [r for c in read(str(tmp_path / '*.jsonl'),
                             default_time='file_mtime') for r in c]
  assert sorted((r.source[-7:], r.timestamp) for r in records) == [
      ('a.jsonl', 1_700_000_000), ('b.jsonl', 1_700_000_500),
      ('b.jsonl', 1_700_000_500)]
  records = [r for c in read(str(a), default_time=1.8e9) for r in c]
  assert [r.timestamp for r in records] == [1.8e9]


def test_no_matching_file_fails_the_read(tmp_path):
  with pytest.raises(Exception, match='Empty match for pattern .*nothing-'):
    read(str(tmp_path / 'nothing-*.jsonl'))


# --- typed rows ---------------------------------------------------------------


def test_parquet_rows_become_documents_split_by_row_group(tmp_path):
  path = str(tmp_path / 'rows.parquet')
  table = pa.table({'event_id': [f'e{i}' for i in range(2500)],
                    'x': np.arange(2500, dtype=np.float32)})
  pq.write_table(table, path, row_group_size=1000)
  chunks = read(path, 'parquet', chunk_records=400)
  docs = [d for c in chunks for d in c]
  assert all(isinstance(d, Document) for d in docs)
  assert sorted((d.position, d.doc['event_id'], d.doc['x']) for d in docs) \
      == [(i, f'e{i}', float(i)) for i in range(2500)]
  assert {d.source for d in docs} == {f'file:{path}'}
  assert max(len(c) for c in chunks) <= 400


def test_tfrecord_examples_become_documents_bad_records_dead_letters(
    tmp_path):
  path = str(tmp_path / 'rows.tfrecord')
  good = [example_bytes(event_id=f'e{i}', t=1_700_000_000_000 + i,
                        x=float(i) / 4, tags=['a', 'b'], empty=[])
          for i in range(3)]
  frames = [tfrecord_frame(r) for r in good]
  # A record whose data fails its CRC, then one that is no Example.
  bad_crc = bytearray(tfrecord_frame(good[0]))
  bad_crc[-1] ^= 0xFF
  frames.insert(1, bytes(bad_crc))
  frames.append(tfrecord_frame(b'\xff\xff\xff not a proto'))
  with open(path, 'wb') as f:
    f.write(b''.join(frames))
  docs = sorted((d for c in read(path, 'tfrecord') for d in c),
                key=lambda d: d.position)
  assert [d.position for d in docs] == [0, 1, 2, 3, 4]
  assert docs[0].doc == {'event_id': 'e0', 't': 1_700_000_000_000, 'x': 0.0,
                         'tags': ['a', 'b']}
  assert docs[2].doc['x'] == 0.25 and docs[0].payload == good[0]
  assert isinstance(docs[1].doc, ValueError) and 'CRC' in str(docs[1].doc)
  assert isinstance(docs[4].doc, ValueError)


def test_tfrecord_with_a_corrupt_length_fails_naming_file_and_offset():
  data = bytearray(tfrecord_frame(b'abc') * 2)
  data[16 + 3 + 2] ^= 0xFF  # the second record's length
  with pytest.raises(IOError, match=r'f\.tfrecord: corrupt TFRecord length '
                     r'at byte 19'):
    list(tfrecord.iter_records(io.BytesIO(bytes(data)), 'f.tfrecord'))
  with pytest.raises(IOError, match='truncated'):
    list(tfrecord.iter_records(io.BytesIO(tfrecord_frame(b'abc')[:-2]), 'f'))


def test_record_chunks_estimate_their_size_without_encoding():
  chunk = sources.RecordChunk([RawRecord('file:x', 1, b'x' * 100)] * 10,
                              1000)
  coder = sources.RecordChunkCoder()
  assert coder.estimate_size(chunk) == 1000 + 320
  back = coder.decode(coder.encode(chunk))
  assert back == chunk and back.nbytes == 1000
  assert beam.coders.registry.get_coder(sources.RecordChunk).__class__ is \
      sources.RecordChunkCoder
