"""The same events through the stream and through the backfill: the same
predictions, window features and dead letters, event by event.

Streaming computes window features "so far, in arrival order" per key;
the backfill computes them in event-time order. They agree when each key's
events arrive in order, so the topic is keyed and partitioned by the event
key (the detector), events produced in event-time order, as production
topics should be for this job. The backfill reads the same bytes from a
JSON-lines file.
"""

import base64
import collections
import glob
import time

import numpy as np
import orjson
import pytest

import model_fixtures as mf
from kafka_helpers import produce, read_topic
from models import susy
from transforms.prediction_rows import output_columns
from transforms.schema import susy_schema
from transforms.sinks import read_row_file

pytestmark = pytest.mark.it

N = 20_000
SEED = 21
START = float(int(time.time()) - 3600)
WINDOW_S = 2.0
FEATURE_COLUMNS = [c for c, _ in output_columns(susy_schema())
                   if c.startswith(('win_mean_', 'win_std_'))]


@pytest.fixture(scope='module')
def model_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('models')
  mf.write_versioned(str(root), 7)
  return str(root)


def _stream(broker, make_topic, model_root, events):
  from beam_jobs import score_stream
  topics = {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  produce(broker, topics['in'], [
      (e.index % 4, susy.DEFAULT_KEYS[e.index % 4].encode(), e.value, None,
       e.timestamp_ms) for e in events])
  result = score_stream.run([
      '--bootstrap_servers', broker.bootstrap_servers,
      *[f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
        if k != 'bootstrap.servers'],
      '--input_topic', topics['in'], '--output_topic', topics['out'],
      '--dead_letter_topic', topics['dlq'],
      '--consumer_group', f'g-{topics["in"]}', '--start', 'earliest',
      '--model_dir', model_root, '--window_size_s', str(WINDOW_S),
      '--max_records', str(N)])
  assert str(result.state) == 'DONE'
  bad = sum(1 for e in events if e.malformed)
  rows = [orjson.loads(m.value())
          for m in read_topic(broker, topics['out'], N - bad)]
  letters = [(m.value(), dict(m.headers())) for m in
             read_topic(broker, topics['dlq'], bad)]
  dead = [(payload, h['dlq.stage'].decode(), h['dlq.reason'].decode(),
           h.get('dlq.event_id', b'').decode() or None)
          for payload, h in letters]
  return rows, dead


def _backfill(model_root, events, tmp_path):
  from beam_jobs import backfill
  path = tmp_path / 'events.jsonl'
  path.write_bytes(b''.join(e.value + b'\n' for e in events))
  result = backfill.run([
      '--input', str(path), '--model_dir', model_root,
      '--window_size_s', str(WINDOW_S),
      '--output_path', str(tmp_path / 'predictions'),
      '--dead_letter_path', str(tmp_path / 'dead-letters'),
      '--split_mb', '2'])  # several splits of the ~8 MB file
  assert str(result.state) == 'DONE'
  rows = []
  for f in glob.glob(str(tmp_path / 'predictions' / '*.jsonl')):
    rows += read_row_file(f, 'jsonl')
  dead = []
  for f in glob.glob(str(tmp_path / 'dead-letters' / '*.jsonl')):
    for d in read_row_file(f, 'jsonl'):
      dead.append((base64.b64decode(d['payload_b64']), d['stage'],
                   d['reason'], d['event_id']))
  return rows, dead


def test_stream_and_backfill_agree_event_by_event(broker, make_topic,
                                                  model_root, tmp_path):
  events = list(susy.iter_encoded_events(
      N, seed=SEED, start_time=START, malformed_fraction=0.01))
  malformed = {e.key.decode() for e in events if e.malformed}
  assert 150 <= len(malformed) <= 250

  stream_rows, stream_dead = _stream(broker, make_topic, model_root, events)
  batch_rows, batch_dead = _backfill(model_root, events, tmp_path)

  stream = {r['event_id']: r for r in stream_rows}
  batch = {r['event_id']: r for r in batch_rows}
  assert len(stream) == len(stream_rows) and len(batch) == len(batch_rows)
  assert set(stream) == set(batch) == (
      {f'e{i}' for i in range(N)} - malformed)

  score_diff = feature_diff = 0.0
  for event_id, s in stream.items():
    b = batch[event_id]
    score_diff = max(score_diff, abs(s['score'] - b['score']))
    for column in ('model_version', 'key', 'window_start', 'window_end',
                   'win_count', 'event_time', 'label', 'late'):
      assert s[column] == b[column], (event_id, column, s[column], b[column])
    for column in FEATURE_COLUMNS:
      diff = abs(s[column] - b[column])
      feature_diff = max(feature_diff, diff)
      assert diff <= 1e-6 * max(1.0, abs(s[column])), (event_id, column)
  assert score_diff <= 1e-6
  assert all(not r['late'] for r in stream_rows)
  assert max(r['win_count'] for r in batch_rows) >= 450  # full windows
  print(f'\nparity: {len(stream)} predictions, max |score diff| '
        f'{score_diff:.3g}, max |window feature diff| {feature_diff:.3g}, '
        f'{len(stream_dead)} dead letters')

  # The same bad records, for the same reasons (positions differ: offsets
  # in the stream, line numbers in the file).
  assert collections.Counter(stream_dead) == collections.Counter(batch_dead)
  assert len(batch_dead) == len(malformed)
  readable = {d[3] for d in batch_dead if d[3]}
  assert readable <= malformed
  # The scores are the model's own, offline.
  expected = mf.expected_scores(susy.generate(N, seed=SEED).features)
  offline = max(abs(b['score'] - float(expected[int(i[1:])]))
                for i, b in batch.items())
  assert offline <= 1e-6
  assert np.isfinite(score_diff)
