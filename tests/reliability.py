"""Harness for the reliability scenarios: the real job as a subprocess, a
steady producer, kills and restarts, and an accounting of the outputs.

Used by tests/reliability_it_test.py (assertions) and
bench/reliability_table.py (the scenario table).
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
from confluent_kafka import Consumer, Producer, TopicPartition

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
  lost: int            # produced ids with neither
  duplicates: int      # predictions beyond one per id
  notes: str = ''
  exit_code: Optional[int] = None   # of the last, gracefully stopped run
  lag_after: Optional[int] = None   # consumer lag after it

  def row(self) -> str:
    return (f'{self.scenario:34} {self.produced:>8} {self.scored:>8} '
            f'{self.dead_lettered:>6} {self.lost:>5} {self.duplicates:>6}  '
            f'{self.notes}')


HEADER = (f'{"scenario":34} {"in":>8} {"scored":>8} {"dead":>6} {"lost":>5} '
          f'{"dups":>6}  notes')


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
    """SIGINT: the job stops reading, drains, commits and exits."""
    self.proc.send_signal(signal.SIGINT)
    return self.proc.wait(timeout_s)

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


def account(scenario: str, config: dict, topics: dict, produced: int,
            malformed_ids: set, notes: str = '') -> Outcome:
  predictions = collections.Counter(
      orjson.loads(m.value())['event_id'] for m in read_all(config,
                                                           topics['out']))
  dead = {m.key().decode('utf-8', 'replace')
          for m in read_all(config, topics['dlq'])}
  ids = {f'e{i}' for i in range(produced)}
  lost = len(ids - set(predictions) - dead)
  return Outcome(scenario, produced, len(malformed_ids), len(predictions),
                 len(dead), lost,
                 sum(c - 1 for c in predictions.values() if c > 1), notes)


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


def crash_restart(config: dict, bootstrap: str, topics: dict, model_dir: str,
                  log_path: str, *, n: int, rate: float, kills: int,
                  seed: int, extra_args=(), scenario='crash/restart'
                  ) -> Outcome:
  """Produces ``n`` events at ``rate``; SIGKILLs the job ``kills`` times at
  random moments, restarting it with the same group each time; then lets a
  last run catch up and stops it gracefully."""
  rng = random.Random(seed)
  group = f'g-{topics["in"]}'
  args = job_args(bootstrap, topics, model_dir, group, config, *extra_args)
  producer = SteadyProducer(config, topics['in'], n, rate,
                            malformed_fraction=0.01)
  producer.start()
  job = JobProcess(args, log_path)
  kill_times = []
  for _ in range(kills):
    job.start()
    # Long enough for the job to start and score a little, short enough to
    # catch it mid-stream.
    time.sleep(rng.uniform(8.0, 14.0))
    kill_times.append(time.strftime('%X'))
    job.kill()
  job.start()
  producer.join()
  job.wait_until_reading()
  wait_for_zero_lag(config, group, topics['in'], timeout_s=180)
  code = job.stop_gracefully()
  outcome = account(scenario, config, topics, producer.produced,
                    producer.malformed_ids,
                    f'{kills} SIGKILLs at {",".join(kill_times)}')
  outcome.exit_code = code
  outcome.lag_after = consumer_lag(config, group, topics['in'])
  outcome.notes += f'; final stop exit {code}, lag {outcome.lag_after}'
  return outcome
