"""The scoring job against its raw limits and the hand-written alternatives.

In one run, on one broker and one model (issue: the streaming scoring job):

1. raw consume: confluent-kafka ``consume(num_messages=...)`` over a backlog;
2. raw model: the SavedModel signature on batches of ``--model_batch`` rows;
3. hand-written loop: consume -> orjson parse -> batched predict -> produce
   (what users glue together by hand; no windows, no dead letters);
4. per-message loop: consume one -> parse -> predict one row -> produce
   (the embedded-model / Kafka-ML style), over ``--per_message_events``;
5. score_stream bounded (``--max_records``) over the same backlog;
6. score_stream unbounded on the local streaming path: sustained rate while
   it catches up with a backlog, then event->prediction latency (prediction
   received - event time) at each steady rate of ``--latency_rates``.

Job rates are steady-state: outputs divided by the span from the first read
to the last scoring time recorded in the output rows, so the ~5-10 s of
process start, TensorFlow import and pipeline build are reported apart
("wall"). While the unbounded job catches up, the bench only polls the
output topics' end offsets (a consumer of the outputs meanwhile costs the
job ~40% on 2 cores); the outputs are read and checked afterwards.

Measured 2026-11-24 (noida, 2 cores, 200k events): raw consume 277-371k,
raw model 0.79-0.81M rows/s, hand loop 50-54k, per-message 2.3-2.6k,
score_stream bounded 65-94k, unbounded 36.8k events/s; p50/p99 at 5,000
events/s 36-81 / 271-439 ms over 6 runs.

  python -m bench.score_stream_bench                 # embedded noida broker
  python -m bench.score_stream_bench --events 300000 --latency_rates 5000
  KAFKA_BOOTSTRAP_SERVERS=host:9092 python -m bench.score_stream_bench
  python -m bench.score_stream_bench --shadow --latency_only

``--shadow``: the unbounded job (backlog, then the latency rates) twice,
both following a deployment on a control topic (``--control_topic``): the
primary alone, then the primary with a shadow version (a copy of the model
as a second version, so the shadow does the same work as the primary).
The difference is the cost of shadow scoring; figures in
docs/operating_models.md.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from typing import Callable, Optional

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from beam_jobs import demo, local_broker
from models import control_topic as ct
from models import deployments as dep
from models import susy, versions
from transforms.kafka import admin

PARTITIONS = 4


def _consumer(config: dict, topic: str) -> Consumer:
  consumer = Consumer(dict(config, **{
      'group.id': f'bench-{uuid.uuid4().hex[:8]}', 'enable.auto.commit': False,
      'enable.partition.eof': False, 'fetch.queue.backoff.ms': 1}))
  consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
  return consumer


def produce_backlog(config: dict, topic: str, n: int, malformed: float) -> None:
  """``n`` SUSY-like events with event times spread over the last n/5000 s."""
  producer = Producer(dict(config, **{'linger.ms': 20,
                                      'compression.type': 'lz4'}))
  start = time.time() - n / 5000
  for e in susy.iter_encoded_events(n, seed=11, start_time=start, rate=5000,
                                    malformed_fraction=malformed):
    while True:
      try:
        producer.produce(topic, key=e.key, value=e.value,
                         timestamp=e.timestamp_ms)
        break
      except BufferError:
        producer.poll(0.01)
  producer.flush(120)


def raw_consume(config: dict, topic: str, n: int) -> float:
  consumer = _consumer(config, topic)
  got, t0 = 0, None
  while got < n:
    batch = consumer.consume(num_messages=10_000, timeout=1.0)
    if t0 is None and batch:
      t0 = time.perf_counter()
    got += sum(1 for m in batch if m.error() is None)
  rate = got / (time.perf_counter() - t0)
  consumer.close()
  return rate


class RawModel:
  """The SavedModel's serving signature called as a hand-written loop calls
  it: an array of rows in, an array of scores out, no project code between.
  """

  def __init__(self, path: str, signature: str = 'serving_default'):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    self._tf = tf
    # The module owns the variables: kept alive as long as the function.
    self._module = tf.saved_model.load(path)
    self._fn = self._module.signatures[signature]
    _, inputs = self._fn.structured_input_signature
    (self._input,) = inputs
    self._output = next(iter(self._fn.structured_outputs))

  def __call__(self, rows: np.ndarray) -> np.ndarray:
    return self._fn(**{self._input: self._tf.constant(rows)})[
        self._output].numpy()


def raw_model(model: RawModel, batch: int, rows: int) -> float:
  data = susy.generate(batch, seed=3).features.astype(np.float32)
  model(data)  # warm-up: the first call traces
  t0 = time.perf_counter()
  done = 0
  while done < rows:
    model(data)
    done += batch
  return done / (time.perf_counter() - t0)


def features_of(doc: dict) -> Optional[list]:
  """The model's input row of a decoded event, or None if unusable."""
  try:
    values = [float(doc[name]) for name in susy.FEATURE_NAMES]
  except (KeyError, TypeError, ValueError):
    return None
  return values if all(np.isfinite(values)) else None


def hand_loop(config: dict, topic: str, out_topic: str, n: int,
              model: RawModel, batch: int) -> float:
  """consume -> parse -> batched predict -> produce, as users write it."""
  consumer = _consumer(config, topic)
  producer = Producer(dict(config, **{'linger.ms': 20}))
  seen, t0 = 0, None
  while seen < n:
    messages = consumer.consume(num_messages=batch, timeout=1.0)
    if t0 is None and messages:
      t0 = time.perf_counter()
    ids, rows = [], []
    for m in messages:
      if m.error() is not None:
        continue
      seen += 1
      try:
        doc = orjson.loads(m.value())
      except orjson.JSONDecodeError:
        continue
      values = features_of(doc) if isinstance(doc, dict) else None
      if values is not None:
        ids.append(m.key())
        rows.append(values)
    if rows:
      scores = model(np.asarray(rows, dtype=np.float32))
      for key, score in zip(ids, scores.tolist()):
        while True:
          try:
            producer.produce(out_topic, key=key,
                             value=orjson.dumps({'score': score}))
            break
          except BufferError:
            producer.poll(0.01)
      producer.poll(0)
  producer.flush(60)
  rate = seen / (time.perf_counter() - t0)
  consumer.close()
  return rate


def per_message_loop(config: dict, topic: str, out_topic: str, n: int,
                     model: RawModel) -> float:
  """One poll, one parse, one model call, one produce per message."""
  consumer = _consumer(config, topic)
  producer = Producer(config)
  seen, t0 = 0, None
  while seen < n:
    m = consumer.poll(1.0)
    if m is None or m.error() is not None:
      continue
    if t0 is None:
      t0 = time.perf_counter()
    seen += 1
    try:
      doc = orjson.loads(m.value())
    except orjson.JSONDecodeError:
      continue
    values = features_of(doc) if isinstance(doc, dict) else None
    if values is None:
      continue
    score = float(model(np.asarray([values], dtype=np.float32))[0])
    producer.produce(out_topic, key=m.key(), value=orjson.dumps(
        {'score': score}))
    producer.poll(0)
  producer.flush(60)
  rate = seen / (time.perf_counter() - t0)
  consumer.close()
  return rate


def job_args(bootstrap: str, config: dict, topics: dict, model_dir: str,
             group: str, extra: tuple = ()) -> list[str]:
  return [
      sys.executable, '-m', 'beam_jobs.score_stream',
      '--bootstrap_servers', bootstrap, '--input_topic', topics['in'],
      '--output_topic', topics['out'], '--dead_letter_topic', topics['dlq'],
      '--consumer_group', group, '--start', 'earliest',
      '--model_dir', model_dir, '--window_size_s', '10',
      '--idle_timeout_s', '2'] + list(extra) + os.environ.get(
          'BENCH_JOB_ARGS', '').split() + [
          f'--kafka_config={k}={v}' for k, v in config.items()
          if k != 'bootstrap.servers']


def _read_outputs(config: dict, topic: str, expected: int,
                  timeout_s: float) -> list[dict]:
  consumer = Consumer(dict(config, **{
      'group.id': f'bench-{uuid.uuid4().hex[:8]}',
      'enable.auto.commit': False}))
  consumer.assign([TopicPartition(topic, p, 0)
                   for p in admin.end_offsets(config, topic)])
  rows, deadline = [], time.monotonic() + timeout_s
  while len(rows) < expected and time.monotonic() < deadline:
    for m in consumer.consume(num_messages=10_000, timeout=0.5):
      if m.error() is None:
        rows.append(orjson.loads(m.value()))
  consumer.close()
  return rows


def _steady_rate(rows: list[dict], dead: int) -> float:
  """(scored + dead-lettered) / (last scoring time - first read time)."""
  first = min(r['read_time'] for r in rows)
  last = max(r['scored_time'] for r in rows)
  return (len(rows) + dead) / max(last - first, 1e-6)


def job_bounded(config: dict, bootstrap: str, topics: dict, model_dir: str,
                n: int, log) -> tuple[float, float, int]:
  """score_stream --max_records n; returns (steady rate, wall rate, rows)."""
  args = job_args(bootstrap, config, topics, model_dir,
                   f'bench-bounded-{uuid.uuid4().hex[:6]}')
  t0 = time.perf_counter()
  subprocess.run(args + ['--max_records', str(n)], check=True, stdout=log,
                 stderr=log, timeout=1800)
  wall = time.perf_counter() - t0
  dead = sum(admin.end_offsets(config, topics['dlq']).values())
  rows = _read_outputs(config, topics['out'], n - dead, 120)
  return _steady_rate(rows, dead), n / wall, len(rows)


def job_unbounded(config: dict, bootstrap: str, topics: dict,
                  model_dir: str, n: int, latency_rates: list[float],
                  latency_s: float, log, *, end_offsets_exact: bool,
                  extra: tuple = ()) -> dict:
  """The job unbounded: first a backlog of n, then a steady input rate.

  ``end_offsets_exact``: the broker's end offsets count the outputs (not
  Tansu's: docs/brokers.md); else they are counted by a consumer.
  ``extra``: more job flags (``--control_topic``).
  """
  group = f'bench-unbounded-{uuid.uuid4().hex[:6]}'
  watcher = None
  proc = subprocess.Popen(job_args(bootstrap, config, topics, model_dir,
                                   group, extra), stdout=log, stderr=log)
  try:
    # The backlog: the outputs are only counted while the job works (read
    # and checked after), from the end offsets where they are exact: any
    # reader meanwhile, and the broker serving it, take CPU from the job on
    # a 2-core machine (measured: a consumer that only counts the outputs
    # as they come cut the job from 33-34k to 20-21k events/s).
    if end_offsets_exact:
      backlog_dead = _wait_end_offsets(config, topics, n, proc, 1800)
    else:
      backlog_dead = _count_outputs(config, topics, n, proc, 1800)
    rows = _read_outputs(config, topics['out'], n - backlog_dead, 120)
    backlog_rate = _steady_rate(rows, backlog_dead)
    # From here on the latency of each prediction is taken as it arrives.
    watcher = demo.OutputWatcher(config, topics['out'], topics['dlq'])
    watcher.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
      snap = watcher.snapshot()
      if snap['scored'] + snap['dead'] >= n:
        break
      time.sleep(0.2)
    with watcher._lock:  # pylint: disable=protected-access
      watcher.latencies.clear()
    # Steady input: the backlog is scored; now each fixed rate in turn,
    # measured after a warm-up of a fifth of the time.
    phases = []
    next_id = 10**9
    for rate in latency_rates:
      producer = PacedProducer(config, topics['in'], rate, latency_s,
                               first_index=next_id)
      next_id += 10**8
      producer.start()
      producer.started.wait()
      time.sleep(latency_s / 5)
      with watcher._lock:  # pylint: disable=protected-access
        watcher.latencies.clear()
      measured_from = time.time()
      producer.join()
      time.sleep(1.0)  # the last predictions arrive
      with watcher._lock:  # pylint: disable=protected-access
        lat = np.asarray(watcher.latencies)
      if os.environ.get('BENCH_DUMP_LATENCIES'):
        np.save(f'{os.environ["BENCH_DUMP_LATENCIES"]}-{rate:.0f}.npy', lat)
      phases.append((rate, lat, _stage_latencies(config, topics['out'],
                                                 measured_from)))
      time.sleep(2)  # the tail of this phase drains
  finally:
    proc.send_signal(signal.SIGINT)
    try:
      proc.wait(120)
    except subprocess.TimeoutExpired:
      proc.kill()
    if watcher is not None:
      watcher.stop()
  return {'backlog_rate': backlog_rate, 'phases': phases}


def _wait_end_offsets(config: dict, topics: dict, n: int, proc,
                      timeout_s: float) -> int:
  """Waits until the predictions' and dead letters' end offsets add up to
  ``n``; returns the dead letters."""
  deadline = time.monotonic() + timeout_s
  while True:
    out = sum(admin.end_offsets(config, topics['out']).values())
    dead = sum(admin.end_offsets(config, topics['dlq']).values())
    if out + dead >= n:
      return dead
    if time.monotonic() > deadline:
      raise RuntimeError(f'{out + dead} of {n} outputs after '
                         f'{timeout_s:.0f} s')
    if proc.poll() is not None:
      raise RuntimeError(f'score_stream exited with {proc.returncode}')
    time.sleep(0.5)


def _count_outputs(config: dict, topics: dict, n: int, proc,
                   timeout_s: float) -> int:
  """Waits until predictions + dead letters reach ``n`` (counted, not
  decoded); returns the dead letters."""
  consumer = Consumer(dict(config, **{
      'group.id': f'bench-{uuid.uuid4().hex[:8]}',
      'enable.auto.commit': False}))
  consumer.assign([TopicPartition(t, p, 0) for t, p in admin.topic_partitions(
      config, [topics['out'], topics['dlq']])])
  counts = {topics['out']: 0, topics['dlq']: 0}
  deadline = time.monotonic() + timeout_s
  try:
    while sum(counts.values()) < n:
      if time.monotonic() > deadline:
        raise RuntimeError(f'{sum(counts.values())} of {n} outputs after '
                           f'{timeout_s:.0f} s')
      if proc.poll() is not None:
        raise RuntimeError(f'score_stream exited with {proc.returncode}')
      for m in consumer.consume(num_messages=10_000, timeout=0.5):
        if m.error() is None:
          counts[m.topic()] += 1
  finally:
    consumer.close()
  return counts[topics['dlq']]


class PacedProducer(threading.Thread):
  """Sends pre-generated events at a steady rate, stamped when sent.

  Generating SUSY-like events costs ~20 ms per 1,000, in chunks: generated
  on the fly, sending stalls in bursts and the stall would be measured as
  the job's latency. The rows are generated first; each event gets its
  event time (its scheduled send time) and is encoded as it is sent.
  """

  def __init__(self, config: dict, topic: str, rate: float, seconds: float,
               *, first_index: int, seed: int = 12):
    super().__init__(daemon=True)
    self._producer = Producer(dict(config, **{'linger.ms': 1}))
    self._topic = topic
    self._rate = rate
    self._events = []
    for first, data in susy.iter_chunks(int(rate * seconds),
                                        start_index=first_index, seed=seed):
      self._events.extend(susy.to_events(data, start_index=first,
                                         rate=rate))
    self.produced = 0
    self.started = threading.Event()

  def run(self):
    start = time.time()
    self.started.set()
    dumps = orjson.dumps
    for i, event in enumerate(self._events):
      scheduled = start + i / self._rate
      ahead = scheduled - time.time()
      if ahead > 0.001:
        self._producer.poll(0)
        time.sleep(ahead)
      event['event_time'] = scheduled
      value = dumps(event)
      while True:
        try:
          self._producer.produce(self._topic, key=event['event_id'].encode(),
                                 value=value,
                                 timestamp=int(scheduled * 1000))
          break
        except BufferError:
          self._producer.poll(0.01)
      self.produced += 1
    self._producer.flush(60)


def _stage_latencies(config: dict, topic: str, since: float) -> dict:
  """Per-stage delays of the predictions of events after ``since``:
  event time -> read, read -> scored, scored -> on the output topic
  (the output record's create time, set when the job produced it)."""
  consumer = Consumer(dict(config, **{
      'group.id': f'bench-{uuid.uuid4().hex[:8]}',
      'enable.auto.commit': False}))
  ends = admin.end_offsets(config, topic)
  consumer.assign([TopicPartition(topic, p, 0) for p in ends])
  left = dict(ends)
  stages = {'event->read': [], 'read->scored': [], 'scored->produced': []}
  deadline = time.monotonic() + 120
  while any(v > 0 for v in left.values()) and time.monotonic() < deadline:
    for m in consumer.consume(num_messages=10_000, timeout=0.5):
      if m.error() is not None:
        continue
      left[m.partition()] = ends[m.partition()] - m.offset() - 1
      row = orjson.loads(m.value())
      if row['event_time'] < since:
        continue
      stages['event->read'].append(row['read_time'] - row['event_time'])
      stages['read->scored'].append(row['scored_time'] - row['read_time'])
      stages['scored->produced'].append(m.timestamp()[1] / 1000 -
                                        row['scored_time'])
  consumer.close()
  return {k: np.asarray(v) for k, v in stages.items()}


def _throughput_rows(args, config, bootstrap, topics, n, model, log,
                     results) -> None:
  shared = topics('shared')
  produce_backlog(config, shared['in'], n, 0.01)
  results.append(('raw consume (confluent-kafka, batches of 10k)',
                  raw_consume(config, shared['in'], n), ''))
  results.append((f'raw model (SavedModel signature, {args.model_batch} '
                  f'rows/call)',
                  raw_model(model, args.model_batch, 2_000_000), ''))
  results.append(('hand loop: consume->parse->batch predict->produce',
                  hand_loop(config, shared['in'], shared['out'], n, model,
                            args.model_batch), 'no windows/dead letters'))
  per_msg = per_message_loop(config, shared['in'], shared['dlq'],
                             args.per_message_events, model)
  results.append(('per-message loop: poll->parse->predict 1->produce',
                  per_msg, f'{args.per_message_events} events'))
  bounded = topics('bounded')
  produce_backlog(config, bounded['in'], n, 0.01)
  steady, wall, rows = job_bounded(config, bootstrap, bounded,
                                   args.model_dir, n, log)
  results.append(('score_stream bounded (--max_records, local engine)',
                  steady, f'wall incl. startup {wall:,.0f}/s; {rows} '
                  f'predictions'))


def bench_cluster(kind: str) -> tuple[Optional[local_broker.BrokerInfo],
                                         dict]:
  """(embedded broker or None, client config): KAFKA_BOOTSTRAP_SERVERS
  when set, else a fresh embedded broker of ``kind`` (stop it after)."""
  broker = None
  external = os.environ.get('KAFKA_BOOTSTRAP_SERVERS')
  if external:
    config = {'bootstrap.servers': external}
  else:
    broker = local_broker.start(kind)
    config = broker.client_config()
  config['log_level'] = 0
  return broker, config


def topic_maker(config: dict, prefix: str) -> Callable[[str], dict]:
  """``topics(name)`` creates this run's input (PARTITIONS), output and
  dead-letter topics of ``name``, keeping everything; returns their names
  under 'in', 'out', 'dlq'."""
  run = uuid.uuid4().hex[:6]

  def topics(name: str) -> dict:
    t = {k: f'{prefix}-{name}-{k}-{run}' for k in ('in', 'out', 'dlq')}
    for kind, topic in t.items():
      admin.create_topic(config, topic, PARTITIONS if kind == 'in' else 1,
                         config={'retention.ms': '-1'})
    return t
  return topics


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--events', type=int, default=200_000,
                      help='backlog size for the throughput rows '
                      '(default: 200000)')
  parser.add_argument('--per_message_events', type=int, default=10_000,
                      help='events for the per-message loop (default: 10000)')
  parser.add_argument('--model_batch', type=int, default=4096,
                      help='rows per model call in the batched rows '
                      '(default: 4096)')
  parser.add_argument('--latency_rates', default='1000,5000',
                      help='events/s of the latency rows, comma-separated '
                      '(default: 1000,5000)')
  parser.add_argument('--latency_s', type=float, default=30,
                      help='seconds of steady input (default: 30)')
  parser.add_argument('--latency_only', action='store_true',
                      help='only the unbounded job and its latency rows')
  parser.add_argument('--broker_kind', choices=local_broker.KINDS,
                      default='noida', help='embedded broker (default: noida)')
  parser.add_argument('--model_dir', default=demo.DEFAULT_MODEL_DIR,
                      help=f'model root; a demo model is trained if empty '
                      f'(default: {demo.DEFAULT_MODEL_DIR})')
  parser.add_argument('--shadow', action='store_true',
                      help='the unbounded job under a control-topic '
                      'deployment, without then with a shadow version '
                      '(module docstring; default: off)')
  args = parser.parse_args(argv)

  print(demo.ensure_demo_model(args.model_dir), flush=True)
  version = versions.latest_version(args.model_dir)
  model = RawModel(versions.version_dir(args.model_dir, version))
  external = os.environ.get('KAFKA_BOOTSTRAP_SERVERS')
  broker, config = bench_cluster(args.broker_kind)
  bootstrap = config['bootstrap.servers']
  topics = topic_maker(config, 'bench')
  run = uuid.uuid4().hex[:6]

  n = args.events
  log = tempfile.NamedTemporaryFile('w', prefix='score-stream-bench-',
                                    suffix='.log', delete=False)
  results = []
  runs = []
  try:
    print(f'broker {bootstrap} ({"external" if external else broker.kind}); '
          f'model version {version}; {n} events, 1% malformed; job logs in '
          f'{log.name}', flush=True)
    per_msg = float('nan')
    if args.latency_only:
      n = min(n, 20_000)
    else:
      _throughput_rows(args, config, bootstrap, topics, n, model, log,
                       results)
      per_msg = results[3][1]
    runs = [('', args.model_dir, ())]
    if args.shadow:
      runs = _shadow_runs(config, f'bench-ctl-{run}', run,
                          versions.version_dir(args.model_dir, version))
    outs = []
    for label, model_dir, extra in runs:
      unbounded = topics(f'unbounded{len(outs)}')
      produce_backlog(config, unbounded['in'], n, 0.01)
      out = job_unbounded(config, bootstrap, unbounded, model_dir, n,
                          [float(r) for r in args.latency_rates.split(',')],
                          args.latency_s, log,
                          end_offsets_exact=bool(external or
                                                 broker.kind != 'tansu'),
                          extra=extra)
      outs.append((label, out))
      results.append((f'score_stream unbounded, catching up a backlog'
                      f'{label}', out['backlog_rate'], ''))
  finally:
    if args.shadow and runs:
      shutil.rmtree(runs[0][1], ignore_errors=True)
    if broker is not None:
      local_broker.stop(broker)
    log.close()

  print(f'\n{"path":52} {"events/s":>10}  x per-message  notes')
  for name, rate, note in results:
    print(f'{name:52} {rate:10,.0f}  {rate / per_msg:12.1f}  {note}')
  for label, out in outs:
    for rate, lat, stages in out['phases']:
      if not len(lat):
        print(f'\nlatency{label} at {rate:,.0f} events/s: no predictions '
              f'arrived')
        continue
      print(f'\nlatency{label} at {rate:,.0f} events/s for '
            f'{args.latency_s * 4 / 5:.0f} s (after {args.latency_s / 5:.0f} '
            f's warm-up), prediction received - event time, {len(lat)} '
            f'predictions: p50 {np.percentile(lat, 50) * 1000:.0f} ms, p99 '
            f'{np.percentile(lat, 99) * 1000:.0f} ms, max '
            f'{lat.max() * 1000:.0f} ms')
      for name, values in stages.items():
        if len(values):
          print(f'  {name:18} p50 {np.percentile(values, 50) * 1000:6.0f} '
                f'ms  p99 {np.percentile(values, 99) * 1000:6.0f} ms')
  return 0


def _shadow_runs(config: dict, control_topic: str, run: str,
                 model_src: str) -> list:
  """(label, model root, job flags) of the two --shadow runs: a root of
  versions 1 and 2 (copies of ``model_src``) and one deployment per run on
  a control topic, primary 1 alone, then with shadow 2."""
  root = tempfile.mkdtemp(prefix='bench-shadow-')
  for v in (1, 2):
    shutil.copytree(model_src, os.path.join(root, str(v)))
  control = ct.ControlTopic(config, control_topic)
  runs = []
  for label, shadow in ((' (primary only)', None), (' (+ shadow)', 2)):
    name = f'bench-{run}-{len(runs)}'
    control.publish(dep.Deployment(name, 1, shadow=shadow, action=dep.PIN,
                                   updated_at=dep.now_iso(), actor='bench'))
    runs.append((label, root, ('--control_topic', control.topic,
                               '--deployment', name)))
  return runs


if __name__ == '__main__':
  sys.exit(main())
