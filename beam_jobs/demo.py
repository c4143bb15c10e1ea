"""The local demo behind ``./run_local.sh``: the scoring job, end to end.

1. Starts the embedded Kafka broker (unless ``KAFKA_BOOTSTRAP_SERVERS``
   names a cluster) and creates the events, predictions and dead-letter
   topics, which keep ``--retention_s`` seconds of records (60 by
   default), so a long run holds the broker's memory and disk bounded.
2. Trains a small demo model if ``--model_dir`` has no complete version
   (SUSY-like data, the registry's default config, a versioned SavedModel).
3. Produces SUSY-like events at ``--rate`` per second, ~1% of them malformed.
4. Runs ``beam_jobs.score_stream`` unbounded on the local engine.
5. Reads the output topics back while it runs and prints a progress line
   every second: events in, scored, dead letters, events/s, consumer lag,
   p50/p99 event->prediction latency (prediction received - event time).
6. On Ctrl-C or after ``--duration`` seconds: stops the producer, lets the
   job score what was produced, stops it (offsets committed), stops what it
   started, and prints a summary whose counts must balance:
   produced = scored + dead-lettered, with no event id lost or doubled.

  ./run_local.sh --duration 60 --rate 2000
"""

import argparse
import collections
import logging
import os
import signal
import sys
import threading
import time
import uuid
from typing import Optional

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from beam_jobs import local_broker
from beam_jobs import logs
from beam_jobs import spelling
from models import susy
from transforms.kafka import admin, client_logs

_LOGGER = logging.getLogger(__name__)
DEFAULT_MODEL_DIR = os.path.join('.run', 'models', 'susy-demo')
# Seconds of records the demo topics keep (topic_config); chosen by
# bench/broker_soak.py, docs/brokers.md.
DEFAULT_RETENTION_S = 60


class RateProducer(threading.Thread):
  """Produces SUSY-like events at a steady rate until stopped."""

  def __init__(self, client_config: dict, topic: str, rate: float, *,
               malformed_fraction: float, seed: int = 7,
               start_index: int = 0):
    super().__init__(name='demo-producer', daemon=True)
    self._producer = Producer(dict(client_logs.route(client_config), **{
        'linger.ms': 5, 'compression.type': 'lz4'}))
    self._topic = topic
    self._rate = rate
    self._malformed_fraction = malformed_fraction
    self._seed = seed
    # Ids e<start_index>, e<start_index+1>, ...
    self._start_index = start_index
    self._halt = threading.Event()
    self.produced = 0
    self.malformed = 0
    self.failed = 0

  def _on_delivery(self, err, unused_msg):
    if err is not None:
      self.failed += 1

  def _events(self):
    """An endless deterministic stream, generated a chunk at a time."""
    # Event times are start_time + index / rate: the first event's is now.
    start_time = time.time() - self._start_index / self._rate
    chunk = 10_000
    for first in range(self._start_index, 10**15, chunk):
      yield from susy.iter_encoded_events(
          chunk, seed=self._seed, start_index=first, start_time=start_time,
          rate=self._rate, malformed_fraction=self._malformed_fraction)

  def run(self):
    started = time.monotonic()
    for event in self._events():
      if self._halt.is_set():
        break
      ahead = self.produced / self._rate - (time.monotonic() - started)
      if ahead > 0.005:
        self._producer.poll(0)
        time.sleep(ahead)
      while True:
        try:
          self._producer.produce(self._topic, key=event.key,
                                 value=event.value,
                                 timestamp=event.timestamp_ms,
                                 on_delivery=self._on_delivery)
          break
        except BufferError:
          self._producer.poll(0.01)
      self.produced += 1
      self.malformed += event.malformed is not None
    self.failed += self._producer.flush(30)

  def stop(self):
    self._halt.set()
    self.join()


class OutputWatcher(threading.Thread):
  """Reads the predictions and dead-letter topics back, for the progress
  line and the summary."""

  def __init__(self, client_config: dict, predictions: str, dead: str):
    super().__init__(name='demo-output-watcher', daemon=True)
    self._consumer = Consumer(dict(client_logs.route(client_config), **{
        'group.id': f'demo-watch-{uuid.uuid4().hex[:6]}',
        'enable.auto.commit': False}))
    # Explicit assignment from offset 0: no group-join delay to skew the
    # first latencies.
    self._consumer.assign([
        TopicPartition(t, p, 0)
        for t, p in admin.topic_partitions(client_config, [predictions, dead])])
    self._predictions = predictions
    self._halt = threading.Event()
    self._lock = threading.Lock()
    self.scored_ids: dict[str, int] = {}
    self.dead_ids: dict[str, int] = {}
    self.dead_reasons: dict[str, int] = {}
    # The last 20,000 only: a long run must not grow the demo itself.
    self.latencies: collections.deque = collections.deque(maxlen=20000)
    self.versions: dict[int, int] = {}

  def run(self):
    while not self._halt.is_set():
      # poll() returns on the first record; consume() with a timeout would
      # wait for a full batch and add that wait to the measured latency.
      first = self._consumer.poll(0.2)
      if first is None:
        continue
      batch = [first] + self._consumer.consume(num_messages=1000, timeout=0)
      for m in batch:
        if m.error() is not None:
          continue
        now = time.time()
        with self._lock:
          if m.topic() == self._predictions:
            row = orjson.loads(m.value())
            eid = row['event_id']
            self.scored_ids[eid] = self.scored_ids.get(eid, 0) + 1
            self.latencies.append(now - row['event_time'])
            v = row['model_version']
            self.versions[v] = self.versions.get(v, 0) + 1
          else:
            headers = dict(m.headers() or [])
            eid = (m.key() or b'').decode('utf-8', 'replace')
            self.dead_ids[eid] = self.dead_ids.get(eid, 0) + 1
            reason = headers.get('dlq.reason', b'?').decode()
            self.dead_reasons[reason] = self.dead_reasons.get(reason, 0) + 1
    self._consumer.close()

  def snapshot(self) -> dict:
    with self._lock:
      lat = np.asarray(self.latencies)
      return {
          'scored': len(self.scored_ids), 'dead': sum(self.dead_ids.values()),
          'duplicates': sum(c - 1 for c in self.scored_ids.values() if c > 1),
          'p50': float(np.percentile(lat, 50)) if len(lat) else float('nan'),
          'p99': float(np.percentile(lat, 99)) if len(lat) else float('nan'),
      }

  def stop(self):
    self._halt.set()
    self.join()


def ensure_demo_model(model_dir: str) -> str:
  """Trains and exports a small demo model unless one exists."""
  from models import versions
  if versions.latest_version(model_dir) is not None:
    return f'using model version {versions.latest_version(model_dir)} in ' \
           f'{model_dir}'
  import tempfile
  from models import examples_io, registry, train
  print(f'no model in {model_dir}: training a small demo model '
        f'({registry.DEFAULT_CONFIG} on 40k SUSY-like rows)...', flush=True)
  with tempfile.TemporaryDirectory(prefix='kbi-demo-data-') as data:
    examples_io.write_span(data, 0, {
        'train': susy.generate(40_000, seed=1),
        'eval': susy.generate(10_000, seed=2)})
    results = train.train_and_export(data, model_dir,
                                     [registry.DEFAULT_CONFIG], epochs=3)
  r = results[0]
  return (f"trained demo model version {r.version}: eval accuracy "
          f"{r.accuracy:.3f} ({model_dir})")


def topic_config(retention_s: float) -> dict[str, str]:
  """Settings for the demo's own topics that bound what the broker keeps.

  The embedded noida broker holds every record in memory and rewrites one
  snapshot file of its whole log every few seconds, so an unbounded demo
  topic grows its memory, its disk and its save time without limit. It
  deletes whole segments only, by record timestamp: ``retention.ms`` alone
  never applies to a topic's single, active segment, so ``segment.ms``
  rolls one every quarter of the retention (the topic then keeps between
  1 and 1.25 times ``retention_s``). Apache Kafka reads the same two
  settings the same way. Tansu's memory storage ignores both
  (docs/brokers.md).

  Args:
    retention_s: seconds of records to keep; 0 or less keeps everything.
  """
  if retention_s <= 0:
    return {'retention.ms': '-1'}
  retention_ms = int(retention_s * 1000)
  return {'retention.ms': str(retention_ms),
          'segment.ms': str(max(1000, retention_ms // 4))}


def create_topics(client_config: dict, run_id: str, *, partitions: int,
                  retention_s: float) -> dict[str, str]:
  """Creates the demo's events, predictions and dead-letter topics.

  Returns:
    {'events' | 'predictions' | 'dead-letters': topic name}.
  """
  topics = {name: f'demo-{name}-{run_id}'
            for name in ('events', 'predictions', 'dead-letters')}
  for name, topic in topics.items():
    admin.create_topic(client_config, topic,
                       partitions if name == 'events' else 1,
                       config=topic_config(retention_s))
  return topics


def job_args(client_config: dict, topics: dict, group: str, *,
             model_dir: str, window_size_s: float,
             log_level: str = logs.DEFAULT_LEVEL) -> list[str]:
  """The score_stream command line the demo runs on its topics."""
  return [
      '--bootstrap_servers', client_config['bootstrap.servers'],
      '--input_topic', topics['events'],
      '--output_topic', topics['predictions'],
      '--dead_letter_topic', topics['dead-letters'],
      '--consumer_group', group, '--start', 'earliest',
      '--model_dir', model_dir, '--window', 'fixed',
      '--window_size_s', str(window_size_s), '--idle_timeout_s', '2',
      '--log_level', log_level,
  ] + [f'--kafka_config={k}={v}' for k, v in client_config.items()
       if k != 'bootstrap.servers']


def consumer_lag(client_config: dict, group: str, topic: str) -> int:
  """Records in ``topic`` not yet committed by ``group``; -1 if the broker
  did not answer."""
  try:
    # Commits first: end offsets only grow, so a commit made between the
    # two requests cannot make the lag negative.
    committed = admin.committed_offsets(client_config, group, topic,
                                        timeout_s=5)
    ends = admin.end_offsets(client_config, topic, timeout_s=5)
  except Exception:  # pylint: disable=broad-except
    return -1
  return sum(max(0, end - (committed.get(p) or 0)) for p, end in ends.items())


def main(argv: Optional[list[str]] = None) -> int:
  # Flags spelled as the jobs spell them (--model_dir); the hyphen
  # spellings of earlier versions (--model-dir) still work, unlisted.
  parser = argparse.ArgumentParser(prog='run_local.sh',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--duration', type=float, default=0,
                      help='seconds to run; 0 = until Ctrl-C (default: 0)')
  parser.add_argument('--rate', type=float, default=1000,
                      help='events produced per second (default: 1000)')
  parser.add_argument('--malformed_fraction', type=float, default=0.01,
                      help='share of malformed events (default: 0.01)')
  parser.add_argument('--model_dir', default=DEFAULT_MODEL_DIR,
                      help=f'model root (default: {DEFAULT_MODEL_DIR}; a '
                      f'demo model is trained there if empty)')
  parser.add_argument('--broker_kind', choices=local_broker.KINDS,
                      default=local_broker.DEFAULT_KIND,
                      help='embedded broker (default: %(default)s)')
  parser.add_argument('--partitions', type=int, default=4,
                      help='partitions of the events topic (default: 4)')
  parser.add_argument('--retention_s', type=float,
                      default=DEFAULT_RETENTION_S,
                      help='seconds of records the demo topics keep; 0 keeps '
                      'everything (default: %(default)s; bounds the '
                      'embedded broker\'s memory and disk, docs/brokers.md)')
  parser.add_argument('--window_size_s', type=float, default=10.0,
                      help='event-time window size in seconds (default: 10)')
  parser.add_argument('--window_s', dest='window_size_s', type=float,
                      default=argparse.SUPPRESS, help=argparse.SUPPRESS)
  parser.add_argument('--log_level', type=str.upper, choices=logs.LEVELS,
                      default=logs.DEFAULT_LEVEL,
                      help='as for the jobs (default: %(default)s)')
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(spelling.underscore_spellings(argv, parser))
  if args.rate <= 0:
    parser.error('--rate must be > 0')
  if not 0 <= args.malformed_fraction < 1:
    parser.error('--malformed_fraction must be in [0, 1)')
  logs.configure(args.log_level, fmt='%(levelname)s %(name)s: %(message)s')

  broker = None
  bootstrap = os.environ.get('KAFKA_BOOTSTRAP_SERVERS')
  try:
    print(ensure_demo_model(args.model_dir), flush=True)
    if bootstrap:
      client_config = {'bootstrap.servers': bootstrap}
      print(f'using Kafka at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS)')
    else:
      broker = local_broker.start(args.broker_kind, port=None)
      client_config = broker.client_config()
      print(f'started embedded {broker.kind} broker at '
            f'{broker.bootstrap_servers} (pid {broker.pid})')
    run_id = uuid.uuid4().hex[:8]
    topics = create_topics(client_config, run_id, partitions=args.partitions,
                           retention_s=args.retention_s)
    group = f'demo-scorer-{run_id}'
    kept = (f'topics keep {args.retention_s:.0f} s' if args.retention_s > 0
            else 'topics keep everything')
    print(f'topics: {", ".join(topics.values())} ({kept}); producing '
          f'{args.rate:.0f} events/s, {args.malformed_fraction:.0%} malformed',
          flush=True)

    from beam_jobs import score_stream
    watcher = OutputWatcher(client_config, topics['predictions'],
                            topics['dead-letters'])
    watcher.start()
    result = score_stream.run(
        job_args(client_config, topics, group, model_dir=args.model_dir,
                 window_size_s=args.window_size_s, log_level=args.log_level),
        block=False)
    producer = RateProducer(client_config, topics['events'], args.rate,
                            malformed_fraction=args.malformed_fraction)
    producer.start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t0 = time.monotonic()
    last_scored, last_t = 0, t0
    try:
      while not stop.is_set():
        if args.duration and time.monotonic() - t0 >= args.duration:
          break
        stop.wait(1.0)
        snap = watcher.snapshot()
        now = time.monotonic()
        rate = (snap['scored'] - last_scored) / max(now - last_t, 1e-6)
        last_scored, last_t = snap['scored'], now
        print(f'[{now - t0:5.0f}s] in {producer.produced:>8}  scored '
              f'{snap["scored"]:>8}  dead letters {snap["dead"]:>5}  '
              f'{rate:8.0f} ev/s  lag '
              f'{consumer_lag(client_config, group, topics["events"]):>6}  '
              f'p50 {snap["p50"] * 1000:6.0f} ms  p99 '
              f'{snap["p99"] * 1000:6.0f} ms', flush=True)
    except KeyboardInterrupt:
      print('\ninterrupted: draining and stopping')
    producer.stop()
    # Let the job score everything produced, then stop its read: windows
    # fire, sinks flush, offsets commit.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      snap = watcher.snapshot()
      if snap['scored'] + snap['dead'] >= producer.produced:
        break
      time.sleep(0.2)
    result.stop_reading()
    state = result.wait_until_finish()
    time.sleep(1.0)  # the watcher's last poll
    watcher.stop()
    snap = watcher.snapshot()
    lag = consumer_lag(client_config, group, topics['events'])
    produced_ids = {f'e{i}' for i in range(producer.produced)}
    seen = set(watcher.scored_ids) | set(watcher.dead_ids)
    lost = len(produced_ids - seen)
    print(f'\nsummary ({time.monotonic() - t0:.0f} s, pipeline {state}):')
    print(f'  produced      {producer.produced} ({producer.malformed} '
          f'malformed, {producer.failed} failed deliveries)')
    print(f'  scored        {snap["scored"]} (duplicates {snap["duplicates"]}; '
          f'model versions {dict(watcher.versions)})')
    print(f'  dead letters  {snap["dead"]} {dict(watcher.dead_reasons)}')
    print(f'  lost          {lost}; consumer lag at end {lag}')
    print(f'  latency       p50 {snap["p50"] * 1000:.0f} ms, p99 '
          f'{snap["p99"] * 1000:.0f} ms (prediction received - event time)')
    print(f'  outputs       topics {topics["predictions"]} and '
          f'{topics["dead-letters"]} on {client_config["bootstrap.servers"]}; '
          f'model {args.model_dir}')
    balanced = (producer.produced == snap['scored'] + snap['dead'] and
                lost == 0 and not producer.failed)
    print('  counts balance: produced = scored + dead-lettered' if balanced
          else '  COUNTS DO NOT BALANCE')
    return 0 if balanced else 1
  finally:
    if broker is not None:
      print(local_broker.stop(broker).describe(broker))


if __name__ == '__main__':
  sys.exit(main())
