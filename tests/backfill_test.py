"""The backfill job over files: every input format, end to end, with a real
SavedModel; and bad flags failing before anything runs.

The backfill and ingest_examples jobs share --input (beam_jobs.options.
FileInputOptions); test_both_jobs_import_together checks they coexist.
"""

import collections
import datetime
import glob
import gzip
import os
import time

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import model_fixtures as mf
from models import susy
from transforms import dead_letters as dl
from transforms import schema as schema_lib
from transforms.prediction_rows import output_columns
from transforms.sinks import read_row_file
from transforms.tfrecord import frame as tfrecord_frame

N = 3000
START = float(int(time.time()) - 6 * 3600)
RATE = 50.0          # events per second of event time: 60 s of data
WINDOW_S = 10.0
WINDOW_NAMES = schema_lib.susy_schema().window_features

# What each malformed kind of models/susy.malform becomes.
EXPECTED_REASONS = {'not_json': {dl.MALFORMED}, 'truncated': {dl.MALFORMED},
                    'missing_feature': {dl.MISSING_FIELD},
                    'wrong_type': {dl.WRONG_TYPE},
                    'nan': {dl.WRONG_TYPE, dl.MALFORMED}}


@pytest.fixture(scope='module')
def backfill():
  from beam_jobs import backfill as job
  return job


@pytest.fixture(scope='module')
def model_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('models')
  mf.write_versioned(str(root), 2)
  return str(root)


@pytest.fixture(scope='module')
def data():
  return susy.generate(N, seed=5)


@pytest.fixture(scope='module')
def encoded():
  return list(susy.iter_encoded_events(
      N, seed=5, start_time=START, rate=RATE, malformed_fraction=0.02))


def run_job(backfill, input_path, model_root, out, *extra):
  return backfill.run([
      '--input', input_path, '--model_dir', model_root,
      '--output_path', str(out / 'predictions'),
      '--dead_letter_path', str(out / 'dead-letters'),
      '--window_size_s', str(WINDOW_S), '--progress_interval_s', '0.5',
      *extra])


def predictions(out, file_format='jsonl', schema=None):
  columns = output_columns(schema or schema_lib.susy_schema())
  rows = []
  for path in glob.glob(str(out / 'predictions' / f'*.{file_format}')):
    rows += read_row_file(path, file_format, columns)
  return rows


def dead_letters(out):
  rows = []
  for path in glob.glob(str(out / 'dead-letters' / '*.jsonl')):
    rows += read_row_file(path, 'jsonl')
  return rows


def reference_window_features(rows_by_id, data, good):
  """win_count/mean/std per event: per detector and 10 s window, events in
  time order (= index order), cumulative, computed here independently."""
  groups = collections.defaultdict(list)
  for i in good:
    t = START + i / RATE
    start = np.floor(t / WINDOW_S) * WINDOW_S
    groups[(susy.DEFAULT_KEYS[i % 4], start)].append(i)
  cols = [susy.FEATURE_NAMES.index(n) for n in WINDOW_NAMES]
  out = {}
  for (unused_key, start), idx in groups.items():
    values = data.features[idx][:, cols].astype(np.float64)
    counts = np.arange(1, len(idx) + 1)[:, None]
    mean = np.cumsum(values, axis=0) / counts
    std = np.sqrt(np.maximum(np.cumsum(values**2, axis=0) / counts
                             - mean**2, 0))
    for k, i in enumerate(idx):
      out[f'e{i}'] = (int(counts[k, 0]), start, mean[k], std[k])
  return out


def check_predictions(rows, data, good, *, time_tolerance=0.0):
  by_id = {r['event_id']: r for r in rows}
  assert len(rows) == len(by_id) == len(good), 'missing or duplicate rows'
  assert set(by_id) == {f'e{i}' for i in good}
  expected = mf.expected_scores(data.features)
  reference = reference_window_features(by_id, data, good)
  for i in good:
    r = by_id[f'e{i}']
    assert abs(r['score'] - float(expected[i])) <= 1e-6
    assert r['model_version'] == 2 and r['key'] == susy.DEFAULT_KEYS[i % 4]
    assert abs(r['event_time'] - (START + i / RATE)) <= time_tolerance + 1e-6
    count, start, mean, std = reference[f'e{i}']
    assert r['win_count'] == count and r['window_start'] == start
    assert r['window_end'] == start + WINDOW_S and r['late'] is False
    for j, name in enumerate(WINDOW_NAMES):
      assert r[f'win_mean_{name}'] == pytest.approx(mean[j], rel=1e-5)
      assert r[f'win_std_{name}'] == pytest.approx(std[j], rel=1e-4,
                                                   abs=1e-5)
    assert r['label'] == float(data.labels[i])


def test_jsonl_events_scored_with_window_features_and_dead_letters(
    backfill, model_root, data, encoded, tmp_path):
  path = tmp_path / 'events.jsonl'
  path.write_bytes(b''.join(e.value + b'\n' for e in encoded))
  bad = {e.index: e.malformed for e in encoded if e.malformed}
  assert 30 <= len(bad) <= 100
  result = run_job(backfill, str(path), model_root, tmp_path,
                   '--split_mb', '0.25', '--chunk_records', '200')
  assert str(result.state) == 'DONE'
  good = [i for i in range(N) if i not in bad]
  check_predictions(predictions(tmp_path), data, good)
  letters = dead_letters(tmp_path)
  assert sorted(d['position'] for d in letters) == sorted(i + 1 for i in bad)
  for d in letters:
    i = d['position'] - 1
    assert d['reason'] in EXPECTED_REASONS[bad[i]], (bad[i], d)
    assert d['source'] == f'file:{path}'
    assert d['payload_b64'] is not None
  # The summary counts from the pipeline's metrics.
  s = result.summary
  assert (s.records_read, s.events_scored, s.dead_letters) == (
      N, len(good), len(bad))
  assert s.events_per_s > 0 and s.balanced
  assert sum(s.dead_letter_reasons.values()) == len(bad)
  assert s.model_versions == {2: len(good)}  # events per model version


def test_real_susy_csv_gz_without_id_time_or_key(backfill, model_root,
                                                 tmp_path):
  rows = 1500
  csv_data = susy.generate(rows, seed=9)
  path = str(tmp_path / 'SUSY.csv.gz')
  susy.write_susy_csv(csv_data, path)
  when = datetime.datetime.fromtimestamp(START, datetime.timezone.utc)
  result = run_job(backfill, path, model_root, tmp_path, '--schema',
                   'susy_csv', '--default_event_time', when.isoformat(),
                   '--output_file_format', 'parquet')
  assert result.summary.events_scored == rows
  out = predictions(tmp_path, 'parquet', schema_lib.susy_csv_schema())
  assert len(out) == rows and dead_letters(tmp_path) == []
  expected = mf.expected_scores(csv_data.features)
  for r in out:
    line = int(r['event_id'].rsplit('@', 1)[1])
    assert r['event_id'] == f'file:{path}@{line}'
    assert abs(r['score'] - float(expected[line - 1])) <= 1e-6
    assert r['event_time'] == START and r['key'] == ''
    # One key, one time: file order; the line-th event of its window.
    assert r['win_count'] == line
    assert r['label'] == float(csv_data.labels[line - 1])


def _typed_rows(data, good):
  return {
      'event_id': [f'e{i}' for i in good],
      'event_time': [START + i / RATE for i in good],
      'detector': [susy.DEFAULT_KEYS[i % 4] for i in good],
      'label': [int(data.labels[i]) for i in good],
      **{n: data.features[good, j] for j, n in enumerate(susy.FEATURE_NAMES)},
  }


def test_parquet_rows_scored_as_their_json_would_be(backfill, model_root,
                                                    data, tmp_path):
  good = [i for i in range(N) if i % 50 != 7]
  columns = _typed_rows(data, good)
  # Two files, several row groups each; one row with a wrong type.
  half = len(good) // 2
  for part, rows in (('a', slice(0, half)), ('b', slice(half, None))):
    table = pa.table({k: v[rows] for k, v in columns.items()})
    pq.write_table(table, str(tmp_path / f'rows-{part}.parquet'),
                   row_group_size=400)
  bad = pa.table({'event_id': ['bad'], 'event_time': [START],
                  'detector': ['det-0'], 'label': [1],
                  **{n: ['x'] for n in susy.FEATURE_NAMES}})
  pq.write_table(bad, str(tmp_path / 'rows-c.parquet'))
  result = run_job(backfill, str(tmp_path / 'rows-*.parquet'), model_root,
                   tmp_path, '--output_file_format', 'parquet')
  assert result.summary.records_read == len(good) + 1
  check_predictions(predictions(tmp_path, 'parquet'), data, good)
  (letter,) = dead_letters(tmp_path)
  assert (letter['reason'], letter['event_id'], letter['position']) == (
      dl.WRONG_TYPE, 'bad', 0)
  assert letter['source'].endswith('rows-c.parquet')


def test_tfrecord_examples_scored_as_their_json_would_be(backfill,
                                                         model_root, data,
                                                         tmp_path):
  from tensorflow.core.example import example_pb2
  good = list(range(0, N, 3))
  frames = []
  for i in good:
    ex = example_pb2.Example()
    f = ex.features.feature
    f['event_id'].bytes_list.value.append(f'e{i}'.encode())
    # Times as int64 milliseconds (float_list is float32: not exact).
    f['event_time'].int64_list.value.append(round((START + i / RATE) * 1000))
    f['detector'].bytes_list.value.append(susy.DEFAULT_KEYS[i % 4].encode())
    f['label'].int64_list.value.append(int(data.labels[i]))
    for j, name in enumerate(susy.FEATURE_NAMES):
      f[name].float_list.value.append(float(data.features[i, j]))
    frames.append(tfrecord_frame(ex.SerializeToString()))
  frames.append(tfrecord_frame(b'\x00garbage'))
  with gzip.open(tmp_path / 'events.tfrecord.gz', 'wb') as out:
    out.write(b''.join(frames))
  result = run_job(backfill, str(tmp_path / 'events.tfrecord.gz'),
                   model_root, tmp_path)
  assert result.summary.events_scored == len(good)
  check_predictions(predictions(tmp_path), data, good, time_tolerance=1e-3)
  (letter,) = dead_letters(tmp_path)
  assert (letter['reason'], letter['stage'], letter['position']) == (
      dl.MALFORMED, dl.PARSE, len(good))


def test_bad_flags_fail_before_the_pipeline_starts_naming_the_flag(
    backfill, model_root, tmp_path):
  events = tmp_path / 'e.jsonl'
  events.write_bytes(b'{}\n')
  base = ['--model_dir', model_root, '--output_path', str(tmp_path / 'out'),
          '--dead_letter_path', str(tmp_path / 'dlq')]
  files = ['--input', str(events)]
  kafka = ['--input_topic', 'events', '--start_time', '2026-11-23T00:00:00Z',
           '--end_time', '2026-11-24T00:00:00Z']
  cases = [
      ([], 'set exactly one input: --input'),
      (files + kafka, 'set exactly one input: --input'),
      (files + ['--start_time', '2026-11-23T00:00:00Z'],
       '--start_time is for a Kafka range'),
      (files + ['--file_format', 'lines', '--input_format', 'avro'],
       '--input_format=avro with --file_format=lines'),
      (files + ['--schema', 'susy_csv'], '--default_event_time is required'),
      (files + ['--schema', 'susy_csv', '--default_event_time', 'noon'],
       '--default_event_time: not an ISO-8601 time'),
      (files + ['--schema', 'susy_csv', '--default_event_time',
                '1999-01-01T00:00:00Z'], '--default_event_time .* outside'),
      (files + ['--chunk_records', '0'], '--chunk_records must be >= 1'),
      (files + ['--split_mb', '0'], '--split_mb must be > 0'),
      (files + ['--progress_interval_s', '-1'],
       '--progress_interval_s must be >= 0'),
      (files + ['--gc_gen0_threshold', '-5'], '--gc_gen0_threshold'),
      (files + ['--window', 'sliding'], '--window_period_s is required'),
      (files + ['--max_batch_size', '0'], '--max_batch_size must be >= 1'),
      (files + ['--schema', str(tmp_path / 'nope.json')], '--schema'),
      (kafka[:2] + ['--start_time', '2026-11-23T00:00:00Z'],
       '--start_time and --end_time are required'),
      (kafka[:4] + ['--end_time', 'tomorrow'], '--end_time: not an ISO'),
      (kafka[:4] + ['--end_time', '2026-11-22T00:00:00Z'],
       '--end_time .* must be after --start_time'),
      (kafka + ['--default_event_time', '2026-11-23T00:00:00Z'],
       '--default_event_time is for --input files'),
      (kafka + ['--kafka_io', 'xlang'], '--kafka_io must be python'),
      (kafka + ['--start', 'yesterday'], '--start'),
      (files + ['--streaming'], '--streaming: a backfill is a batch job'),
  ]
  for extra, message in cases:
    with pytest.raises(ValueError, match=message):
      backfill.run(base + extra)
  with pytest.raises(ValueError, match='no output: set --output_path'):
    backfill.run(['--model_dir', model_root, *files,
                  '--dead_letter_path', str(tmp_path / 'dlq')])
  with pytest.raises(ValueError, match='dead letters must go somewhere'):
    backfill.run(['--model_dir', model_root, *files,
                  '--output_path', str(tmp_path / 'out')])
  with pytest.raises(ValueError, match='--input .* matches no files'):
    backfill.run(base + ['--input', str(tmp_path / 'none-*.jsonl')])
  with pytest.raises(ValueError, match='--model_dir is required'):
    backfill.run(base[2:] + files)
  with pytest.raises(ValueError,
                     match='--(input|model_dir) .* is a local path'):
    backfill.run(base + files + ['--runner', 'DataflowRunner',
                                 '--project', 'p', '--region', 'r',
                                 '--temp_location', 'gs://b/tmp'])
  # Nothing was written by any of them.
  assert not os.path.exists(tmp_path / 'out')
  assert not os.path.exists(tmp_path / 'dlq')


def test_missing_model_fails_before_reading(backfill, tmp_path):
  from models.handler import ModelLoadError
  events = tmp_path / 'e.jsonl'
  events.write_bytes(orjson.dumps({'a': 1}) + b'\n')
  with pytest.raises(ModelLoadError, match='no SavedModel at'):
    backfill.run(['--input', str(events), '--model_dir',
                  str(tmp_path / 'nothing'), '--output_path',
                  str(tmp_path / 'out'), '--dead_letter_path',
                  str(tmp_path / 'dlq')])
  assert not os.path.exists(tmp_path / 'out')


def test_both_jobs_import_together():
  # Beam parses every PipelineOptions subclass with one parser: a flag
  # defined by two jobs is an argparse conflict in any process importing both.
  from apache_beam.options.pipeline_options import PipelineOptions
  from beam_jobs import backfill, ingest_examples  # pylint: disable=unused-import
  from beam_jobs import options as opts
  options = PipelineOptions(['--input', 'a/*.jsonl', '--file_format', 'jsonl',
                             '--splits', 'train:3,eval:1'])
  assert options.view_as(opts.FileInputOptions).input == 'a/*.jsonl'
  assert options.view_as(backfill.BackfillOptions).file_format == 'jsonl'
  assert options.view_as(
      ingest_examples.IngestExamplesOptions).splits == 'train:3,eval:1'


@pytest.mark.parametrize('model_handler', ['savedmodel', 'tfx_bsl'])
def test_tfx_style_model_backfills_with_no_code(backfill, data, encoded,
                                                tmp_path, model_handler):
  """A TFX Trainer-style model (serialized tf.Examples in, 'outputs' out)
  scores a backfill as the float-tensor model does."""
  root = tmp_path / 'models'
  mf.write_tfx_examples(str(root / '1'), susy.FEATURE_NAMES)
  (root / '1' / 'metrics.json').write_text('{}')
  path = tmp_path / 'events.jsonl'
  path.write_bytes(b''.join(e.value + b'\n' for e in encoded[:600]))
  result = run_job(backfill, str(path), str(root), tmp_path,
                   '--model_handler', model_handler)
  assert str(result.state) == 'DONE'
  rows = predictions(tmp_path)
  good = [e.index for e in encoded[:600] if not e.malformed]
  assert sorted(r['event_id'] for r in rows) == sorted(f'e{i}' for i in good)
  expected = mf.expected_scores(data.features)
  assert max(abs(r['score'] - float(expected[int(r['event_id'][1:])]))
             for r in rows) <= 1e-6
