"""The status page's decoding, aggregation, snapshot and --once table,
called directly (no broker): beam_jobs/status/{decode,aggregate,snapshot,
table,model_dir}.py."""

import json
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest

from beam_jobs.status import decode, snapshot, table
from beam_jobs.status.aggregate import (Aggregates, OffsetHistory,
                                        OffsetSample)
from beam_jobs.status.model_dir import ModelDir

NOW = 1_800_000_000.0


class _Message:
  """What decode reads of a confluent_kafka Message."""

  def __init__(self, value, headers=(), partition=0, offset=0,
               timestamp_ms=None):
    self._value, self._headers = value, list(headers)
    self._partition, self._offset, self._ts = partition, offset, timestamp_ms

  def value(self):
    return self._value

  def headers(self):
    return self._headers

  def partition(self):
    return self._partition

  def offset(self):
    return self._offset

  def timestamp(self):
    return (1, self._ts) if self._ts else (0, -1)


def _row(i, version=3, score=0.8, label=None, role=None, lag_s=2.0):
  row = {'event_id': f'e{i}', 'key': 'k', 'score': score,
         'model_version': version, 'event_time': NOW - 10 - lag_s,
         'read_time': NOW - 10 - lag_s / 2, 'scored_time': NOW - 10,
         'late': False, 'win_count': 1, 'win_mean_x': 1.0}
  if label is not None:
    row['label'] = label
  if role is not None:
    row['model_role'] = role
  return orjson.dumps(row)


def test_prediction_rows_decode_and_bad_ones_are_counted():
  values = [_row(0), b'not json', _row(1, label=1.0), None, b'[1,2]',
            orjson.dumps({'score': 'high'})]
  cols, bad = decode.predictions(values)
  assert bad == 3  # not JSON, not an object, a score that is no number
  assert len(cols) == 2
  assert cols.model_version == [3, 3]
  assert np.isnan(cols.label[0]) and cols.label[1] == 1.0
  assert cols.scored_time.tolist() == [NOW - 10, NOW - 10]


def test_dead_letters_decode_headers_and_preview_payloads_as_text():
  payload = b'<script>alert(1)</script>\x00\x1b[31m' + b'x' * 1000
  m = _Message(payload, headers=[
      ('trace', b'abc'), ('dlq.stage', b'parse'), ('dlq.reason', b'malformed'),
      ('dlq.detail', b'bad \xff json'), ('dlq.source', b'kafka:ev/2'),
      ('dlq.position', b'17'), ('dlq.time', f'{NOW:.3f}'.encode()),
      ('dlq.event_id', b'e9')], partition=0, offset=5)
  d = decode.dead_letter(m, now=0.0)
  assert (d.reason, d.stage, d.source, d.position, d.event_id) == (
      'malformed', 'parse', 'kafka:ev/2', '17', 'e9')
  assert d.time == pytest.approx(NOW)
  assert d.detail == 'bad \ufffd json'
  assert d.payload_bytes == len(payload)
  assert len(d.payload.encode()) <= decode.PREVIEW_BYTES * 3
  assert d.payload.startswith('<script>alert(1)</script>\ufffd\ufffd[31m')
  # No dlq.time: the record timestamp; no reason: 'unknown'.
  d = decode.dead_letter(_Message(None, timestamp_ms=1_000_000), now=5.0)
  assert (d.time, d.reason, d.payload, d.payload_bytes) == (
      1000.0, 'unknown', '', 0)


def test_control_records():
  assert decode.control_record(b'{"primary": 3}') == {'primary': 3}
  assert decode.control_record(None) is None
  assert decode.control_record(b'7') == {'value': 7}
  assert decode.control_record(b'\xff') == {'unreadable': '\ufffd'}


def _filled(clock=lambda: NOW):
  agg = Aggregates(buckets=60, bucket_s=10.0, clock=clock)
  rows = ([_row(i, version=3, score=0.9, label=1.0) for i in range(30)] +
          [_row(i, version=3, score=0.2, label=0.0) for i in range(10)] +
          [_row(i, version=4, score=0.6, role='canary', lag_s=20.0)
           for i in range(5)])
  agg.add_predictions(decode.predictions(rows)[0])
  letters = [decode.dead_letter(_Message(b'{', headers=[
      ('dlq.reason', r.encode()), ('dlq.time', f'{NOW - 5}'.encode())]),
                                now=NOW)
             for r in ['malformed'] * 3 + ['missing_field']]
  agg.add_dead_letters(letters)
  return agg


def _topics():
  return snapshot.Topics(group='g', inputs=('ev',), outputs=('pred',),
                         dead_letters=('dlq',), control='ctl')


def _history():
  history = OffsetHistory(maxlen=10)
  history.add(OffsetSample(NOW - 2, {'ev': {0: 100, 1: 100}, 'pred': {0: 90},
                                     'dlq': {0: 4}},
                           {'ev': {0: 90, 1: None}}))
  history.add(OffsetSample(NOW, {'ev': {0: 150, 1: 110}, 'pred': {0: 130},
                                 'dlq': {0: 6}}, {'ev': {0: 140, 1: 5}}))
  return history


def _doc(versions=(), deployments=None):
  return snapshot.build(
      _filled().view(now=NOW), _history().samples(), list(versions),
      deployments or {}, _topics(), window_s=300.0,
      collector={'records_read': 49, 'skipped': 0, 'unreadable': 0,
                 'behind': 0})


def test_snapshot_figures():
  doc = _doc(versions=[{'version': 4, 'complete': True,
                        'metrics': {'accuracy': 0.7}},
                       {'version': 3, 'complete': True, 'metrics': {}}],
             deployments={'susy': {'record': {'primary': 3, 'canary': 4,
                                              'canary_fraction': 0.1,
                                              'shadow_version': 2},
                                   'time': NOW}})
  s = doc['summary']
  # Throughput from offsets: (150+110) - (100+100) over 2 s, etc.
  assert (s['in_per_s'], s['predictions_per_s'], s['dead_letters_per_s']) == (
      30.0, 20.0, 1.0)
  assert s['consumed_per_s'] is None  # partition 1 had no commit before
  # Lag: 150-140 + 110-5.
  assert s['lag'] == 115 and s['lag_max_partition'] == 105
  assert doc['throughput']['records'] == {'ev': 260, 'pred': 130, 'dlq': 6}
  assert s['dead_letters_window'] == 4
  assert s['dead_letter_rate'] == pytest.approx(4 / (4 + 45))
  assert s['top_reason'] == 'malformed'
  assert doc['dead_letters']['totals'] == {'malformed': 3, 'missing_field': 1}
  # 40 rows 2 s late, 5 rows 20 s late: p50 ~2 s, p99 ~20 s.
  assert s['latency_p50_s'] == pytest.approx(2.0, rel=0.06)
  assert s['latency_p99_s'] == pytest.approx(20.0, rel=0.06)
  assert s['read_latency_p50_s'] == pytest.approx(1.0, rel=0.06)
  series = doc['scores']['series']
  assert set(series) == {'v3', 'v4 canary'}
  assert series['v3']['window_accuracy'] == 1.0
  assert series['v3']['window_auc'] == 1.0
  assert series['v3']['window_labelled'] == 40
  assert series['v4 canary']['window_auc'] is None
  rows = {r['version']: r for r in doc['models']['versions']}
  assert rows[3]['serving'] == ['serving', 'susy:primary']
  assert rows[4]['serving'] == ['canary', 'susy:canary']
  assert rows[2]['serving'] == ['susy:shadow']  # only the control topic
  assert rows[2]['in_model_dir'] is False
  assert rows[4]['metrics'] == {'accuracy': 0.7}
  assert [r['version'] for r in doc['models']['versions']] == [4, 3, 2]
  json.dumps(doc, allow_nan=False)  # strict JSON: no NaN anywhere


def test_old_and_future_records_count_in_totals_and_in_the_current_bucket():
  agg = Aggregates(buckets=6, bucket_s=10.0, clock=lambda: NOW)
  rows = [orjson.dumps({'score': 0.5, 'model_version': 1,
                        'scored_time': t}) for t in (NOW - 3600, NOW + 999)]
  agg.add_predictions(decode.predictions(rows)[0])
  view = agg.view(now=NOW)
  assert view.predictions_total == 2
  assert view.predictions.tolist() == [0, 0, 0, 0, 0, 1]


def test_series_and_reasons_are_capped():
  agg = Aggregates(buckets=2, bucket_s=10.0, clock=lambda: NOW)
  rows = [orjson.dumps({'score': 0.5, 'model_version': v,
                        'scored_time': NOW}) for v in range(100)]
  agg.add_predictions(decode.predictions(rows)[0])
  letters = [decode.dead_letter(_Message(b'', headers=[
      ('dlq.reason', f'r{i}'.encode())]), now=NOW) for i in range(100)]
  agg.add_dead_letters(letters)
  view = agg.view(now=NOW)
  assert len(view.series) == 33 and view.series['other'].total == 68
  assert len(view.reasons) == 33 and view.reason_totals['other'] == 68
  assert len(view.recent) == 20


def test_table_and_thresholds():
  doc = _doc()
  text = table.format_table(doc)
  assert 'malformed' in text and 'total' in text and 'v' not in text[:0]
  assert table.exceeded(doc, table.Thresholds()) == []
  problems = table.exceeded(doc, table.Thresholds(
      max_lag=100, max_dead_letter_rate=0.05, max_latency_p99_s=10))
  assert [p.split()[0] for p in problems] == ['lag', 'dead-letter',
                                              'latency']
  assert table.exceeded(doc, table.Thresholds(
      max_lag=115, max_dead_letter_rate=0.1, max_latency_p99_s=30)) == []


def _version(root, n, *, metrics=None, graph=True):
  path = os.path.join(root, str(n))
  os.makedirs(os.path.join(path, 'variables'))
  open(os.path.join(path, 'variables', 'variables.index'), 'wb').close()
  if graph:
    open(os.path.join(path, 'saved_model.pb'), 'wb').close()
  if metrics is not None:
    with open(os.path.join(path, 'metrics.json'), 'w') as f:
      f.write(metrics)


def test_model_dir_versions_and_metrics(tmp_path):
  root = str(tmp_path)
  _version(root, 1, metrics='{"accuracy": 0.61, "auc": 0.7}')
  _version(root, 2, metrics=None)                    # being written
  _version(root, 3, metrics='{"accuracy": 0.8}', graph=False)
  _version(root, 4, metrics='not json')
  os.makedirs(os.path.join(root, '.tmp-5-abc'))
  found = ModelDir(root).scan()
  assert [(v['version'], v['complete']) for v in found] == [
      (4, True), (3, False), (2, False), (1, True)]
  assert found[-1]['metrics'] == {'accuracy': 0.61, 'auc': 0.7}
  assert 'unreadable' in found[0]['metrics']['error']
  assert ModelDir(str(tmp_path / 'absent')).scan() == []


def test_model_dir_agrees_with_what_the_jobs_load(tmp_path):
  root = str(tmp_path)
  _version(root, 1, metrics='{}')
  _version(root, 2, metrics=None)
  _version(root, 3, metrics='{}', graph=False)
  from models import versions  # pylint: disable=import-outside-toplevel
  assert sorted(v['version'] for v in ModelDir(root).scan()
                if v['complete']) == versions.list_versions(root)


def test_the_status_modules_import_neither_tensorflow_nor_beam():
  code = ('import sys, beam_jobs.status.cli, beam_jobs.status.server; '
          'print(sorted(m for m in sys.modules if m.split(".")[0] in '
          '("tensorflow", "apache_beam")))')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == '[]'


@pytest.mark.parametrize('argv, message', [
    (['--max_lagg', '3'], 'unknown flag --max_lagg (did you mean --max_lag?)'),
    (['--json'], '--json needs --once'),
    (['--poll_s', '0'], 'must be > 0'),
    (['stray'], "unexpected value 'stray'"),
])
def test_bad_flags_exit_2(argv, message):
  out = subprocess.run([sys.executable, '-m', 'beam_jobs.status'] + argv,
                       capture_output=True, text=True)
  assert out.returncode == 2
  assert message in out.stderr


def test_help_states_every_default():
  out = subprocess.run([sys.executable, '-m', 'beam_jobs.status', '--help'],
                       capture_output=True, text=True, check=True)
  helps = out.stdout.split('\n  --')[1:]
  assert len(helps) >= 20
  for h in helps:
    if not h.startswith(('help', 'h,')):
      assert 'default' in h, h
