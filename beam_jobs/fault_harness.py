"""Fault harness: the real scoring job as a subprocess, a steady producer,
kills and restarts of the job and the broker, and an accounting of the
outputs (every event scored or dead-lettered, nothing lost, doubles counted).

Part of the package so that the tests (tests/reliability_it_test.py,
outage_it_test.py, score_stream_sinks_it_test.py) and the benchmarks
(bench/reliability_table.py, broker_soak.py, broker_restart_loss.py) share
it without importing each other; it runs against any cluster, like them.
"""

import collections
import dataclasses
import os
import random
import signal
import subprocess
import sys
import threading
import time
from typing import Optional

import orjson
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from models import susy
from transforms.kafka import admin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Outcome:
  """What came out for what went in."""
  scenario: str
  produced: int
  malformed: int
  scored: int          # distinct event ids with a prediction
  dead_lettered: int   # distinct dead-letter keys
  lost: int            # ids on the input topic with neither
  duplicates: int      # predictions beyond one per id
  notes: str = ''
  # Dead-letter records beyond one per source record (dlq.source and
  # dlq.position: the record's coordinates on the input topic).
  dead_duplicates: int = 0
  # Produced ids the input topic does not hold (lost by the producer or the
  # broker, before the job could read them); not counted in ``lost``.
  not_on_broker: int = 0
  dead_reasons: Optional[dict] = None   # dead letters per stage/reason
  # Ids whose output was on the output topics once and then lost by the
  # broker (see OutputAuditor); not counted in ``lost``.
  outputs_lost_by_broker: int = 0
  exit_code: Optional[int] = None   # of the last, gracefully stopped run
  lag_after: Optional[int] = None   # consumer lag after it

  def row(self) -> str:
    return (f'{self.scenario:34} {self.produced:>8} {self.scored:>8} '
            f'{self.dead_lettered:>6} {self.lost:>5} {self.duplicates:>6} '
            f'{self.dead_duplicates:>6} {self.not_on_broker:>6} '
            f'{self.outputs_lost_by_broker:>5}  {self.notes}')


HEADER = (f'{"scenario":34} {"in":>8} {"scored":>8} {"dead":>6} {"lost":>5} '
          f'{"dups":>6} {"ddups":>6} {"!in":>6} {"!out":>5}  notes')


class SteadyProducer(threading.Thread):
  """Produces ``n`` SUSY-like events at ``rate``/s (ids e0..e<n-1>)."""

  def __init__(self, config: dict, topic: str, n: int, rate: float, *,
               malformed_fraction: float = 0.0, seed: int = 5):
    super().__init__(daemon=True)
    self._producer = Producer(dict(config, **{'linger.ms': 5}))
    self._topic, self._n, self._rate = topic, n, rate
    self._malformed_fraction = malformed_fraction
    self._seed = seed
    self.produced = 0
    self.malformed_ids: set[str] = set()
    self.failed = 0

  def _on_delivery(self, err, unused_msg):
    if err is not None:
      self.failed += 1

  def run(self):
    start = time.monotonic()
    events = susy.iter_encoded_events(
        self._n, seed=self._seed, start_time=time.time(), rate=self._rate,
        malformed_fraction=self._malformed_fraction)
    for event in events:
      ahead = self.produced / self._rate - (time.monotonic() - start)
      if ahead > 0.005:
        self._producer.poll(0)
        time.sleep(ahead)
      while True:
        try:
          self._producer.produce(self._topic, key=event.key, value=event.value,
                                 timestamp=event.timestamp_ms,
                                 on_delivery=self._on_delivery)
          break
        except BufferError:
          self._producer.poll(0.01)
      self.produced += 1
      if event.malformed is not None:
        self.malformed_ids.add(event.key.decode())
    self.failed += self._producer.flush(60)


class JobProcess:
  """``python -m beam_jobs.score_stream`` in a subprocess."""

  def __init__(self, args: list[str], log_path: str):
    self._args = args
    self._log_path = log_path
    self.proc: Optional[subprocess.Popen] = None

  def start(self) -> None:
    log = open(self._log_path, 'ab')  # pylint: disable=consider-using-with
    log.write(f'\n=== start {time.strftime("%X")}\n'.encode())
    log.flush()
    self.proc = subprocess.Popen(
        [sys.executable, '-m', 'beam_jobs.score_stream'] + self._args,
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        env=dict(os.environ, PYTHONUNBUFFERED='1', TF_CPP_MIN_LOG_LEVEL='2'))

  def kill(self) -> None:
    self.proc.send_signal(signal.SIGKILL)
    self.proc.wait(30)

  def stop_gracefully(self, timeout_s: float = 120) -> int:
    """SIGTERM, which the job handles as Ctrl-C: it stops reading, drains,
    commits and exits. A job that does not exit in time is killed; its exit
    code is then -SIGKILL. (Not SIGINT: a process started in the background
    of a non-interactive shell, as a long benchmark is, ignores SIGINT, and
    so does every job it starts.)"""
    self.proc.send_signal(signal.SIGTERM)
    try:
      return self.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
      self.kill()
      return self.proc.returncode

  def kill_if_alive(self) -> None:
    """Never leave a job behind (a scenario that raised)."""
    if self.alive():
      self.kill()

  def alive(self) -> bool:
    return self.proc is not None and self.proc.poll() is None

  def wait_until_reading(self, timeout_s: float = 120) -> None:
    """Until the job logs its read plan (it is up and reading)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      with open(self._log_path, 'rb') as f:
        text = f.read()
      # The read plan of the latest start is after its '=== start' line.
      if b'kafka read plan' in text[text.rfind(b'=== start'):]:
        return
      if not self.alive():
        raise RuntimeError(f'job exited with {self.proc.returncode}; see '
                           f'{self._log_path}')
      time.sleep(0.2)
    raise TimeoutError(f'job not reading after {timeout_s}s')


def job_args(bootstrap: str, topics: dict, model_dir: str, group: str,
             extra_config: dict, *extra) -> list[str]:
  args = ['--bootstrap_servers', bootstrap, '--input_topic', topics['in'],
          '--output_topic', topics['out'], '--dead_letter_topic', topics['dlq'],
          '--consumer_group', group, '--start', 'committed',
          '--model_dir', model_dir, '--window_size_s', '5',
          '--idle_timeout_s', '1']
  args += [f'--kafka_config={k}={v}' for k, v in extra_config.items()
           if k != 'bootstrap.servers']
  return args + list(extra)


def read_all(config: dict, topic: str) -> list:
  """Every record currently in ``topic`` (up to its end offsets)."""
  consumer = Consumer(dict(config, **{
      'group.id': f'audit-{topic}-{random.random()}',
      'enable.auto.commit': False, 'enable.partition.eof': True}))
  ends = admin.end_offsets(config, topic)
  pending = {p for p, end in ends.items() if end > 0}
  consumer.assign([TopicPartition(topic, p, 0) for p in pending])
  out = []
  deadline = time.monotonic() + 120
  try:
    while pending and time.monotonic() < deadline:
      for m in consumer.consume(num_messages=2000, timeout=0.5):
        if m.error() is not None:
          if m.partition() in pending and m.offset() >= ends[m.partition()]:
            pending.discard(m.partition())
          continue
        out.append(m)
        if m.offset() + 1 >= ends[m.partition()]:
          pending.discard(m.partition())
  finally:
    consumer.close()
  return out


def _dead_letter_reason(message) -> str:
  """stage/reason from a dead-letter record's headers (its value is the
  original bytes)."""
  headers = dict(message.headers() or [])
  return (f'{headers.get("dlq.stage", b"?").decode()}/'
          f'{headers.get("dlq.reason", b"?").decode()}')


def _dead_letter_source(message) -> tuple:
  """The coordinates of a dead letter's original record."""
  headers = dict(message.headers() or [])
  return headers.get('dlq.source'), headers.get('dlq.position')


class OutputAuditor(threading.Thread):
  """Reads the output and dead-letter topics while a scenario runs and
  remembers every event id it ever saw there.

  A broker that loses acknowledged writes when it restarts (noida loses
  its last ~100 ms: docs/operations.md) also loses outputs the job wrote
  and committed correctly. The audit separates those from outputs the job
  never wrote. After an out-of-range answer (the log got shorter) it
  re-reads the topics from the start; the sets absorb the repeats.
  """

  def __init__(self, config: dict, topics: dict):
    super().__init__(daemon=True)
    self._config = config
    self._topics = [topics['out'], topics['dlq']]
    self._dlq = topics['dlq']
    self.seen_out: set[str] = set()
    self.seen_dead: set[str] = set()
    self._halt = threading.Event()

  def _assign_from_start(self, consumer) -> None:
    parts = []
    for topic in self._topics:
      for p in admin.end_offsets(self._config, topic):
        parts.append(TopicPartition(topic, p, 0))
    consumer.assign(parts)

  def run(self):
    consumer = Consumer(dict(self._config, **{
        'group.id': f'audit-{random.random()}', 'enable.auto.commit': False,
        'auto.offset.reset': 'error', 'fetch.wait.max.ms': 10}))
    try:
      self._assign_from_start(consumer)
      while not self._halt.is_set():
        for m in consumer.consume(num_messages=2000, timeout=0.2):
          err = m.error()
          if err is not None:
            if err.code() == KafkaError._AUTO_OFFSET_RESET:
              self._assign_from_start(consumer)
            continue
          if m.topic() == self._dlq:
            self.seen_dead.add(m.key().decode('utf-8', 'replace'))
          else:
            self.seen_out.add(orjson.loads(m.value())['event_id'])
    finally:
      consumer.close()

  def stop(self) -> None:
    self._halt.set()
    self.join(30)


def account(scenario: str, config: dict, topics: dict, produced: int,
            malformed_ids: set, notes: str = '',
            auditor: Optional[OutputAuditor] = None) -> Outcome:
  predictions = collections.Counter(
      orjson.loads(m.value())['event_id'] for m in read_all(config,
                                                           topics['out']))
  dead_records = read_all(config, topics['dlq'])
  dead = {m.key().decode('utf-8', 'replace') for m in dead_records}
  reasons = collections.Counter(
      _dead_letter_reason(m) for m in dead_records)
  per_record = collections.Counter(_dead_letter_source(m)
                                   for m in dead_records)
  ids = {f'e{i}' for i in range(produced)}
  on_topic = {m.key().decode('utf-8', 'replace')
              for m in read_all(config, topics['in'])}
  written = set(predictions) | dead
  lost_by_broker = 0
  if auditor is not None:
    seen = auditor.seen_out | auditor.seen_dead
    lost_by_broker = len((seen - written) & ids)
    written |= seen
  lost = len((ids & on_topic) - written)
  return Outcome(scenario, produced, len(malformed_ids), len(predictions),
                 len(dead), lost,
                 sum(c - 1 for c in predictions.values() if c > 1), notes,
                 not_on_broker=len(ids - on_topic),
                 dead_duplicates=sum(c - 1 for c in per_record.values()),
                 dead_reasons=dict(reasons),
                 outputs_lost_by_broker=lost_by_broker)


def consumer_lag(config: dict, group: str, topic: str) -> int:
  ends = admin.end_offsets(config, topic)
  committed = admin.committed_offsets(config, group, topic)
  return sum(e - (committed.get(p) or 0) for p, e in ends.items())


def wait_for_zero_lag(config: dict, group: str, topic: str,
                      timeout_s: float) -> None:
  """Until ``group`` has committed everything in ``topic`` (the job has
  read, scored, written and committed it all), or the time is up."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if consumer_lag(config, group, topic) == 0:
      return
    time.sleep(1.0)


def _wait_for_zero_lag_while_alive(job: 'JobProcess', config: dict,
                                   group: str, topic: str,
                                   timeout_s: float) -> bool:
  """Like wait_for_zero_lag; False as soon as the job process has died."""
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if not job.alive():
      return False
    if consumer_lag(config, group, topic) == 0:
      return True
    time.sleep(1.0)
  return job.alive()


def crash_restart(config: dict, bootstrap: str, topics: dict, model_dir: str,
                  log_path: str, *, n: int, rate: float, kills: int,
                  seed: int, extra_args=(), scenario='crash/restart',
                  malformed_fraction: float = 0.01,
                  kill_after_reading_s: Optional[tuple] = None) -> Outcome:
  """Produces ``n`` events at ``rate``; SIGKILLs the job ``kills`` times at
  random moments, restarting it with the same group each time; then lets a
  last run catch up and stops it gracefully.

  ``kill_after_reading_s``: (low, high) seconds after the job logged its
  read plan to kill it (it is then surely mid-stream, with outputs
  written and offsets not yet committed); default: 8-14 s after start.
  """
  rng = random.Random(seed)
  group = f'g-{topics["in"]}'
  args = job_args(bootstrap, topics, model_dir, group, config, *extra_args)
  producer = SteadyProducer(config, topics['in'], n, rate,
                            malformed_fraction=malformed_fraction)
  producer.start()
  job = JobProcess(args, log_path)
  kill_times = []
  try:
    for _ in range(kills):
      job.start()
      if kill_after_reading_s is not None:
        job.wait_until_reading()
        time.sleep(rng.uniform(*kill_after_reading_s))
      else:
        # Long enough for the job to start and score a little, short
        # enough to catch it mid-stream.
        time.sleep(rng.uniform(8.0, 14.0))
      kill_times.append(time.strftime('%X'))
      job.kill()
    job.start()
    producer.join()
    job.wait_until_reading()
    wait_for_zero_lag(config, group, topics['in'], timeout_s=180)
    code = job.stop_gracefully()
  finally:
    job.kill_if_alive()
  outcome = account(scenario, config, topics, producer.produced,
                    producer.malformed_ids,
                    f'{kills} SIGKILLs at {",".join(kill_times)}')
  outcome.exit_code = code
  outcome.lag_after = consumer_lag(config, group, topics['in'])
  outcome.notes += f'; final stop exit {code}, lag {outcome.lag_after}'
  return outcome


def _diagnose(config: dict, topics: dict, produced: int, group: str) -> None:
  """Prints where the ids without output sit in the input topic."""
  outs = {orjson.loads(m.value())['event_id']
          for m in read_all(config, topics['out'])}
  dead = {m.key().decode('utf-8', 'replace')
          for m in read_all(config, topics['dlq'])}
  inputs = read_all(config, topics['in'])
  where = collections.defaultdict(list)
  for m in inputs:
    key = m.key().decode()
    if key not in outs and key not in dead:
      where[m.partition()].append(m.offset())
  seen = collections.Counter(m.key().decode() for m in inputs)
  print('input records', len(inputs), 'distinct', len(seen),
        'dup keys on input', sum(c - 1 for c in seen.values() if c > 1))
  missing = {f'e{i}' for i in range(produced)} - set(seen)
  print('not on input (sample)', sorted(missing)[:20])
  for part, offs in sorted(where.items()):
    print(f'partition {part}: {len(offs)} without output, offsets '
          f'{offs[:5]}..{offs[-5:]}')
  print('end offsets', admin.end_offsets(config, topics['in']),
        'committed', admin.committed_offsets(config, group, topics['in']))


def broker_restart(model_dir: str, log_path: str, work_dir: str, *, n: int,
                   rate: float, down_s: float, kind: str = 'noida',
                   extra_args=()) -> Outcome:
  """A broker restart mid-stream: the job and the producer keep running
  while the broker stops for ``down_s`` seconds and comes back on the same
  port and data directory. ``extra_args`` go to the job."""
  from beam_jobs import local_broker
  data_dir = os.path.join(work_dir, 'broker-data')
  broker = local_broker.start(kind, data_dir=data_dir)
  config = broker.client_config(log_level=0)
  topics = {'in': 'restart-in', 'out': 'restart-out', 'dlq': 'restart-dlq'}
  job = None
  try:
    for name, topic in topics.items():
      admin.create_topic(config, topic, 4 if name == 'in' else 1,
                         config={'retention.ms': '-1'})
    group = 'g-restart'
    job = JobProcess(job_args(broker.bootstrap_servers, topics, model_dir,
                              group, config, *extra_args), log_path)
    job.start()
    job.wait_until_reading()
    auditor = OutputAuditor(config, topics)
    auditor.start()
    producer = SteadyProducer(config, topics['in'], n, rate,
                              malformed_fraction=0.01)
    producer.start()
    time.sleep(n / rate / 3)
    down_at = time.strftime('%X')
    local_broker.stop(broker)
    time.sleep(down_s)
    broker = local_broker.start(kind, port=broker.port, data_dir=data_dir)
    producer.join()
    rode_through = _wait_for_zero_lag_while_alive(job, config, group,
                                                  topics['in'], 180)
    how = 'rode through'
    if not rode_through:
      # The documented alternative: the job failed; a restart resumes from
      # the committed offsets, and nothing may be lost.
      how = f'failed (exit {job.proc.poll()}), restarted and resumed'
      job.start()
      job.wait_until_reading()
      wait_for_zero_lag(config, group, topics['in'], timeout_s=180)
    code = job.stop_gracefully()
    time.sleep(1.0)  # the auditor's last fetch
    auditor.stop()
    outcome = account(f'broker restart ({kind}, {down_s:.0f} s down)',
                      config, topics, producer.produced,
                      producer.malformed_ids, auditor=auditor, notes=
                      f'stopped at {down_at}; job {how}; final stop exit '
                      f'{code}; producer delivery failures '
                      f'{producer.failed}')
    if os.environ.get('RELIABILITY_DIAGNOSE'):
      _diagnose(config, topics, producer.produced, group)
    outcome.exit_code = code
    outcome.lag_after = consumer_lag(config, group, topics['in'])
    return outcome
  finally:
    if job is not None:
      job.kill_if_alive()
    local_broker.stop(broker)
