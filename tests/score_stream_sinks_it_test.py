"""score_stream with every sink at once: Kafka, files and BigQuery agree.

Real broker, real SavedModel, the BigQuery emulator; on the turbine domain
(tests/turbine_fixtures.py), not the demo's. Each test compares the sinks
row for row with each other and with a numpy computation of the model, and
checks that counts balance: every record read is scored in every sink or
dead-lettered, never in one sink and missing from another.
"""

import collections
import glob
import math
import os
import threading
import time

import pytest

import turbine_fixtures as tf_
from beam_jobs import score_stream
from kafka_helpers import produce, read_topic
from transforms.kafka import admin
from transforms.sinks import read_row_file

pytestmark = [pytest.mark.it, pytest.mark.gcp]

WINDOW_S = 2


@pytest.fixture(scope='module')
def turbine(tmp_path_factory):
  root = tmp_path_factory.mktemp('turbine')
  model_root = str(root / 'models')
  tf_.write_model(model_root, version=1)
  return {'model_root': model_root, 'schema': tf_.write_schema(str(root))}


def _topics(make_topic):
  return {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
          'dlq': make_topic(1, suffix='-dlq')}


def _args(broker, topics, turbine, *, group, out_path=None, dl_path=None,
          bq=None, extra=()):
  args = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'], '--consumer_group', group,
          '--start', 'earliest', '--schema', turbine['schema'],
          '--model_dir', turbine['model_root'],
          '--window_size_s', str(WINDOW_S), '--idle_timeout_s', '1',
          '--max_delay_s', '0', '--allowed_lateness_s', '0']
  if out_path:
    args += ['--output_path', out_path]
  if dl_path:
    args += ['--dead_letter_path', dl_path, '--dead_letter_flush_s', '2']
  if bq is not None:
    emulator, table = bq
    args += ['--bq_table', table, '--bq_endpoint', emulator.endpoint,
             '--project', emulator.project]
  args += [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
           if k != 'bootstrap.servers']
  return args + list(extra)


def _records(docs, *, start_partition=0):
  """(partition, key, value, headers, timestamp_ms) tuples; readings are
  spread over the 4 partitions by reading number."""
  out = []
  for doc in docs:
    value = doc if isinstance(doc, bytes) else tf_.encode(doc)
    rid = doc.get('reading_id', 'x') if isinstance(doc, dict) else 'x'
    n = int(rid[1:]) if isinstance(rid, str) and rid[1:].isdigit() else 0
    out.append(((n + start_partition) % 4, rid.encode() if isinstance(
        rid, str) else None, value, None, None))
  return out


def _bad_records():
  """One of each kind of bad record the parser must dead-letter."""
  now = time.time()
  return [
      b'{"reading_id": "bad-json"',                             # malformed
      b'',                                                      # empty
      b'\xff\xfe\x00binary',                                    # binary
      tf_.encode({'reading_id': 'bad-missing', 'ts_ms': 1}),    # missing
      tf_.encode(tf_.reading(9001, now, 't1', power_kw='lots')),  # type
      tf_.encode(tf_.reading(9002, now + 3600, 't1')),          # future
      tf_.encode(tf_.reading(9003, 0.5, 't1')),                 # ancient
      tf_.encode(tf_.reading(9004, now, '')),                   # empty key
  ]


def _file_rows(path):
  rows = []
  for f in sorted(glob.glob(os.path.join(path, '*.jsonl'))):
    rows.extend(read_row_file(f, 'jsonl'))
  return rows


def _same_value(a, b):
  if isinstance(a, float) or isinstance(b, float):
    if a is None or b is None:
      return a is b
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
  return a == b


def _assert_sinks_agree(sinks: dict, expected_ids: set) -> None:
  """Every sink holds exactly one row per expected id, and the rows are the
  same in every sink (every column), with the model's numpy score."""
  by_sink = {}
  for name, rows in sinks.items():
    ids = collections.Counter(r['event_id'] for r in rows)
    assert set(ids) == expected_ids, (
        f'{name}: {len(set(ids) - expected_ids)} unexpected, '
        f'{len(expected_ids - set(ids))} missing')
    assert max(ids.values()) == 1, f'{name}: an id written twice'
    by_sink[name] = {r['event_id']: r for r in rows}
  reference_name, reference = next(iter(by_sink.items()))
  for name, rows in by_sink.items():
    for eid, row in rows.items():
      other = reference[eid]
      for column, value in other.items():
        assert _same_value(row.get(column), value), (
            f'{eid} {column}: {name} {row.get(column)!r} vs '
            f'{reference_name} {value!r}')


def _check_scores(rows, docs_by_id):
  for r in rows:
    want = tf_.expected_score(docs_by_id[r['event_id']])
    assert abs(r['score'] - want) <= 1e-5, r['event_id']


def _collect(broker, topics, n_out, n_dead, *, out_path=None, bq=None):
  sinks = {'kafka': [__import__('orjson').loads(m.value()) for m in
                     read_topic(broker, topics['out'], n_out)]}
  if out_path:
    sinks['files'] = _file_rows(out_path)
  if bq is not None:
    emulator, table = bq
    sinks['bigquery'] = emulator.query_rows(table)
  dead = read_topic(broker, topics['dlq'], n_dead)
  return sinks, dead


def _wait_for(predicate, timeout_s=90, what='condition'):
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if predicate():
      return
    time.sleep(0.5)
  raise TimeoutError(f'{what} not reached in {timeout_s}s')


def _count(broker, topic):
  return sum(admin.end_offsets(broker.client_config(), topic).values())


def test_bounded_and_unbounded_runs_write_every_sink_alike(
    broker, make_topic, turbine, tmp_path, bq_emulator):
  """Issue 24: a bounded run (--max_records) writes the same windowed files
  and BigQuery rows as an unbounded run over the same events."""
  topics = _topics(make_topic)
  now = time.time()
  docs = [tf_.reading(i, now - 30 + i * 0.1, f't{i % 5}') for i in range(300)]
  bad = _bad_records()
  produce(broker, topics['in'], _records(docs + bad))
  total = len(docs) + len(bad)
  valid = {d['reading_id'] for d in docs}
  by_id = {d['reading_id']: d for d in docs}

  runs = {}
  for mode in ('bounded', 'unbounded'):
    run_topics = dict(topics, out=make_topic(2, suffix=f'-{mode}-out'),
                      dlq=make_topic(1, suffix=f'-{mode}-dlq'))
    out_path = str(tmp_path / mode / 'predictions')
    bq = (bq_emulator, bq_emulator.table(mode))
    args = _args(broker, run_topics, turbine, group=f'g-{mode}',
                 out_path=out_path, dl_path=str(tmp_path / mode / 'dead'),
                 bq=bq)
    if mode == 'bounded':
      result = score_stream.run(args + ['--max_records', str(total)])
      # The end-of-run summary counts rows per sink.
      print('\n' + result.summary.format())
      assert result.summary.sink_rows == {
          'kafka': len(docs), 'files': len(docs), 'bigquery': len(docs),
          'dead-letter topic': len(bad), 'dead-letter files': len(bad)}
      assert result.summary.balanced
    else:
      result = score_stream.run(args, block=False)
      _wait_for(lambda t=run_topics: _count(broker, t['out']) >= len(docs)
                and _count(broker, t['dlq']) >= len(bad), what='all outputs')
      result.stop_reading()
      result.wait_until_finish()
    assert str(result.state) == 'DONE'
    sinks, dead = _collect(broker, run_topics, len(docs), len(bad),
                           out_path=out_path, bq=bq)
    _assert_sinks_agree(sinks, valid)
    _check_scores(sinks['kafka'], by_id)
    assert len(dead) == len(bad)
    assert len(sinks['files']) + len(dead) == total  # counts balance
    assert not os.path.exists(out_path + '.tmp'), 'temporary files left'
    runs[mode] = {r['event_id']: r['score'] for r in sinks['kafka']}
    print(f'\n{mode}: {total} records -> kafka {len(sinks["kafka"])}, files '
          f'{len(sinks["files"])}, bigquery {len(sinks["bigquery"])} rows '
          f'(row for row equal), {len(dead)} dead letters')
  assert runs['bounded'] == runs['unbounded']


def test_one_lateness_verdict_for_every_sink(broker, make_topic, turbine,
                                             tmp_path, bq_emulator):
  """Issue 16, finding 5: an event far behind the watermark, for a key the
  job knows and for a key it has never seen, is dead-lettered (too_late)
  and in no sink; every other event is in every sink."""
  topics = _topics(make_topic)
  out_path = str(tmp_path / 'predictions')
  bq = (bq_emulator, bq_emulator.table('late'))
  result = score_stream.run(_args(broker, topics, turbine, group='g-late',
                                  out_path=out_path, bq=bq), block=False)
  try:
    now = time.time()
    first = [tf_.reading(i, now + i * 0.01, f't{i % 2}') for i in range(40)]
    produce(broker, topics['in'], _records(first))
    _wait_for(lambda: _count(broker, topics['out']) >= len(first),
              what='first predictions')
    time.sleep(3)  # idle partitions: the watermark reaches the clock
    now = time.time()
    old_known = [tf_.reading(100 + i, now - 120, 't0') for i in range(5)]
    old_new = [tf_.reading(200 + i, now - 120, 'never-seen')
               for i in range(5)]
    current = [tf_.reading(300 + i, now + i * 0.01, t)
               for i, t in enumerate(['t0', 'never-seen'] * 5)]
    produce(broker, topics['in'], _records(old_known + old_new + current))
    on_time = first + current
    too_late = old_known + old_new
    _wait_for(lambda: _count(broker, topics['out']) >= len(on_time) and
              _count(broker, topics['dlq']) >= len(too_late),
              what='second predictions and dead letters')
    time.sleep(3)  # the windows of the current events close
  finally:
    result.stop_reading()
    result.wait_until_finish()
  sinks, dead = _collect(broker, topics, len(on_time), len(too_late),
                         out_path=out_path, bq=bq)
  _assert_sinks_agree(sinks, {d['reading_id'] for d in on_time})
  assert {m.key().decode() for m in dead} == {
      d['reading_id'] for d in too_late}
  assert {dict(m.headers())['dlq.reason'] for m in dead} == {b'too_late'}
  print(f'\nlateness: {len(on_time)} on time in every sink (kafka '
        f'{len(sinks["kafka"])}, files {len(sinks["files"])}, bigquery '
        f'{len(sinks["bigquery"])}), {len(dead)} too late dead-lettered '
        f'(known key and new key)')


class _PacedProducer(threading.Thread):
  """Turbine readings at ``rate``/s for ``seconds``; ids r<start>..."""

  def __init__(self, broker, topic, rate, seconds, start=0):
    super().__init__(daemon=True)
    self._broker, self._topic = broker, topic
    self._rate, self._n, self._start = rate, int(rate * seconds), start
    self.docs = []

  def run(self):
    from confluent_kafka import Producer
    producer = Producer(self._broker.client_config(**{'linger.ms': 5}))
    t0 = time.monotonic()
    for k in range(self._n):
      ahead = k / self._rate - (time.monotonic() - t0)
      if ahead > 0:
        time.sleep(ahead)
      i = self._start + k
      doc = tf_.reading(i, time.time(), f't{i % 7}')
      self.docs.append(doc)
      producer.produce(self._topic, key=doc['reading_id'].encode(),
                       value=tf_.encode(doc), partition=i % 4)
      producer.poll(0)
    assert producer.flush(30) == 0


def _lag(broker, group, topic):
  config = broker.client_config()
  ends = admin.end_offsets(config, topic)
  committed = admin.committed_offsets(config, group, topic)
  return sum(e - (committed.get(p) or 0) for p, e in ends.items())


@pytest.mark.slow
@pytest.mark.parametrize('sinks', ['files', 'bigquery', 'all'])
def test_offsets_commit_as_windowed_sinks_write(broker, make_topic, turbine,
                                                tmp_path, bq_emulator, sinks):
  """Issue 21, finding 1: with file and BigQuery sinks, committed offsets
  keep up with traffic (bounded lag), instead of staying at 0 while a
  window is always open."""
  rate, seconds = 300, 16
  topics = _topics(make_topic)
  group = f'g-commit-{sinks}'
  kwargs = {}
  if sinks in ('files', 'all'):
    kwargs['out_path'] = str(tmp_path / 'predictions')
  if sinks == 'all':
    kwargs['dl_path'] = str(tmp_path / 'dead')
  if sinks in ('bigquery', 'all'):
    kwargs['bq'] = (bq_emulator, bq_emulator.table(f'commit_{sinks}'))
  result = score_stream.run(_args(broker, topics, turbine, group=group,
                                  **kwargs), block=False)
  producer = _PacedProducer(broker, topics['in'], rate, seconds)
  config = broker.client_config()
  samples = []
  try:
    producer.start()
    t0 = time.monotonic()
    while producer.is_alive():
      time.sleep(1.0)
      committed = sum(v or 0 for v in admin.committed_offsets(
          config, group, topics['in']).values())
      samples.append((round(time.monotonic() - t0, 1),
                      _count(broker, topics['in']) - committed,
                      _count(broker, topics['out']) - committed))
    producer.join()
    _wait_for(lambda: _count(broker, topics['out']) >= len(producer.docs),
              what='every prediction')
  finally:
    result.stop_reading()
    result.wait_until_finish()
  print(f'\n{sinks}: at {rate} events/s, (s, records not committed, '
        f'records scored but not committed): {samples}')
  # What a crash would replay although it was already written: windows of
  # 2 s (dead letters: 2 s), commits every 1 s, so about two windows plus
  # the commit interval and a read cycle. (The first column also counts
  # what the job has not read yet: it grows on a machine too busy for it.)
  bound = rate * (2 * WINDOW_S + 1 + 2)
  steady = [written for t, _, written in samples if t >= 6]
  assert steady and max(steady) <= bound, (bound, samples)
  assert len({behind for _, behind, _ in samples}) > 3  # commits move
  assert _lag(broker, group, topics['in']) == 0
  n = len(producer.docs)
  kafka_rows = read_topic(broker, topics['out'], n)
  assert len({m.key() for m in kafka_rows}) == n


@pytest.mark.slow
def test_sigkill_replays_only_what_no_sink_had_made_durable(
    broker, make_topic, turbine, tmp_path, bq_emulator):
  """Issue 21, finding 1: the job (a real process) is killed with SIGKILL
  while files, BigQuery and Kafka are written; restarted with the same
  group it loses nothing in any sink, and what it writes twice is at most
  what was read but not yet committed when it died."""
  from beam_jobs import fault_harness as rel  # pylint: disable=import-outside-toplevel
  rate, seconds = 300, 24
  topics = _topics(make_topic)
  group = 'g-sigkill'
  out_path = str(tmp_path / 'predictions')
  bq = (bq_emulator, bq_emulator.table('sigkill'))
  args = _args(broker, topics, turbine, group=group, out_path=out_path,
               dl_path=str(tmp_path / 'dead'), bq=bq)
  args[args.index('--start') + 1] = 'committed'
  job = rel.JobProcess(args, str(tmp_path / 'job.log'))
  producer = _PacedProducer(broker, topics['in'], rate, seconds)
  try:
    job.start()
    job.wait_until_reading()
    producer.start()
    config = broker.client_config()
    _wait_for(lambda: sum(v or 0 for v in admin.committed_offsets(
        config, group, topics['in']).values()) >= rate * 4,
              what='offsets committed before the kill')
    time.sleep(1.7)
    uncommitted = _lag(broker, group, topics['in'])
    job.kill()
    killed_at = sum(admin.end_offsets(config, topics['in']).values())
    job.start()
    producer.join()
    _wait_for(lambda: _lag(broker, group, topics['in']) == 0, timeout_s=120,
              what='the restarted job caught up')
    time.sleep(5)  # the last windows close and are written
    assert job.stop_gracefully() == 0
  finally:
    job.kill_if_alive()
  ids = {d['reading_id'] for d in producer.docs}
  sinks, _ = _collect(broker, topics, len(ids), 0, out_path=out_path, bq=bq)
  report = []
  for name, rows in sinks.items():
    seen = collections.Counter(r['event_id'] for r in rows)
    assert ids <= set(seen), f'{name} lost {len(ids - set(seen))} rows'
    doubled = sum(c - 1 for c in seen.values())
    # Re-read after the restart: the records not committed at the kill
    # (plus those read between the lag sample and the kill).
    assert doubled <= uncommitted + rate * 2, (name, doubled, uncommitted)
    report.append(f'{name} {len(rows)} rows ({doubled} written twice)')
  print(f'\nSIGKILL with {killed_at} records in, {uncommitted} not yet '
        f'committed: every sink has all {len(ids)} ids: ' + ', '.join(report))
