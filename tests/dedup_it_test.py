"""Effectively-once on a real broker: the restart seed reads the whole
horizon back or fails loudly, and a job started again over the same records
writes no prediction and no dead letter twice (turbine domain)."""

import collections
import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

import turbine_fixtures as tf_
from beam_jobs import score_stream
from beam_jobs.summary import metric_counters
from kafka_helpers import produce, read_topic
from transforms import dead_letters as dl
from transforms import dedup, dedup_seed
from transforms.kafka import admin
from transforms.seen_ids import fingerprints

pytestmark = pytest.mark.it


def _read_back(broker, topics, since_s, **kw):
  """Runs the seed into lists; returns (prediction fps, dead-letter fps,
  stats)."""
  got = {'p': [], 'd': []}
  stats = dedup_seed.read_back(
      broker.client_config(), output_topic=topics['out'],
      dead_letter_topic=topics.get('dlq'), since_s=since_s,
      predictions=lambda fps, t: got['p'].append(fps),
      dead_letters=lambda fps, t: got['d'].append(fps), **kw)
  cat = lambda parts: (np.concatenate(parts) if parts else
                       np.empty(0, np.int64))
  return cat(got['p']), cat(got['d']), stats


def _dead_letter_record(i, *, dead_lettered_at, original_ts_ms):
  letter = dl.DeadLetter(stage=dl.PARSE, reason=dl.MALFORMED, detail='',
                         payload=f'bad {i}'.encode(), source='kafka:in/0',
                         position=i, record_key=f'k{i}'.encode(),
                         time=dead_lettered_at,
                         record_timestamp_ms=original_ts_ms)
  record = (0, letter.record_key, letter.payload, letter.kafka_headers(),
            original_ts_ms)
  return letter, record


_TANSU_END = ('its end offsets are the last batch\'s base + 1: the seed, which '
              'reads to the end offsets seen at start, misses the rest of '
              'that batch (docs/brokers.md)')


def test_the_seed_holds_the_horizon_and_nothing_older(broker, make_topic,
                                                      known_broker_bug):
  known_broker_bug('tansu', _TANSU_END)
  topics = {'out': make_topic(2, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  now = time.time()
  now_ms = int(now * 1000)
  produce(broker, topics['out'],
          [(i % 2, f'old{i}'.encode(), b'{}', None, now_ms - 3_600_000)
           for i in range(10)] +
          [(i % 2, f'new{i}'.encode(), b'{}', None, now_ms - 1000)
           for i in range(10)])
  # A dead letter keeps its original record's timestamp (here from 2001):
  # only dlq.time says when it was written.
  letters = [_dead_letter_record(i, dead_lettered_at=now - (3600 if i < 5
                                                            else 5),
                                 original_ts_ms=1_000_000_000_000)
             for i in range(10)]
  produce(broker, topics['dlq'], [r for _, r in letters])
  memory = dedup.seed(broker.client_config(),
                      dedup.DedupSettings(topics['out'], topics['dlq'], 60))
  new = fingerprints([f'new{i}' for i in range(10)])
  old = fingerprints([f'old{i}' for i in range(10)])
  assert not memory.predictions.unseen(new).any()
  assert memory.predictions.unseen(old).all()
  recent = np.array([hash(d.identity()) for d, _ in letters], dtype=np.int64)
  assert memory.dead_letters.unseen(recent).tolist() == [True] * 5 + [
      False] * 5


def test_a_seed_that_cannot_finish_in_time_fails_naming_the_flag(
    broker, make_topic, known_broker_bug):
  known_broker_bug('tansu', _TANSU_END)
  topics = {'out': make_topic(4, suffix='-out')}
  n = 20_000
  produce(broker, topics['out'], [(None, f'e{i}'.encode(), b'{"score": 0.5}',
                                   None, None) for i in range(n)])
  with pytest.raises(dedup_seed.SeedIncompleteError) as e:
    _read_back(broker, topics, time.time() - 600, timeout_s=0.001)
  assert f'of {n:,} records of {topics["out"]!r}' in str(e.value)
  assert 'Raise --dedup_seed_timeout_s' in str(e.value)
  # The derived timeout: 60 s + 1 s per 10,000 records; all are read.
  fps, _, stats = _read_back(broker, topics, time.time() - 600)
  assert stats.predictions == n and stats.timeout_s == 62.0
  assert len(np.unique(fps)) == n
  assert np.isin(fingerprints([f'e{i}' for i in range(n)]), fps).all()


def test_the_dead_letter_topic_is_read_back_only_as_far_as_the_horizon(
    broker, make_topic, known_broker_bug):
  known_broker_bug('tansu', _TANSU_END)
  topics = {'out': make_topic(1, suffix='-out'),
            'dlq': make_topic(2, suffix='-dlq')}
  now = time.time()
  n = 20_000
  # Dead-lettered over the last 2 h, in order; the last 5% within 360 s.
  letters = [_dead_letter_record(
      i, dead_lettered_at=now - 7200 * (1 - i / n), original_ts_ms=None)
             for i in range(n)]
  producer = Producer(broker.client_config(**{'linger.ms': 5}))
  for i, (_, (_, key, value, headers, _)) in enumerate(letters):
    producer.produce(topics['dlq'], partition=i % 2, key=key, value=value,
                     headers=headers)
    if i % 5000 == 0:
      producer.poll(0)
  assert producer.flush(30) == 0
  since = now - 360
  _, fps, stats = _read_back(broker, topics, since)
  # dlq.time has millisecond precision.
  within = {hash(d.identity()) for d, _ in letters
            if float(f'{d.time:.3f}') >= since}
  assert set(fps.tolist()) == within and 990 <= len(within) <= 1000
  # Backwards in growing chunks: far less than the topic.
  assert stats.dead_letters < n / 2, stats


@pytest.fixture(scope='module')
def turbine(tmp_path_factory):
  return tf_.write_domain(tmp_path_factory.mktemp('turbine'))


def _job(broker, topics, turbine, group, *extra):
  args = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'], '--consumer_group', group,
          '--start', 'earliest', '--schema', turbine['schema'],
          '--model_dir', turbine['model_root'], '--idle_timeout_s', '1',
          '--dedup_horizon_s', '600']
  args += [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
           if k != 'bootstrap.servers']
  return args + list(extra)


def test_a_job_started_again_writes_nothing_twice(broker, make_topic,
                                                  turbine):
  topics = {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  now = time.time()
  good = [tf_.reading(i, now + i * 0.01, f't{i % 3}') for i in range(300)]
  records = [(None, d['reading_id'].encode(), tf_.encode(d), None, None)
             for d in good]
  # Malformed JSON and a reading with a field the schema does not know.
  records += [(None, f'bad{i}'.encode(), b'{"reading_id": "b' + bytes(
      [48 + i % 10]), None, None) for i in range(20)]
  records += [(None, b'x1', tf_.encode(dict(good[0], reading_id='x1',
                                            firmware='2')), None, None)]
  produce(broker, topics['in'], records)
  n = len(records)
  first = score_stream.run(_job(broker, topics, turbine, 'g-first',
                                '--max_records', str(n)))
  assert first.summary.events_scored == 300
  assert first.summary.dead_letters == 21
  # The same records again from the start, as after a crash that lost
  # every commit (a new group): the seed knows what was written.
  again = score_stream.run(_job(broker, topics, turbine, 'g-again',
                                '--max_records', str(n)))
  counters = metric_counters(again)
  assert counters.get(('dedup', 'duplicates_skipped')) == 300
  assert counters.get(('dedup', 'dead_letters_skipped')) == 21
  assert again.summary.skipped == {'duplicates': 300}

  predictions = collections.Counter(
      orjson.loads(m.value())['event_id']
      for m in read_topic(broker, topics['out'], 300))
  dead = collections.Counter(
      (dict(m.headers())['dlq.source'], dict(m.headers())['dlq.position'])
      for m in read_topic(broker, topics['dlq'], 21))
  assert set(predictions) == {d['reading_id'] for d in good}
  assert max(predictions.values()) == 1, 'an event was scored twice'
  assert len(dead) == 21 and max(dead.values()) == 1, (
      'a record was dead-lettered twice')
  print(f'\ndedup: the same {n} records read twice -> {len(predictions)} '
        f'predictions and {len(dead)} dead letters, each once; second run '
        f'skipped 300 scored events and 21 written dead letters')


def test_the_job_does_not_start_when_its_seed_cannot_finish(
    broker, make_topic, turbine, capsys, monkeypatch):
  # main() installs a SIGTERM handler: keep this process's.
  monkeypatch.setattr(score_stream.signal, 'signal', lambda *a: None)
  topics = {'in': make_topic(1), 'out': make_topic(1, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  produce(broker, topics['out'], [(None, f'r{i}'.encode(), b'{}', None, None)
                                  for i in range(100)])
  code = score_stream.main(_job(broker, topics, turbine, 'g-never',
                                '--dedup_seed_timeout_s', '0.001',
                                '--max_records', '1'))
  err = capsys.readouterr().err
  assert code == 2
  assert 'error: dedup seed incomplete: read 0 of 100 records' in err
  assert '--dedup_seed_timeout_s' in err
  # Nothing was read: the group has no offsets.
  assert not any(admin.committed_offsets(broker.client_config(), 'g-never',
                                         topics['in']).values())
