"""WritePredictionFiles / WriteDeadLetterFiles on local files (no emulator)."""

import dataclasses
import os
import re

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger as trigger_lib
from apache_beam.transforms import window as window_lib
from apache_beam.transforms.window import IntervalWindow, TimestampedValue

from transforms import prediction_rows as output, schema
from transforms.dead_letters import DeadLetter
from transforms.outage import OutageError, OutagePolicy
from transforms.sinks import files as files_lib
from transforms.sinks.files import (WriteDeadLetterFiles, WritePredictionFiles,
                                    early_firing_trigger, read_row_file)

COLUMNS = output.output_columns(schema.resolve('susy'))
T0 = 1795507200.0  # 2026-11-24T08:00:00Z
FINAL_NAME = re.compile(
    r'^(?P<prefix>[a-z-]+)-(?:(?P<run>run\d{8}T\d{6}Z)-)?'
    r'(?P<window>global|\d{8}T\d{6}Z-\d{8}T\d{6}Z)-pane-(?P<pane>\d+)-'
    r'(?P<shard>\d{5})-of-(?P<n>\d{5})\.(?P<ext>jsonl|parquet|tfrecord)$')


def make_rows(prefix, n, window=None, seed=0):
  """n prediction rows with every column of COLUMNS set (some None)."""
  rng = np.random.default_rng(seed)
  start, end = window if window else (None, None)
  rows = []
  for i in range(n):
    row = {}
    for name, typ in COLUMNS:
      if typ == 'FLOAT':
        row[name] = float(rng.normal())
      elif typ == 'INTEGER':
        row[name] = int(rng.integers(0, 1 << 40))
      elif typ == 'BOOLEAN':
        row[name] = bool(i % 2)
      else:
        row[name] = f'{name}-{prefix}-{i}'
    row['event_id'] = f'{prefix}-{i}'
    row['window_start'], row['window_end'] = start, end
    row['event_time'] = (start if start is not None else T0) + i * 0.001
    row['label'] = None if i % 3 == 0 else 1.0
    rows.append(row)
  return rows


def listing(path):
  return sorted(os.listdir(path)) if os.path.isdir(path) else []


def read_dir(path, file_format):
  rows = []
  for name in listing(path):
    rows.extend(read_row_file(os.path.join(path, name), file_format, COLUMNS))
  return rows


def assert_same_rows(got, want, file_format):
  """Every event id once, every value equal (TFRecord floats: float32)."""
  ids = [r['event_id'] for r in got]
  assert sorted(ids) == sorted(r['event_id'] for r in want)
  assert len(set(ids)) == len(ids)
  by_id = {r['event_id']: r for r in got}
  for w in want:
    g = by_id[w['event_id']]
    for name, typ in COLUMNS:
      if file_format == 'tfrecord' and typ == 'FLOAT' and w[name] is not None:
        assert g[name] == float(np.float32(w[name])), name
      else:
        assert g[name] == w[name], (name, g[name], w[name])


def windowed_input(p, batches):
  """batches: (timestamp, rows) -> one element per batch, in FixedWindows(60)."""
  return (p
          | 'Create' >> beam.Create(batches)
          | 'Stamp' >> beam.Map(lambda tb: TimestampedValue(tb[1], tb[0]))
          | 'Fixed60' >> beam.WindowInto(window_lib.FixedWindows(60)))


# --- names, schemas, formats --------------------------------------------------

def test_file_names_carry_window_pane_and_shard():
  w = IntervalWindow(T0, T0 + 60)
  assert files_lib.window_label(w) == '20261124T080000Z-20261124T080100Z'
  assert files_lib.window_label(window_lib.GlobalWindow()) == 'global'
  assert files_lib.window_label(IntervalWindow(T0 + 0.5, T0 + 1)) == (
      '20261124T080000.500000Z-20261124T080001Z')
  assert files_lib.file_name('predictions', w, 3, 1, 2, '.jsonl') == (
      'predictions-20261124T080000Z-20261124T080100Z-pane-3-00001-of-00002'
      '.jsonl')
  assert files_lib.file_name('dead-letters', window_lib.GlobalWindow(), 0, 0,
                             1, '.jsonl', 'run20261124T080000Z') == (
                                 'dead-letters-run20261124T080000Z-global-'
                                 'pane-0-00000-of-00001.jsonl')


def test_arrow_schema_from_columns():
  s = files_lib.arrow_schema(
      [('a', 'STRING'), ('b', 'FLOAT'), ('c', 'INTEGER'), ('d', 'BOOLEAN')])
  assert s == pa.schema([('a', pa.string()), ('b', pa.float64()),
                         ('c', pa.int64()), ('d', pa.bool_())])
  assert all(f.nullable for f in s)
  with pytest.raises(ValueError, match='NUMERIC'):
    files_lib.arrow_schema([('a', 'NUMERIC')])
  with pytest.raises(ValueError, match='duplicate'):
    files_lib.arrow_schema([('a', 'STRING'), ('a', 'FLOAT')])


def test_early_firing_trigger():
  t = early_firing_trigger(30)
  assert repr(t) == repr(trigger_lib.AfterWatermark(
      early=trigger_lib.AfterProcessingTime(30), late=trigger_lib.AfterCount(1)))
  with pytest.raises(ValueError):
    early_firing_trigger(0)


def test_tfrecord_is_readable_by_tensorflow(tmp_path):
  import tensorflow as tf
  rows = make_rows('tf', 5, (T0, T0 + 60))
  path = str(tmp_path / 'x.tfrecord')
  codec = files_lib._RowCodec('tfrecord', COLUMNS)
  with open(path, 'wb') as fh:
    fh.write(codec.encode(rows[:2]) + codec.encode(rows[2:]))
  spec = {'event_id': tf.io.FixedLenFeature([], tf.string),
          'score': tf.io.FixedLenFeature([], tf.float32),
          'model_version': tf.io.FixedLenFeature([], tf.int64),
          'late': tf.io.FixedLenFeature([], tf.int64),
          'label': tf.io.VarLenFeature(tf.float32)}
  got = [tf.io.parse_single_example(r, spec)
         for r in tf.data.TFRecordDataset(path)]
  assert [g['event_id'].numpy().decode() for g in got] == [
      r['event_id'] for r in rows]
  assert [float(g['score'].numpy()) for g in got] == [
      float(np.float32(r['score'])) for r in rows]
  assert [int(g['model_version'].numpy()) for g in got] == [
      r['model_version'] for r in rows]
  # None -> an empty list: absent for VarLen parsing.
  assert [g['label'].values.numpy().tolist() for g in got] == [
      [] if r['label'] is None else [1.0] for r in rows]
  # Times are float32 (128 s apart today) plus exact int64 microseconds.
  exact = {'event_time_us': tf.io.FixedLenFeature([], tf.int64),
           'window_start_us': tf.io.FixedLenFeature([], tf.int64)}
  got = [tf.io.parse_single_example(r, exact)
         for r in tf.data.TFRecordDataset(path)]
  assert [int(g['event_time_us'].numpy()) for g in got] == [
      round(r['event_time'] * 1e6) for r in rows]
  assert {int(g['window_start_us'].numpy()) for g in got} == {int(T0 * 1e6)}


# --- batch --------------------------------------------------------------------

W1 = (T0, T0 + 60)
W2 = (T0 + 60, T0 + 120)


@pytest.mark.parametrize('file_format', ['jsonl', 'parquet', 'tfrecord'])
def test_batch_two_windows_files_per_window_and_shard(tmp_path, file_format):
  out = str(tmp_path / 'out')
  batches = [(T0 + 1, make_rows('a', 30, W1, 1)),
             (T0 + 2, make_rows('b', 7, W1, 2)),
             (T0 + 61, make_rows('c', 20, W2, 3))]
  want = [r for _, rows in batches for r in rows]
  with beam.Pipeline(runner=FnApiRunner()) as p:
    written = windowed_input(p, batches) | WritePredictionFiles(
        out, file_format, COLUMNS, num_shards=2)
    assert_that(
        written | beam.Map(lambda f: (f.window, f.pane_index, f.shard,
                                      f.num_shards)),
        equal_to([('20261124T080000Z-20261124T080100Z', 0, 0, 2),
                  ('20261124T080000Z-20261124T080100Z', 0, 1, 2),
                  ('20261124T080100Z-20261124T080200Z', 0, 0, 2),
                  ('20261124T080100Z-20261124T080200Z', 0, 1, 2)]))
    assert_that(written | beam.WindowInto(window_lib.GlobalWindows())
                | beam.Map(lambda f: f.rows) | beam.CombineGlobally(sum),
                equal_to([len(want)]), label='AllRowsCounted')
  ext = {'jsonl': 'jsonl', 'parquet': 'parquet', 'tfrecord': 'tfrecord'}[
      file_format]
  assert listing(out) == [
      f'predictions-20261124T080000Z-20261124T080100Z-pane-0-0000{s}-of-00002'
      f'.{ext}' for s in (0, 1)] + [
      f'predictions-20261124T080100Z-20261124T080200Z-pane-0-0000{s}-of-00002'
      f'.{ext}' for s in (0, 1)]
  got = read_dir(out, file_format)
  assert_same_rows(got, want, file_format)
  # Rows of a window are in that window's files only.
  for name in listing(out):
    start = name.split('-')[1]
    for r in read_row_file(os.path.join(out, name), file_format, COLUMNS):
      expected = ('20261124T080000Z' if r['event_id'][0] in 'ab' else
                  '20261124T080100Z')
      assert start == expected
  # Nothing but final files: no temporary file or directory is left.
  assert not os.path.exists(out + '.tmp')


@pytest.mark.parametrize('file_format', ['jsonl', 'parquet'])
def test_many_small_lists_are_encoded_in_bounded_blobs(tmp_path, monkeypatch,
                                                       file_format):
  # Blobs of at most 8 rows per shard, every window flushed at 20 buffered
  # rows: rows still land once each, in their window's files only.
  monkeypatch.setattr(files_lib, '_ENCODE_BLOB_ROWS', 8)
  monkeypatch.setattr(files_lib, '_ENCODE_BUFFER_ROWS', 20)
  out = str(tmp_path / 'out')
  batches = [(T0 + 1 + i, make_rows(f'a{i}', 3 + i % 4, W1, i))
             for i in range(12)]
  batches += [(T0 + 61 + i, make_rows(f'b{i}', 5, W2, 50 + i))
              for i in range(5)]
  want = [r for _, rows in batches for r in rows]
  with beam.Pipeline(runner=FnApiRunner()) as p:
    _ = windowed_input(p, batches) | WritePredictionFiles(
        out, file_format, COLUMNS, num_shards=3)
  names = listing(out)
  assert len(names) == 6
  assert_same_rows(read_dir(out, file_format), want, file_format)
  for name in names:
    start = name.split('-')[1]
    rows = read_row_file(os.path.join(out, name), file_format, COLUMNS)
    assert rows and {r['event_id'][0] for r in rows} == {
        'a' if start == '20261124T080000Z' else 'b'}


def test_batch_global_window_uses_the_same_layout(tmp_path):
  out = str(tmp_path / 'out')
  rows = make_rows('g', 25)
  with beam.Pipeline(runner=FnApiRunner()) as p:
    _ = (p | beam.Create([rows[:10], rows[10:]])
         | WritePredictionFiles(out, 'parquet', COLUMNS, num_shards=3))
  names = listing(out)
  assert names == [f'predictions-global-pane-0-0000{s}-of-00003.parquet'
                   for s in range(3)]
  assert_same_rows(read_dir(out, 'parquet'), rows, 'parquet')


def test_parquet_file_has_the_derived_schema(tmp_path):
  import pyarrow.parquet as pq
  out = str(tmp_path / 'out')
  rows = make_rows('s', 4)
  rows[0]['score'] = None
  with beam.Pipeline(runner=FnApiRunner()) as p:
    _ = (p | beam.Create([rows])
         | WritePredictionFiles(out, 'parquet', COLUMNS, num_shards=1))
  (name,) = listing(out)
  table = pq.read_table(os.path.join(out, name))
  assert table.schema == files_lib.arrow_schema(COLUMNS)
  assert table.column('score').to_pylist()[0] is None


def test_bad_arguments_are_rejected(tmp_path):
  with pytest.raises(ValueError, match='file format'):
    WritePredictionFiles(str(tmp_path), 'csv', COLUMNS)
  with pytest.raises(ValueError, match='num_shards'):
    WritePredictionFiles(str(tmp_path), 'jsonl', COLUMNS, num_shards=0)
  with pytest.raises(ValueError, match='bucket root'):
    files_lib.default_temp_directory('gs://bucket/')


# --- atomicity ------------------------------------------------------------------

_QUICK_RETRIES = OutagePolicy(max_outage_s=2.0, initial_backoff_s=0.01,
                              max_backoff_s=0.05)


def _writer(out, tmp, file_format='jsonl', policy=_QUICK_RETRIES):
  fn = files_lib._WriteShardFile(out, tmp, 'predictions', 2,
                                 files_lib._RowCodec(file_format, COLUMNS),
                                 None, policy)
  fn.setup()
  return fn


def _blobs(file_format, *batches):
  codec = files_lib._RowCodec(file_format, COLUMNS)
  return [(len(rows), codec.encode(rows)) for rows in batches]


@pytest.mark.parametrize('file_format,corrupt', [
    ('jsonl', None),                       # not bytes: fails mid-file
    ('parquet', b'not an Arrow stream'),   # fails after a row group
])
def test_failed_write_leaves_nothing_under_output_path(tmp_path, file_format,
                                                       corrupt):
  out, tmp = str(tmp_path / 'out'), str(tmp_path / 'tmp')
  blobs = _blobs(file_format, make_rows('ok', 50, W1)) + [(1, corrupt)]
  fn = _writer(out, tmp, file_format)
  from apache_beam.utils.windowed_value import PaneInfo, PaneInfoTiming
  pane = PaneInfo(True, True, PaneInfoTiming.ON_TIME, 0, 0)
  # An encoding error would repeat: no retry, an error naming the file.
  with pytest.raises(RuntimeError, match='cannot write .*predictions-'):
    list(fn.process((0, blobs), window=IntervalWindow(*W1), pane=pane))
  assert listing(out) == []
  fn.teardown()
  assert listing(tmp) == []  # the temporary file was deleted too


def test_unencodable_rows_fail_loudly():
  codec = files_lib._RowCodec('parquet', COLUMNS)
  rows = make_rows('bad', 2, W1)
  rows[1]['score'] = 'not-a-float'
  with pytest.raises(pa.ArrowInvalid):
    codec.encode(rows)


def test_final_name_appears_only_complete(tmp_path, monkeypatch):
  """The final file does not exist until the rename, and the temporary file
  holds every row at that moment."""
  out, tmp = str(tmp_path / 'out'), str(tmp_path / 'tmp')
  rows = make_rows('r', 200, W1)
  seen = []
  real_rename = FileSystems.rename

  def rename(sources, destinations):
    (src,), (dst,) = sources, destinations
    seen.append((listing(out), os.path.dirname(src),
                 len(read_row_file(src, 'jsonl'))))
    assert not os.path.exists(dst)
    return real_rename(sources, destinations)

  monkeypatch.setattr(FileSystems, 'rename', staticmethod(rename))
  fn = _writer(out, tmp)
  (written,) = fn.process((1, _blobs('jsonl', rows[:120], rows[120:])),
                          window=IntervalWindow(*W1), pane=None)
  assert [(before, os.path.dirname(d), n) for before, d, n in seen] == [
      ([], tmp, 200)]
  assert written.rows == 200 and os.path.exists(written.path)
  fn.teardown()
  assert listing(tmp) == []


def test_unwritable_output_is_retried_until_it_heals(tmp_path, monkeypatch):
  """A write failing with filesystem errors is retried in place with
  backoff; the file appears once, complete, when the output heals."""
  out, tmp = str(tmp_path / 'out'), str(tmp_path / 'tmp')
  rows = make_rows('r', 30, W1)
  attempts = []
  real_rename = FileSystems.rename

  def rename(sources, destinations):
    attempts.append(destinations[0])
    if len(attempts) <= 3:
      raise PermissionError(13, 'Permission denied', destinations[0])
    return real_rename(sources, destinations)

  monkeypatch.setattr(FileSystems, 'rename', staticmethod(rename))
  fn = _writer(out, tmp)
  (written,) = fn.process((0, _blobs('jsonl', rows)),
                          window=IntervalWindow(*W1), pane=None)
  assert len(attempts) == 4 and len(set(attempts)) == 1
  assert written.rows == 30 and listing(out) == [os.path.basename(
      written.path)]
  assert len(read_row_file(written.path, 'jsonl')) == 30
  fn.teardown()
  assert listing(tmp) == []


def test_output_down_longer_than_the_policy_fails_naming_it(tmp_path,
                                                            monkeypatch):
  out, tmp = str(tmp_path / 'out'), str(tmp_path / 'tmp')

  def rename(sources, destinations):
    raise PermissionError(13, 'Permission denied', destinations[0])

  monkeypatch.setattr(FileSystems, 'rename', staticmethod(rename))
  fn = _writer(out, tmp, policy=OutagePolicy(
      max_outage_s=0.3, initial_backoff_s=0.01, max_backoff_s=0.05))
  with pytest.raises(OutageError, match=f'file output {out} unavailable'):
    list(fn.process((0, _blobs('jsonl', make_rows('r', 3, W1))),
                    window=IntervalWindow(*W1), pane=None))
  assert listing(out) == []


# --- streaming (legacy DirectRunner + TestStream) -----------------------------

_RENAMES: list = []


def _record_renames(monkeypatch, out):
  """Records, at every rename into ``out``, what ``out`` held just before."""
  _RENAMES.clear()
  real_rename = FileSystems.rename

  def rename(sources, destinations):
    _RENAMES.append((os.path.basename(destinations[0]), listing(out)))
    return real_rename(sources, destinations)

  monkeypatch.setattr(FileSystems, 'rename', staticmethod(rename))


def streaming_pipeline():
  return beam.Pipeline(runner=BundleBasedDirectRunner(),
                       options=PipelineOptions(streaming=True))


def test_streaming_window_files_appear_at_the_watermark(tmp_path, monkeypatch):
  out = str(tmp_path / 'out')
  _record_renames(monkeypatch, out)
  w1a, w2a = make_rows('w1a', 12, W1), make_rows('w2a', 9, W2)
  w2b = make_rows('w2b', 4, W2)
  stream = (test_stream.TestStream()
            .advance_watermark_to(T0)
            .add_elements([TimestampedValue(w1a, T0 + 10)])
            .add_elements([TimestampedValue(w2a, T0 + 70)])
            .advance_watermark_to(T0 + 60)       # W1 closes; W2 has data
            .add_elements([TimestampedValue(w2b, T0 + 80)])
            .advance_watermark_to(T0 + 120)      # W2 closes
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    written = (p | stream
               | beam.WindowInto(window_lib.FixedWindows(60))
               | WritePredictionFiles(out, 'jsonl', COLUMNS, num_shards=2))
    assert_that(written | beam.Map(lambda f: (f.window, f.pane_index,
                                              f.timing, f.shard)),
                equal_to([(label, 0, 'ON_TIME', shard)
                          for label in ('20261124T080000Z-20261124T080100Z',
                                        '20261124T080100Z-20261124T080200Z')
                          for shard in (0, 1)]))
  w1_files = [n for n, _ in _RENAMES if '-20261124T080100Z-pane' in n]
  w2_files = [n for n, _ in _RENAMES if '-20261124T080200Z-pane' in n]
  assert len(w1_files) == 2 and len(w2_files) == 2
  # Streaming names carry the run tag (when the pipeline was built).
  assert {FINAL_NAME.match(n)['run'] for n, _ in _RENAMES} == {
      FINAL_NAME.match(w1_files[0])['run']} != {None}
  # W2's rows were there before W1 closed, yet no W2 file existed when
  # W1's files were renamed into place: files appear per window firing.
  for name, before in _RENAMES:
    if name in w1_files:
      assert not any('080200Z' in b for b in before), (name, before)
    # Only complete, final names are ever visible under the output path.
    assert all(FINAL_NAME.match(b) for b in before), before
  assert_same_rows(read_dir(out, 'jsonl'), w1a + w2a + w2b, 'jsonl')


def test_streaming_early_on_time_and_late_panes(tmp_path):
  out = str(tmp_path / 'out')
  early, on_time = make_rows('early', 5, W1), make_rows('ontime', 6, W1)
  late = make_rows('late', 2, W1)
  stream = (test_stream.TestStream()
            .advance_watermark_to(T0)
            .add_elements([TimestampedValue(early, T0 + 10)])
            .advance_processing_time(31)           # early firing
            .add_elements([TimestampedValue(on_time, T0 + 20)])
            .advance_watermark_to(T0 + 60)         # on-time firing
            .add_elements([TimestampedValue(late, T0 + 30)])  # late firing
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    written = (p | stream
               | beam.WindowInto(
                   window_lib.FixedWindows(60),
                   trigger=early_firing_trigger(30),
                   accumulation_mode=trigger_lib.AccumulationMode.DISCARDING,
                   allowed_lateness=3600)
               | WritePredictionFiles(out, 'jsonl', COLUMNS, num_shards=1,
                                      run_tag='run20261124T075500Z'))
    assert_that(written | beam.Map(lambda f: (f.pane_index, f.timing,
                                              f.rows)),
                equal_to([(0, 'EARLY', 5), (1, 'ON_TIME', 6), (2, 'LATE', 2)]))
  label = 'run20261124T075500Z-20261124T080000Z-20261124T080100Z'
  assert listing(out) == [
      f'predictions-{label}-pane-{i}-00000-of-00001.jsonl' for i in range(3)]
  pane_ids = [
      sorted(r['event_id'][:-2] for r in read_row_file(
          os.path.join(out, f'predictions-{label}-pane-{i}-00000-of-00001'
                       '.jsonl'), 'jsonl'))
      for i in range(3)]
  assert [set(ids) for ids in pane_ids] == [{'early'}, {'ontime'}, {'late'}]
  assert_same_rows(read_dir(out, 'jsonl'), early + on_time + late, 'jsonl')


def test_streaming_global_window_needs_an_early_trigger(tmp_path):
  p = streaming_pipeline()
  pcoll = p | test_stream.TestStream().add_elements([[{'event_id': 'x'}]])
  with pytest.raises(ValueError, match='early trigger'):
    _ = pcoll | WritePredictionFiles(str(tmp_path), 'jsonl', COLUMNS)


# --- dead letters ---------------------------------------------------------------

def dead_letter(i):
  return DeadLetter(stage='parse', reason='malformed', detail=f'bad {i}',
                    payload=b'\xff' + str(i).encode(), source='kafka:t/0',
                    position=i, event_id=None, time=T0 + i)


def test_dead_letter_files_batch(tmp_path):
  out = str(tmp_path / 'dlq')
  letters = [dead_letter(i) for i in range(7)]
  with beam.Pipeline(runner=FnApiRunner()) as p:
    _ = (p | beam.Create(letters)
         | beam.WindowInto(window_lib.FixedWindows(10))  # made global inside
         | WriteDeadLetterFiles(out))
  assert listing(out) == ['dead-letters-global-pane-0-00000-of-00001.jsonl']
  got = read_dir(out, 'jsonl')
  assert sorted(got, key=lambda d: d['position']) == [
      d.to_dict() for d in letters]
  assert [DeadLetter.from_dict(d).payload for d in got] == [
      d.payload for d in letters]


def test_dead_letter_files_streaming_windows_never_drop_late_letters(
    tmp_path):
  out = str(tmp_path / 'dlq')
  first = [dead_letter(i) for i in range(3)]
  # Far behind the watermark: a dropping window would lose it.
  too_late = dataclasses.replace(dead_letter(3), reason='too_late')
  stream = (test_stream.TestStream()
            .advance_watermark_to(T0 + 1000)
            .add_elements([TimestampedValue(d, T0 + 1000) for d in first])
            .add_elements([TimestampedValue(too_late, T0)])
            .advance_watermark_to_infinity())
  label = files_lib.window_label
  with streaming_pipeline() as p:
    written = (p | stream
               | WriteDeadLetterFiles(out, flush_every_s=60,
                                      run_tag='run20261124T080000Z'))
    assert_that(written | beam.Map(lambda f: (f.window, f.timing, f.rows)),
                equal_to([(label(IntervalWindow(T0, T0 + 60)), 'LATE', 1),
                          (label(IntervalWindow(T0 + 960, T0 + 1020)),
                           'ON_TIME', 3)]))
  assert listing(out) == [
      f'dead-letters-run20261124T080000Z-{label(w)}-pane-0-00000-of-'
      f'00001.jsonl' for w in (IntervalWindow(T0, T0 + 60),
                              IntervalWindow(T0 + 960, T0 + 1020))]
  got = read_dir(out, 'jsonl')
  assert sorted(d['position'] for d in got) == [0, 1, 2, 3]