"""Real-world data cannot stop the job or vanish (issue 16's findings).

The whole job (score_stream on the local engine, real broker, real
SavedModel) on the turbine domain (tests/turbine_fixtures.py), not the
demo's, fed what real producers send: oversized records, skewed clocks,
out-of-order partitions, records without a valid time among events that
lag their source, empty and binary payloads, null keys, duplicates,
tombstones, ancient and future times. Every test checks that counts
balance: each record read is scored or dead-lettered, in every sink.
"""

import collections
import glob
import hashlib
import json
import os
import random
import threading
import time

import orjson
import pytest
from confluent_kafka import Producer

import turbine_fixtures as tf_
from beam_jobs import replay as replay_lib
from beam_jobs import score_stream
from kafka_helpers import read_topic
from transforms import dead_letters as dl
from transforms.kafka import admin
from transforms.sinks import read_row_file

pytestmark = pytest.mark.it


@pytest.fixture(scope='module')
def turbine(tmp_path_factory):
  root = tmp_path_factory.mktemp('turbine')
  model_root = str(root / 'models')
  tf_.write_model(model_root, version=1)
  return {'model_root': model_root, 'schema': tf_.write_schema(str(root)),
          'root': root}


def _topics(make_topic, partitions=4):
  return {'in': make_topic(partitions), 'out': make_topic(2, suffix='-out'),
          'dlq': make_topic(1, suffix='-dlq')}


def _args(broker, topics, turbine, *, group, schema=None, extra=()):
  args = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'], '--consumer_group', group,
          '--start', 'earliest', '--schema', schema or turbine['schema'],
          '--model_dir', turbine['model_root'], '--idle_timeout_s', '1']
  args += [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
           if k != 'bootstrap.servers']
  return args + list(extra)


def _producer(broker, **extra):
  return Producer(broker.client_config(**{'linger.ms': 5, **extra}))


def _send(producer, topic, value, *, key=None, partition=None, headers=None,
          timestamp_ms=None):
  kwargs = {}
  if partition is not None:
    kwargs['partition'] = partition
  if timestamp_ms is not None:
    kwargs['timestamp'] = timestamp_ms
  while True:
    try:
      producer.produce(topic, value=value, key=key, headers=headers, **kwargs)
      return
    except BufferError:
      producer.poll(0.05)


def _count(broker, topic):
  return sum(admin.end_offsets(broker.client_config(), topic).values())


def _wait_for(predicate, timeout_s=120, what='condition'):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if predicate():
      return
    time.sleep(0.5)
  raise TimeoutError(f'{what} not reached in {timeout_s}s')


def _reasons(dead_messages):
  return collections.Counter(dict(m.headers())['dlq.reason'].decode()
                             for m in dead_messages)


def _run_until(broker, topics, args, n_out, n_dead, *, settle_s=2.0):
  """Runs the job unbounded until ``n_out`` predictions and ``n_dead``
  dead letters are out (then ``settle_s`` more), then drains it."""
  result = score_stream.run(args, block=False)
  try:
    _wait_for(lambda: _count(broker, topics['out']) >= n_out and
              _count(broker, topics['dlq']) >= n_dead, what='the outputs')
    time.sleep(settle_s)
  finally:
    result.stop_reading()
    result.wait_until_finish()
  return result


# --- Finding 1: one oversized record stopped the job for good ----------------


def test_an_oversized_record_is_dead_lettered_cut_to_fit_and_replayable(
    broker, make_topic, turbine):
  # The dead-letter topic takes records of up to 600 kB: the dead letter of
  # a 1 MB record must be cut to fit (a topic with the broker's default
  # limit, 1048588, takes it whole: the producer is sized from the topic).
  topics = dict(_topics(make_topic), dlq=make_topic(
      1, suffix='-dlq-small', config={'max.message.bytes': '600000'}))
  now = time.time()
  docs = [tf_.reading(i, now + i * 0.01, f't{i % 3}') for i in range(200)]
  producer = _producer(broker, **{'message.max.bytes': 2_000_000})
  for d in docs:
    _send(producer, topics['in'], tf_.encode(d), key=d['reading_id'].encode())
  big = b'{"reading_id": "huge", "junk": "' + b'x' * 1_000_066 + b'"}'
  assert len(big) == 1_000_100
  _send(producer, topics['in'], big, key=b'huge', partition=1,
        headers=[('origin', b'sensor-gw-7')],
        timestamp_ms=int(now * 1000))
  assert producer.flush(30) == 0
  result = score_stream.run(_args(broker, topics, turbine, group='g-big',
                                  extra=['--max_records', '201']))
  assert str(result.state) == 'DONE'
  scored = read_topic(broker, topics['out'], 200)
  (dead,) = read_topic(broker, topics['dlq'], 1)
  assert len({m.key() for m in scored}) == 200
  headers = dict(dead.headers())
  assert headers['dlq.reason'] == b'too_large'
  assert headers[dl.TRUNCATED_HEADER] == b'true'
  assert headers[dl.ORIGINAL_SIZE_HEADER] == b'1000100'
  assert headers[dl.SHA256_HEADER] == hashlib.sha256(big).hexdigest().encode()
  assert headers['origin'] == b'sensor-gw-7'   # the original header
  assert dead.key() == b'huge' and big.startswith(dead.value())
  assert len(dead.value()) < 600_000
  config = broker.client_config()
  assert admin.committed_offsets(config, 'g-big', topics['in']) == (
      admin.end_offsets(config, topics['in']))
  # The whole record is fetched again from its source coordinates.
  target = make_topic(1, suffix='-replayed')
  code = replay_lib.main(['--bootstrap_servers', broker.bootstrap_servers,
                          '--from_topic', topics['dlq'], '--to_topic', target,
                          '--reason', 'too_large'] +
                         [f'--kafka_config={k}={v}' for k, v in
                          config.items() if k != 'bootstrap.servers'] +
                         ['--kafka_config=message.max.bytes=2000000'])
  assert code == 0
  (again,) = read_topic(broker, target, 1)
  assert (again.key(), again.value(), again.headers()) == (
      b'huge', big, [('origin', b'sensor-gw-7')])
  print(f'\noversized: 200 scored, 1 dead letter of {len(dead.value())} bytes '
        f'(original 1000100, sha256 kept), offsets committed; replay '
        f'refetched the whole record')


# --- Finding 2: a skewed producer clock wiped out the window -----------------


def test_future_stamped_events_cannot_make_normal_traffic_late(
    broker, make_topic, turbine):
  topics = _topics(make_topic)
  producer = _producer(broker)
  now = time.time()
  skewed = []
  for p in range(4):
    for ahead, tag in ((20 * 60, 'far'), (4 * 60, 'near')):
      d = tf_.reading(9000 + p * 10 + len(skewed), now + ahead, f't{p}')
      d['reading_id'] = f'{tag}-{p}'
      skewed.append(d)
      _send(producer, topics['in'], tf_.encode(d), partition=p,
            key=d['reading_id'].encode())
  producer.flush(30)
  normal = []
  t0 = time.time()
  for i in range(400):  # 4 s of normal traffic after the skewed ones
    d = tf_.reading(i, t0 + i * 0.01, f't{i % 4}')
    normal.append(d)
    _send(producer, topics['in'], tf_.encode(d), partition=i % 4,
          key=d['reading_id'].encode())
    if i % 50 == 0:
      producer.flush(5)
      time.sleep(0.5)
  assert producer.flush(30) == 0
  _run_until(broker, topics, _args(
      broker, topics, turbine, group='g-skew',
      extra=['--window_size_s', '2', '--max_delay_s', '0',
             '--allowed_lateness_s', '0']), len(normal) + 4, 4)
  scored = {orjson.loads(m.value())['event_id']
            for m in read_topic(broker, topics['out'], len(normal) + 4)}
  dead = read_topic(broker, topics['dlq'], 4)
  assert {d['reading_id'] for d in normal} <= scored, 'normal events lost'
  assert {f'near-{p}' for p in range(4)} <= scored
  assert {m.key().decode() for m in dead} == {f'far-{p}' for p in range(4)}
  assert _reasons(dead) == {'time_in_future': 4}
  print(f'\nskewed clocks: {len(normal)} normal events all scored; 4 events '
        f'4 min ahead scored; 4 events 20 min ahead dead-lettered '
        f'(time_in_future)')


# --- Finding 3: ordinary out-of-orderness was dead-lettered by default --------


def test_a_few_seconds_of_out_of_order_traffic_is_scored_with_defaults(
    broker, make_topic, turbine):
  """Four producers whose events reach Kafka up to 3 s out of order, at
  window ends every 2 s: with the default --max_delay_s and
  --allowed_lateness_s none is dead-lettered."""
  topics = _topics(make_topic)
  rng = random.Random(3)
  producer = _producer(broker)
  group = 'g-disorder'
  result = score_stream.run(_args(broker, topics, turbine, group=group,
                                  extra=['--window_size_s', '2']),
                            block=False)
  sent = []
  try:
    t0 = time.time()
    for i in range(1200):  # 300 events/s for 4 s
      while time.time() < t0 + i / 300:
        time.sleep(0.002)
      # Each partition's producer lags by its own 0-3 s.
      stamp = time.time() - rng.uniform(0, 3.0)
      d = tf_.reading(i, stamp, f't{i % 5}')
      sent.append(d)
      _send(producer, topics['in'], tf_.encode(d), partition=i % 4,
            key=d['reading_id'].encode())
      producer.poll(0)
    assert producer.flush(30) == 0
    _wait_for(lambda: _count(broker, topics['out']) +
              _count(broker, topics['dlq']) >= len(sent), what='outputs')
  finally:
    result.stop_reading()
    result.wait_until_finish()
  dead = read_topic(broker, topics['dlq'], 0, quiet_s=0.5)
  scored = read_topic(broker, topics['out'], len(sent))
  assert not dead, _reasons(dead)
  assert len({m.key() for m in scored}) == len(sent)
  late = sum(orjson.loads(m.value())['late'] for m in scored)
  print(f'\nout of order by up to 3 s, defaults: {len(sent)} scored '
        f'({late} flagged late), 0 dead letters')


# --- Finding 4: malformed records moved the watermark --------------------------


def test_records_without_a_valid_time_do_not_move_the_watermark(
    broker, make_topic, turbine):
  """Events stamped at their source 30 s before they reach Kafka, with 10%
  of records that carry no valid time (their Kafka timestamp is "now") on
  every partition, arriving while the job runs: no valid event becomes too
  late. (Before, 322 of 360 valid events were too late.)"""
  topics = _topics(make_topic)
  producer = _producer(broker)
  valid, bad = [], 0
  result = score_stream.run(_args(
      broker, topics, turbine, group='g-lag',
      extra=['--window_size_s', '10', '--max_delay_s', '0',
             '--allowed_lateness_s', '0']), block=False)
  try:
    t0 = time.time()
    for i in range(400):  # 40 events/s for 10 s
      while time.time() < t0 + i / 40:
        time.sleep(0.002)
      if i % 10 == 7:
        # Spread over every partition: each moves its partition's estimate.
        _send(producer, topics['in'],
              b'{"reading_id": "bad-%d", "ts_ms": "?"}' % i,
              partition=(i // 10) % 4)
        bad += 1
      else:
        d = tf_.reading(i, time.time() - 30, f't{i % 4}')
        valid.append(d)
        _send(producer, topics['in'], tf_.encode(d), partition=i % 4,
              key=d['reading_id'].encode())
      producer.poll(0)
    assert producer.flush(30) == 0
    _wait_for(lambda: _count(broker, topics['out']) +
              _count(broker, topics['dlq']) >= 400, what='outputs')
  finally:
    result.stop_reading()
    result.wait_until_finish()
  dead = read_topic(broker, topics['dlq'], bad)
  scored = read_topic(broker, topics['out'], len(valid))
  assert _reasons(dead) == {'missing_field': bad}
  assert len({m.key() for m in scored}) == len(valid)
  print(f'\nlagging source + {bad} time-less records: {len(valid)} valid '
        f'events all scored, {bad} dead letters (missing_field), 0 too late')


# --- Every bad kind at once, every sink ----------------------------------------


def _file_rows(path):
  return [r for f in sorted(glob.glob(os.path.join(path, '*.jsonl')))
          for r in read_row_file(f, 'jsonl')]


def test_every_bad_kind_at_once_balances_in_every_sink(broker, make_topic,
                                                       turbine, tmp_path):
  topics = _topics(make_topic)
  producer = _producer(broker, **{'message.max.bytes': 2_000_000})
  now = time.time()
  good = []
  records = []   # (value, key, partition, headers, timestamp_ms)
  for i in range(300):
    d = tf_.reading(i, now - 5 + i * 0.01, f't{i % 6}')
    good.append(d)
    key = None if i % 10 == 0 else d['reading_id'].encode()  # null keys
    headers = [('h', None), ('bin', b'\x00\xff')] if i % 7 == 0 else None
    records.append((tf_.encode(d), key, (i * 7) % 4, headers, None))
  # Duplicates of valid events (scored each time: at-least-once input).
  dup = [records[5], records[6]]
  records += dup
  bad = {
      'too_large': b'{"reading_id": "x", "pad": "' + b'y' * 1_000_100 + b'"}',
      'empty_value': b'',
      'malformed': b'\xff\xfe\xfd binary garbage',
      'not_an_object': b'[1, 2, 3]',
      'missing_field': tf_.encode({'reading_id': 'm', 'ts_ms': int(now * 1000),
                                   'turbine': 't1'}),
      'extra_field': tf_.encode(tf_.reading(9001, now, 't1', firmware='2.1')),
      'wrong_type': tf_.encode(tf_.reading(9002, now, 't1', rotor_rpm='fast')),
      'time_in_future': tf_.encode(tf_.reading(9003, now + 3600, 't1')),
      'time_out_of_range': tf_.encode(tf_.reading(9004, 100.0, 't1')),
      'non_finite': tf_.encode(tf_.reading(9005, now, 't1', power_kw=1e300)),
  }
  for reason, value in bad.items():
    records.append((value, reason.encode(), 2, [('why', reason.encode())],
                    None))
  records.append((None, b'tombstone', 3, None, None))  # a tombstone
  for value, key, partition, headers, ts in records:
    _send(producer, topics['in'], value, key=key, partition=partition,
          headers=headers, timestamp_ms=ts)
  assert producer.flush(30) == 0
  n_good = len(good) + len(dup)
  n_bad = len(bad) + 1
  out_path, dl_path = str(tmp_path / 'out'), str(tmp_path / 'dead')
  result = score_stream.run(_args(
      broker, topics, turbine, group='g-hostile',
      extra=['--output_path', out_path, '--dead_letter_path', dl_path,
             '--dead_letter_flush_s', '2', '--window_size_s', '2',
             '--max_records', str(len(records))]))
  assert str(result.state) == 'DONE'
  kafka_rows = [orjson.loads(m.value()) for m in
                read_topic(broker, topics['out'], n_good)]
  file_rows = _file_rows(out_path)
  dead_topic = read_topic(broker, topics['dlq'], n_bad)
  dead_files = [dl.DeadLetter.from_dict(r) for r in _file_rows(dl_path)]
  # Counts balance, per sink.
  assert len(kafka_rows) == len(file_rows) == n_good
  assert len(dead_topic) == len(dead_files) == n_bad
  assert len(kafka_rows) + len(dead_topic) == len(records)
  assert sorted(r['event_id'] for r in kafka_rows) == sorted(
      r['event_id'] for r in file_rows)
  for r in kafka_rows:
    want = tf_.expected_score(good[int(r['event_id'][1:])])
    assert abs(r['score'] - want) <= 1e-5
  expected_reasons = collections.Counter(bad.keys())
  expected_reasons['empty_value'] += 1  # the tombstone
  assert _reasons(dead_topic) == expected_reasons
  assert collections.Counter(d.reason for d in dead_files) == expected_reasons
  # Dead letters keep the whole record: key, headers, value, timestamp.
  by_key = {d.record_key: d for d in dead_files}
  for reason, value in bad.items():
    d = by_key[reason.encode()]
    assert d.payload == value and d.record_headers == (
        ('why', reason.encode()),)
    assert d.record_timestamp_ms is not None
  assert by_key[b'tombstone'].payload is None
  print(f'\nhostile mix: {len(records)} records -> kafka {len(kafka_rows)}, '
        f'files {len(file_rows)} (same ids), dead letters topic '
        f'{len(dead_topic)} = files {len(dead_files)} '
        f'{dict(expected_reasons)}')


# --- Replay: malformed -> fixed -> replayed -> scored once ---------------------


def test_dead_letters_replayed_after_a_schema_fix_are_scored_once(
    broker, make_topic, turbine, tmp_path):
  topics = _topics(make_topic)
  producer = _producer(broker)
  now = time.time()
  plain = [tf_.reading(i, now + i * 0.01, 't1') for i in range(100)]
  # A new firmware adds a field the schema rejects (extra_field).
  newer = [tf_.reading(100 + i, now + 1 + i * 0.01, 't2', firmware='2.1')
           for i in range(40)]
  for d in plain + newer:
    _send(producer, topics['in'], tf_.encode(d), key=d['reading_id'].encode(),
          headers=[('fw', d.get('firmware', '1.0').encode())])
  assert producer.flush(30) == 0
  group = 'g-replay'
  score_stream.run(_args(broker, topics, turbine, group=group,
                         extra=['--max_records', '140']))
  dead = read_topic(broker, topics['dlq'], 40)
  assert _reasons(dead) == {'extra_field': 40}
  # The fix: the schema accepts unknown fields from now on.
  fixed = dict(tf_.SCHEMA, extra_fields='ignore')
  fixed_path = str(tmp_path / 'turbine-v2.json')
  with open(fixed_path, 'w', encoding='utf-8') as f:
    json.dump(fixed, f)
  code = replay_lib.main(
      ['--bootstrap_servers', broker.bootstrap_servers, '--from_topic',
       topics['dlq'], '--to_topic', topics['in'], '--reason', 'extra_field'] +
      [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
       if k != 'bootstrap.servers'])
  assert code == 0
  # The job resumes from its committed offsets with the fixed schema.
  score_stream.run(_args(broker, topics, turbine, group=group,
                         schema=fixed_path,
                         extra=['--start', 'committed', '--max_records',
                                '40']))
  scored = collections.Counter(
      orjson.loads(m.value())['event_id']
      for m in read_topic(broker, topics['out'], 140))
  assert set(scored) == {d['reading_id'] for d in plain + newer}
  assert max(scored.values()) == 1, 'a replayed event was scored twice'
  # The replayed records are the originals: key, value, headers, timestamp.
  copies = collections.defaultdict(list)
  for m in read_topic(broker, topics['in'], 180):
    copies[m.key()].append((m.value(), m.headers(), m.timestamp()[1]))
  for d in newer:
    original, again = copies[d['reading_id'].encode()]
    assert original == again
  print('\nreplay: 40 dead letters (extra_field) -> schema fixed -> '
        'replayed to the input topic -> 40 scored once; 140 predictions, '
        'no duplicates')
