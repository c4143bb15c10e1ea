"""What --max_delay_s and --allowed_lateness_s cost and save, measured.

Four producers write events that reach Kafka up to ``--disorder_s`` seconds
out of order (each record stamped ``now - U(0, disorder)``, so partitions
and records within them are out of order), at ``--rate`` events/s for
``--seconds``, with short windows (``--window_size_s``, default 2 s, so many
windows close during a run). For each setting the job runs unbounded on
the local engine with a file sink, and this prints the share of events
dead-lettered as too late, the share flagged late, and how long after a
window's end its prediction file appeared (what a longer watermark delay
costs; window state is held for that long plus the allowed lateness).

  python -m bench.lateness_defaults [--disorder_s 3] [--seconds 8]
"""

import argparse
import glob
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from beam_jobs import local_broker, score_stream
from models import susy
from transforms.kafka import admin

SETTINGS = ((0.0, 0.0), (2.0, 0.0), (5.0, 0.0), (5.0, 30.0), (10.0, 0.0))


def _events(rate: float, seconds: float, disorder_s: float, seed: int):
  rng = random.Random(seed)
  n = int(rate * seconds)
  data = susy.generate(n, seed=seed)
  for i, event in enumerate(susy.to_events(data, rate=rate)):
    yield i, event, rng.uniform(0.0, disorder_s)


def _file_delays(out_path: str, created: dict) -> list[float]:
  """Seconds between each window's end and its first file's appearance."""
  delays = []
  for path, seen_at in created.items():
    m = re.search(r'-(\d{8}T\d{6}(?:\.\d+)?Z)-pane-', os.path.basename(path))
    if not m:
      continue
    end = time.mktime(time.strptime(m.group(1)[:15], '%Y%m%dT%H%M%S')) - (
        time.timezone)
    delays.append(seen_at - end)
  return delays


def run_setting(info, model_dir: str, max_delay_s: float, lateness_s: float,
                *, rate: float, seconds: float, disorder_s: float,
                window_s: float) -> dict:
  config = dict(info)
  tag = f'{int(max_delay_s)}-{int(lateness_s)}-{int(time.time() * 1000)}'
  topics = {k: f'lateness-{k}-{tag}' for k in ('in', 'out', 'dlq')}
  for name, topic in topics.items():
    admin.create_topic(config, topic, 4 if name == 'in' else 1,
                       config={'retention.ms': '-1'})
  out = tempfile.mkdtemp(prefix='lateness-')
  args = ['--bootstrap_servers', config['bootstrap.servers'],
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'], '--start', 'earliest',
          '--consumer_group', f'g-{tag}', '--model_dir', model_dir,
          '--window_size_s', str(window_s), '--idle_timeout_s', '1',
          '--max_delay_s', str(max_delay_s),
          '--allowed_lateness_s', str(lateness_s), '--output_path', out,
          '--log_level', 'WARNING']
  args += [f'--kafka_config={k}={v}' for k, v in config.items()
           if k != 'bootstrap.servers']
  result = score_stream.run(args, block=False)
  created: dict = {}
  stop = threading.Event()

  def watch():
    while not stop.is_set():
      now = time.time()
      for path in glob.glob(os.path.join(out, '*.jsonl')):
        created.setdefault(path, now)
      time.sleep(0.05)

  watcher = threading.Thread(target=watch, daemon=True)
  watcher.start()
  producer = Producer(dict(config, **{'linger.ms': 5}))
  t0 = time.time()
  n = 0
  for i, event, lag in _events(rate, seconds, disorder_s, seed=len(created)):
    while time.time() < t0 + i / rate:
      time.sleep(0.002)
    event['event_time'] = time.time() - lag
    producer.produce(topics['in'], value=orjson.dumps(event),
                     key=event['event_id'].encode(), partition=i % 4)
    producer.poll(0)
    n += 1
  producer.flush(30)
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:
    done = sum(admin.end_offsets(config, topics['out']).values()) + sum(
        admin.end_offsets(config, topics['dlq']).values())
    if done >= n:
      break
    time.sleep(0.5)
  time.sleep(max_delay_s + lateness_s / 10 + 2)
  result.stop_reading()
  result.wait_until_finish()
  stop.set()
  watcher.join()
  late = _count_late(config, topics['out'])
  too_late = sum(admin.end_offsets(config, topics['dlq']).values())
  delays = _file_delays(out, created)
  return {'events': n, 'too_late': too_late, 'late': late,
          'close_delay_p50': statistics.median(delays) if delays else None}


def _count_late(config: dict, topic: str) -> int:
  consumer = Consumer(dict(config, **{'group.id': f'c-{topic}',
                                      'enable.auto.commit': False}))
  ends = admin.end_offsets(config, topic)
  consumer.assign([TopicPartition(topic, p, 0) for p in ends])
  seen, late = 0, 0
  deadline = time.monotonic() + 60
  while seen < sum(ends.values()) and time.monotonic() < deadline:
    for m in consumer.consume(num_messages=1000, timeout=0.5):
      if m.error() is None:
        seen += 1
        late += bool(orjson.loads(m.value())['late'])
  consumer.close()
  return late


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bench.lateness_defaults',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--disorder_s', type=float, action='append',
                      help='out-of-orderness to test, repeatable '
                      '(default: 1 and 3)')
  parser.add_argument('--rate', type=float, default=300.0)
  parser.add_argument('--seconds', type=float, default=8.0)
  parser.add_argument('--window_size_s', type=float, default=2.0)
  args = parser.parse_args(argv)
  from beam_jobs import logs  # pylint: disable=import-outside-toplevel
  logs.configure('WARNING')
  from beam_jobs.demo import ensure_demo_model  # pylint: disable=import-outside-toplevel
  broker = local_broker.start('noida', data_dir=tempfile.mkdtemp())
  try:
    model_dir = tempfile.mkdtemp(prefix='lateness-model-')
    ensure_demo_model(model_dir)
    config = {'bootstrap.servers': broker.bootstrap_servers,
              **local_broker.client_tuning('noida'), 'log_level': 2}
    print(f'{"disorder":>8} {"max_delay_s":>11} {"lateness_s":>10} '
          f'{"events":>7} {"too_late":>9} {"late":>7} '
          f'{"file after window end p50":>26}')
    for disorder in args.disorder_s or [1.0, 3.0]:
      for delay, lateness in SETTINGS:
        r = run_setting(config, model_dir, delay, lateness, rate=args.rate,
                        seconds=args.seconds, disorder_s=disorder,
                        window_s=args.window_size_s)
        close = ('-' if r['close_delay_p50'] is None else
                 f'{r["close_delay_p50"]:.1f} s')
        print(f'{disorder:>7.0f}s {delay:>11g} {lateness:>10g} '
              f'{r["events"]:>7} {100 * r["too_late"] / r["events"]:>8.2f}% '
              f'{100 * r["late"] / r["events"]:>6.2f}% {close:>26}',
              flush=True)
  finally:
    local_broker.stop(broker)
  return 0


if __name__ == '__main__':
  sys.exit(main())
