"""The local demo behind ``./run_local.sh``: broker, producer, streaming job.

Starts the embedded Kafka broker (unless ``KAFKA_BOOTSTRAP_SERVERS`` names a
cluster), creates the topics, produces events at ``--rate`` per second in a
background thread, runs the streaming pipeline unbounded on the local engine
(beam_jobs/engine.py), prints a progress line every second, and on Ctrl-C or
after ``--duration`` seconds stops the read, lets the pipeline drain, stops
what it started and prints a summary whose counts must balance.

  python -m beam_jobs.demo --duration 30 --rate 2000
"""

import argparse
import logging
import os
import signal
import sys
import threading
import time
import uuid
from typing import Optional

import apache_beam as beam
import orjson
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from confluent_kafka import Producer

from beam_jobs import engine as engine_lib
from beam_jobs import local_broker
from transforms.kafka import ReadFromKafka, admin

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'demo'


class RateProducer(threading.Thread):
  """Produces demo events at a steady rate until stopped."""

  def __init__(self, client_config: dict, topic: str, rate: float,
               make_event):
    super().__init__(name='demo-producer', daemon=True)
    self._producer = Producer(dict(client_config, **{'linger.ms': 5}))
    self._topic = topic
    self._rate = rate
    self._make_event = make_event
    self._halt = threading.Event()
    self.produced = 0
    self.failed = 0

  def _on_delivery(self, err, unused_msg):
    if err is not None:
      self.failed += 1

  def run(self):
    start = time.monotonic()
    while not self._halt.is_set():
      due = int((time.monotonic() - start) * self._rate)
      while self.produced < due:
        key, value = self._make_event(self.produced)
        try:
          self._producer.produce(self._topic, key=key, value=value,
                                 on_delivery=self._on_delivery)
        except BufferError:
          self._producer.poll(0.01)
          continue
        self.produced += 1
      self._producer.poll(0)
      time.sleep(0.01)
    remaining = self._producer.flush(30)
    self.failed += remaining

  def stop(self):
    self._halt.set()
    self.join()


def _demo_event(i: int) -> tuple[bytes, bytes]:
  event = {'event_id': f'e{i}', 'event_time': time.time(), 'key': f'det-{i % 4}'}
  return event['event_id'].encode(), orjson.dumps(event)


class _CountWindow(beam.DoFn):
  """Prints one line per fired window and counts what it saw."""

  def __init__(self):
    self.windows = beam.metrics.Metrics.counter(_NAMESPACE, 'windows_fired')
    self.events = beam.metrics.Metrics.counter(_NAMESPACE, 'events_windowed')

  def process(self, count, window=beam.DoFn.WindowParam):
    self.windows.inc()
    self.events.inc(count)
    print(f'  window {window.start.to_utc_datetime():%H:%M:%S}-'
          f'{window.end.to_utc_datetime():%H:%M:%S}: {count} events',
          flush=True)
    yield count


def _build_pipeline(p, consumer_config: dict, topic: str, window_s: float):
  return (p
          | 'ReadEvents' >> ReadFromKafka(consumer_config, topic,
                                          start='committed',
                                          max_batch_records=1000,
                                          idle_timeout_s=2.0)
          | 'ChunkSizes' >> beam.Map(len)
          | 'WindowIntoFixed' >> beam.WindowInto(
              beam.window.FixedWindows(window_s))
          | 'CountPerWindow' >> beam.CombineGlobally(sum).without_defaults()
          | 'PrintWindow' >> beam.ParDo(_CountWindow()))


def _counter(result, name: str) -> int:
  try:
    res = result.metrics().query(MetricsFilter().with_name(name))
  except Exception:  # pylint: disable=broad-except
    return 0
  return sum(c.committed or 0 for c in res['counters'])


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='run_local.sh',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--duration', type=float, default=0,
                      help='seconds to run; 0 = until Ctrl-C (default: 0)')
  parser.add_argument('--rate', type=float, default=1000,
                      help='events produced per second (default: 1000)')
  parser.add_argument('--broker-kind', choices=local_broker.KINDS,
                      default=local_broker.DEFAULT_KIND,
                      help='embedded broker (default: %(default)s)')
  parser.add_argument('--partitions', type=int, default=4,
                      help='partitions of the demo topic (default: 4)')
  parser.add_argument('--window-s', type=float, default=2.0,
                      help='event-time window size in seconds (default: 2)')
  args = parser.parse_args(argv)
  if args.rate <= 0:
    parser.error('--rate must be > 0')
  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')
  logging.getLogger('beam_jobs').setLevel(logging.INFO)

  broker = None
  bootstrap = os.environ.get('KAFKA_BOOTSTRAP_SERVERS')
  try:
    if bootstrap:
      client_config = {'bootstrap.servers': bootstrap}
      print(f'using Kafka at {bootstrap} (KAFKA_BOOTSTRAP_SERVERS)')
    else:
      broker = local_broker.start(args.broker_kind, port=None)
      client_config = broker.client_config()
      print(f'started embedded {broker.kind} broker at '
            f'{broker.bootstrap_servers} (pid {broker.pid})')
    client_config['log_level'] = 0  # librdkafka's own reconnect noise
    run_id = uuid.uuid4().hex[:8]
    topic = f'demo-events-{run_id}'
    admin.create_topic(client_config, topic, args.partitions)
    print(f'topic {topic} ({args.partitions} partitions); producing '
          f'{args.rate:.0f} events/s')

    options = PipelineOptions(['--streaming'])
    engine = engine_lib.select_engine(options)
    print(f'engine: {engine.name}')
    p = beam.Pipeline(runner=engine.runner, options=options)
    _build_pipeline(p, dict(client_config, **{'group.id': f'demo-{run_id}',
                                            'auto.offset.reset': 'earliest'}),
                    topic, args.window_s)
    producer = RateProducer(client_config, topic, args.rate, _demo_event)
    producer.start()
    result = p.run()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    t0 = time.monotonic()
    try:
      while not stop.is_set():
        if args.duration and time.monotonic() - t0 >= args.duration:
          break
        stop.wait(1.0)
        read = _counter(result, 'records')
        print(f'[{time.monotonic() - t0:5.0f}s] produced {producer.produced} '
              f'read {read}', flush=True)
    except KeyboardInterrupt:
      print('\ninterrupted: stopping')
    producer.stop()
    # Let the read catch up with the last produced events, then stop it:
    # windows fire, and offsets are committed once everything has drained.
    deadline = time.monotonic() + 30
    while (_counter(result, 'records') < producer.produced
           and time.monotonic() < deadline):
      time.sleep(0.2)
    result.stop_reading()
    state = result.wait_until_finish()
    read = _counter(result, 'records')
    windowed = _counter(result, 'events_windowed')
    print(f'\nsummary: pipeline {state}; produced {producer.produced} '
          f'(failed deliveries {producer.failed}), read {read}, counted in '
          f'windows {windowed}, windows fired '
          f'{_counter(result, "windows_fired")}')
    balanced = producer.produced == read == windowed and not producer.failed
    print('counts balance' if balanced else 'COUNTS DO NOT BALANCE')
    return 0 if balanced else 1
  finally:
    if broker is not None:
      local_broker.stop(broker)
      print(f'stopped embedded broker (pid {broker.pid})')


if __name__ == '__main__':
  sys.exit(main())
