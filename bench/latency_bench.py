"""Latency and start-up of score_stream against a hand-written loop.

Several interleaved rounds on one broker and one SavedModel; each round:

1. the hand loop (``poll`` for the first record, then up to 1,000 more
   without waiting -> orjson parse -> one batched model call -> produce) at
   each rate of ``--rates``;
2. score_stream unbounded, launched fresh: start-up (launch -> first
   prediction received, the model already on disk) and then each rate,
   with the share of a core the job process used meanwhile (less sensitive
   to a busy machine than the latencies).

Latency is prediction received - event time (the producer stamps each event
with its scheduled send time); the job's rows also say when they were read
and scored, which splits its latency into stages (event -> read, read ->
scored, scored -> produced: the output record's create time). Every rate
runs ``--seconds`` of steady input, measured after a warm-up of a fifth.

Last, the bounded path (``--max_records``: what a Dataflow worker runs per
bundle, and the backfill's shape) is reported as CPU-seconds of the job per
million events (user + system of the child process, start-up included and
shown apart).

The summary prints min / median / max over the rounds.

  python -m bench.latency_bench                       # 5 rounds, 2k and 5k/s
  python -m bench.latency_bench --rounds 3 --rates 2000 --seconds 20
"""

import argparse
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Optional

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from beam_jobs import demo, local_broker
from bench import score_stream_bench as ssb
from models import susy, versions
from transforms.kafka import admin

HAND_BATCH = 1000


class LatencyWatcher(threading.Thread):
  """Reads a predictions topic as it is written; keeps, per prediction,
  received - event time, and the job's stage times where the row has them."""

  def __init__(self, config: dict, topic: str):
    super().__init__(name='latency-watcher', daemon=True)
    self._consumer = Consumer(dict(config, **{
        'group.id': f'lat-{uuid.uuid4().hex[:8]}',
        'enable.auto.commit': False}))
    self._consumer.assign([TopicPartition(topic, p, 0)
                           for p in admin.end_offsets(config, topic)])
    self._halt = threading.Event()
    self._lock = threading.Lock()
    self._rows: list[tuple] = []
    self.first_at = None

  def run(self):
    while not self._halt.is_set():
      # poll() returns on the first record (consume() with a timeout would
      # wait for a full batch and add that wait to what is measured).
      first = self._consumer.poll(0.1)
      if first is None:
        continue
      batch = [first] + self._consumer.consume(num_messages=1000, timeout=0)
      now = time.time()
      rows = []
      for m in batch:
        if m.error() is not None:
          continue
        row = orjson.loads(m.value())
        rows.append((now, row['event_time'], row.get('read_time', np.nan),
                     row.get('scored_time', np.nan),
                     m.timestamp()[1] / 1000))
      with self._lock:
        if self.first_at is None and rows:
          self.first_at = now
        self._rows.extend(rows)
    self._consumer.close()

  def take(self) -> np.ndarray:
    """The rows received since the last call: (received, event, read,
    scored, produced) times."""
    with self._lock:
      rows, self._rows = self._rows, []
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)

  def stop(self):
    self._halt.set()
    self.join()


class HandLoop(threading.Thread):
  """The loop users write by hand, tuned for latency: it never waits for a
  batch to fill, and produces with librdkafka's default linger."""

  def __init__(self, config: dict, topic: str, out_topic: str,
               model: ssb.RawModel):
    super().__init__(name='hand-loop', daemon=True)
    self._consumer = Consumer(dict(config, **{
        'group.id': f'hand-{uuid.uuid4().hex[:8]}',
        'auto.offset.reset': 'latest', 'enable.auto.commit': False}))
    self._consumer.subscribe([topic])
    self._producer = Producer(config)
    self._out = out_topic
    self._model = model
    self._halt = threading.Event()
    self.ready = threading.Event()

  def run(self):
    while not self._halt.is_set():
      first = self._consumer.poll(0.1)
      if self._consumer.assignment():
        self.ready.set()
      if first is None:
        continue
      batch = [first] + self._consumer.consume(num_messages=HAND_BATCH - 1,
                                               timeout=0)
      keys, times, rows = [], [], []
      for m in batch:
        if m.error() is not None:
          continue
        try:
          doc = orjson.loads(m.value())
        except orjson.JSONDecodeError:
          continue
        values = ssb.features_of(doc) if isinstance(doc, dict) else None
        if values is not None:
          keys.append(m.key())
          times.append(doc['event_time'])
          rows.append(values)
      if rows:
        scores = self._model(np.asarray(rows, dtype=np.float32)).tolist()
        for key, at, score in zip(keys, times, scores):
          self._producer.produce(self._out, key=key, value=orjson.dumps(
              {'event_time': at, 'score': score}))
      self._producer.poll(0)
    self._producer.flush(10)
    self._consumer.close()

  def stop(self):
    self._halt.set()
    self.join()


def _percentiles(values: np.ndarray) -> tuple[float, float]:
  if not len(values):
    return float('nan'), float('nan')
  return (float(np.percentile(values, 50)) * 1000,
          float(np.percentile(values, 99)) * 1000)


def _cpu_s(pid: int) -> float:
  """User + system CPU seconds of process ``pid`` so far (Linux)."""
  with open(f'/proc/{pid}/stat', 'rb') as f:
    fields = f.read().rsplit(b')', 1)[1].split()
  return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _paced_phase(config: dict, topic: str, rate: float, seconds: float,
                 first_index: int, watcher: LatencyWatcher,
                 pid: Optional[int] = None) -> tuple[np.ndarray, float]:
  """Steady input at ``rate``; returns the rows received after the
  warm-up (a fifth of ``seconds``) until the phase's tail has drained, and
  the share of a core process ``pid`` used meanwhile (NaN without one)."""
  producer = ssb.PacedProducer(config, topic, rate, seconds,
                               first_index=first_index)
  producer.start()
  producer.started.wait()
  time.sleep(seconds / 5)
  since = time.time()
  cpu = _cpu_s(pid) if pid else None
  producer.join()
  share = ((_cpu_s(pid) - cpu) / (time.time() - since) if pid else
           float('nan'))
  time.sleep(1.5)
  rows = watcher.take()
  return rows[rows[:, 1] >= since], share


def hand_round(config: dict, topics: dict, model: ssb.RawModel,
               rates: list[float], seconds: float, first_index: int) -> dict:
  """The hand loop at each rate; {rate: rows}."""
  watcher = LatencyWatcher(config, topics['out'])
  watcher.start()
  loop = HandLoop(config, topics['in'], topics['out'], model)
  loop.start()
  loop.ready.wait(30)
  out = {}
  try:
    for i, rate in enumerate(rates):
      watcher.take()
      out[rate], _ = _paced_phase(config, topics['in'], rate, seconds,
                                  first_index + i * 10**8, watcher)
  finally:
    loop.stop()
    watcher.stop()
  return out


def job_round(config: dict, bootstrap: str, topics: dict, model_dir: str,
              rates: list[float], seconds: float, first_index: int,
              log) -> dict:
  """score_stream launched fresh: {'startup': s, rate: (rows, share of a
  core the job used)}."""
  watcher = LatencyWatcher(config, topics['out'])
  watcher.start()
  args = ssb.job_args(bootstrap, config, topics, model_dir,
                      f'lat-{uuid.uuid4().hex[:6]}')
  launched = time.time()
  proc = subprocess.Popen(args, stdout=log, stderr=log)
  out = {}
  try:
    # Start-up: one event a second until the first prediction arrives.
    producer = Producer(config)
    index = first_index - 1000
    while watcher.first_at is None:
      if proc.poll() is not None:
        raise RuntimeError(f'score_stream exited with {proc.returncode}')
      if time.time() - launched > 120:
        raise RuntimeError('no prediction 120 s after launch')
      event = susy.to_events(susy.generate(1, seed=index), start_index=index)[0]
      event['event_time'] = time.time()
      producer.produce(topics['in'], key=event['event_id'].encode(),
                       value=orjson.dumps(event))
      producer.flush(5)
      index += 1
      time.sleep(0.05)
    out['startup'] = watcher.first_at - launched
    time.sleep(1)
    for i, rate in enumerate(rates):
      watcher.take()
      out[rate] = _paced_phase(config, topics['in'], rate, seconds,
                               first_index + i * 10**8, watcher, proc.pid)
  finally:
    proc.send_signal(signal.SIGINT)
    try:
      proc.wait(60)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait()
    watcher.stop()
  return out


def bounded_cpu(config: dict, bootstrap: str, topics: dict, model_dir: str,
                n: int, log) -> dict:
  """score_stream --max_records n over a backlog: CPU-seconds of the job
  process, and of a run over 1 record (start-up alone)."""
  def run(records: int) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(ssb.job_args(bootstrap, config, topics, model_dir,
                                f'cpu-{uuid.uuid4().hex[:6]}')
                   + ['--max_records', str(records)],
                   check=True, stdout=log, stderr=log, timeout=1800)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ((after.ru_utime - before.ru_utime)
            + (after.ru_stime - before.ru_stime))
  ssb.produce_backlog(config, topics['in'], n, 0.01)
  total = run(n)
  startup = run(1)
  return {'total_s': total, 'startup_s': startup,
          'per_million_s': (total - startup) * 1e6 / n}


def _summary(label: str, values: list[float], digits: int = 0) -> str:
  """``label min / median / max`` of the finite values."""
  finite = [v for v in values if np.isfinite(v)]
  if not finite:
    return f'{label} n/a'
  return (f'{label} {min(finite):.{digits}f} / '
          f'{float(np.median(finite)):.{digits}f} / {max(finite):.{digits}f}')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--rounds', type=int, default=5,
                      help='interleaved rounds (default: 5)')
  parser.add_argument('--rates', default='2000,5000',
                      help='events/s, comma-separated (default: 2000,5000)')
  parser.add_argument('--seconds', type=float, default=25,
                      help='steady input per rate and round (default: 25)')
  parser.add_argument('--cpu_events', type=int, default=200_000,
                      help='backlog of the bounded CPU row; 0 skips it '
                      '(default: 200000)')
  parser.add_argument('--broker_kind', choices=local_broker.KINDS,
                      default='noida', help='embedded broker (default: noida)')
  parser.add_argument('--model_dir', default=demo.DEFAULT_MODEL_DIR,
                      help=f'model root; a demo model is trained if empty '
                      f'(default: {demo.DEFAULT_MODEL_DIR})')
  args = parser.parse_args(argv)
  rates = [float(r) for r in args.rates.split(',')]

  print(demo.ensure_demo_model(args.model_dir), flush=True)
  version = versions.latest_version(args.model_dir)
  model = ssb.RawModel(versions.version_dir(args.model_dir, version))
  broker, config = ssb.bench_cluster(args.broker_kind)
  bootstrap = config['bootstrap.servers']
  topics = ssb.topic_maker(config, 'lat')

  log = tempfile.NamedTemporaryFile('w', prefix='latency-bench-',
                                    suffix='.log', delete=False)
  print(f'broker {bootstrap}; model version {version}; {args.rounds} rounds '
        f'of {args.seconds:.0f} s per rate; job logs in {log.name}',
        flush=True)
  table = {('hand', r): [] for r in rates}
  table.update({('job', r): [] for r in rates})
  stages = {r: [] for r in rates}
  cores = {r: [] for r in rates}
  startups = []
  cpu = None
  try:
    for k in range(args.rounds):
      first = (k + 1) * 10**9
      for rate, rows in hand_round(config, topics(f'hand{k}'), model, rates,
                                   args.seconds, first).items():
        table[('hand', rate)].append(rows)
      done = job_round(config, bootstrap, topics(f'job{k}'), args.model_dir,
                       rates, args.seconds, first + 5 * 10**8, log)
      startups.append(done.pop('startup'))
      for rate, (rows, share) in done.items():
        table[('job', rate)].append(rows)
        stages[rate].append(rows)
        cores[rate].append(share)
      line = [f'round {k + 1}: start-up {startups[-1]:.2f} s']
      for (who, rate), runs in table.items():
        p50, p99 = _percentiles(runs[-1][:, 0] - runs[-1][:, 1])
        line.append(f'{who} {rate:,.0f}/s p50 {p50:.1f} p99 {p99:.0f} ms '
                    f'({len(runs[-1])})')
      line += [f'job CPU at {r:,.0f}/s {cores[r][-1]:.2f} cores'
               for r in rates]
      print('; '.join(line), flush=True)
    if args.cpu_events:
      cpu = bounded_cpu(config, bootstrap, topics('cpu'), args.model_dir,
                        args.cpu_events, log)
  finally:
    if broker is not None:
      local_broker.stop(broker)
    log.close()

  print('\nlatency (prediction received - event time), min / median / max '
        f'over {args.rounds} rounds, ms')
  print(f'{"":24} {"p50":>22} {"p99":>22}')
  for (who, rate), runs in table.items():
    pcts = [_percentiles(r[:, 0] - r[:, 1]) for r in runs]
    print(f'{who + f" at {rate:,.0f}/s":24} '
          f'{_summary("", [p[0] for p in pcts]):>22} '
          f'{_summary("", [p[1] for p in pcts]):>22}')
  for rate in rates:
    print(_summary(f'score_stream CPU at {rate:,.0f}/s (cores), min / median '
                   f'/ max:', cores[rate], 2))
  print('\nscore_stream stages (all rounds pooled), p50 / p99 ms')
  for rate in rates:
    rows = np.concatenate(stages[rate]) if stages[rate] else np.empty((0, 5))
    parts = {'event->read': rows[:, 2] - rows[:, 1],
             'read->scored': rows[:, 3] - rows[:, 2],
             'scored->produced': rows[:, 4] - rows[:, 3],
             'produced->received': rows[:, 0] - rows[:, 4]}
    print(f'  at {rate:,.0f}/s: ' + ', '.join(
        f'{name} {_percentiles(v)[0]:.1f} / {_percentiles(v)[1]:.0f}'
        for name, v in parts.items()))
  print('\n' + _summary('start-up to first prediction, min / median / max:',
                        startups, 2) + ' s')
  if cpu is not None:
    print(f'\nbounded path (--max_records {args.cpu_events}): '
          f'{cpu["per_million_s"]:.1f} CPU-s per million events '
          f'({cpu["total_s"]:.1f} CPU-s in all, of which start-up '
          f'{cpu["startup_s"]:.1f})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
