"""The backfill over a Kafka time range, on a real broker, to Kafka sinks."""

import datetime
import time

import orjson
import pytest

import model_fixtures as mf
from kafka_helpers import produce, read_topic
from models import susy

pytestmark = pytest.mark.it

N = 3000
RATE = 100.0
START = float(int(time.time()) - 3 * 3600)


def iso(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(
      seconds, datetime.timezone.utc).isoformat()


@pytest.fixture(scope='module')
def model_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('models')
  mf.write_versioned(str(root), 4)
  return str(root)


def test_time_range_of_a_topic_is_scored_and_nothing_else(
    broker, make_topic, model_root, known_broker_bug, tmp_path):
  known_broker_bug('tansu', 'offsets_for_times returns offset 0 for any '
                   'time (docs/brokers.md)')
  from beam_jobs import backfill
  topic, out, dlq = make_topic(4), make_topic(2, suffix='-out'), make_topic(
      1, suffix='-dlq')
  events = list(susy.iter_encoded_events(
      N, seed=3, start_time=START, rate=RATE, malformed_fraction=0.02))
  # Keyed by detector, one partition each; record time = event time.
  produce(broker, topic, [
      (e.index % 4, susy.DEFAULT_KEYS[e.index % 4].encode(), e.value, None,
       e.timestamp_ms) for e in events])
  lo, hi = START + 8.0, START + 21.5  # events 800 .. 2149
  inside = [e for e in events if lo * 1000 <= e.timestamp_ms < hi * 1000]
  good = {e.key.decode() for e in inside if not e.malformed}
  bad = {e.key.decode(): e for e in inside if e.malformed}
  assert len(inside) == 1350 and bad

  result = backfill.run([
      '--bootstrap_servers', broker.bootstrap_servers,
      *[f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
        if k != 'bootstrap.servers'],
      '--input_topic', topic, '--start_time', iso(lo), '--end_time', iso(hi),
      '--model_dir', model_root, '--window_size_s', '5',
      '--output_topic', out, '--dead_letter_topic', dlq,
      '--progress_interval_s', '1'])
  assert str(result.state) == 'DONE'
  assert result.summary.records_read == len(inside)

  rows = [orjson.loads(m.value()) for m in read_topic(broker, out, len(good))]
  assert sorted(r['event_id'] for r in rows) == sorted(good)
  expected = mf.expected_scores(susy.generate(N, seed=3).features)
  for r in rows:
    i = int(r['event_id'][1:])
    assert abs(r['score'] - float(expected[i])) <= 1e-6
    assert r['model_version'] == 4 and r['key'] == susy.DEFAULT_KEYS[i % 4]
    assert r['window_start'] <= r['event_time'] < r['window_end']
  letters = read_topic(broker, dlq, len(bad))
  assert len(letters) == len(bad)
  assert {m.value() for m in letters} == {e.value for e in bad.values()}
  for m in letters:
    headers = dict(m.headers())
    partition = susy.DEFAULT_KEYS.index(m.key().decode())  # the record key
    assert headers['dlq.source'] == f'kafka:{topic}/{partition}'.encode()
    assert headers['dlq.reason']
