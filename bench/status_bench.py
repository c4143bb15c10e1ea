"""The status page with 1M+ records on its topics: memory and refresh cost.

Starts an embedded broker, fills a 4-partition prediction topic with
``--records`` prediction rows (transforms/output.py's columns with three
window features and a label, ~480 bytes, scored over the last hour, two
model versions) and a dead-letter topic with 1% as many dead letters, then
runs ``python -m beam_jobs.status`` as a separate process and measures:

  start        seconds from launch until the collector has read the recent
               window (--backfill_records per partition) and its RSS then;
  refresh      /api/status latency (p50/p99 of --requests calls) and size;
  tail         while --live_records more rows are produced as fast as the
               producer can: the collector's read rate, how far behind it
               falls, records skipped, and its peak RSS (sampled);
  full read    the same with --backfill_records above the topic size: the
               whole topic read once at start (aggregation rate, RSS).

  python -m bench.status_bench                     # 1M records
  python -m bench.status_bench --records 200000 --requests 20

Prints one line per measurement and a table; docs/status_page.md keeps the
figures.
"""

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import orjson
from confluent_kafka import Producer

from beam_jobs import local_broker
from transforms.kafka import admin


def _rows(n: int, start: int, now: float):
  rng = random.Random(start)
  for i in range(start, start + n):
    scored = now - 3600 * rng.random()
    event = scored - rng.lognormvariate(0.5, 0.6)
    version = 1 if i % 3 else 2
    score = min(1.0, max(0.0, rng.gauss(0.45 if version == 1 else 0.55, 0.2)))
    row = {'event_id': f'e{i}', 'key': f'det-{i % 8}',
           'window_start': scored - 10, 'window_end': scored,
           'score': score, 'model_version': version, 'event_time': event,
           'read_time': event + 0.2, 'scored_time': scored, 'late': False,
           'win_count': 12}
    for f in ('lepton_1_pT', 'lepton_2_pT', 'missing_energy_magnitude'):
      row[f'win_mean_{f}'] = rng.random()
      row[f'win_std_{f}'] = rng.random()
    row['label'] = float(rng.random() < score)
    yield f'e{i}'.encode(), orjson.dumps(row)


def _fill(config, topic, dlq, n, start, now):
  producer = Producer(dict(config, **{'linger.ms': 50,
                                      'compression.type': 'lz4',
                                      'queue.buffering.max.messages': 500000}))
  for i, (key, value) in enumerate(_rows(n, start, now)):
    while True:
      try:
        producer.produce(topic, value=value, key=key)
        break
      except BufferError:
        producer.poll(0.05)
    if i % 100 == 0:
      reason = ('malformed', 'missing_field', 'wrong_type')[i % 3]
      producer.produce(dlq, value=b'{"event_id": "x"' + value[:200],
                       key=key, headers=[
                           ('dlq.stage', b'parse'),
                           ('dlq.reason', reason.encode()),
                           ('dlq.detail', b'bench'),
                           ('dlq.source', f'kafka:ev/{i % 4}'.encode()),
                           ('dlq.position', str(i).encode()),
                           ('dlq.time', f'{now - 1800:.3f}'.encode())])
    if i % 1000 == 0:
      producer.poll(0)
  assert producer.flush(120) == 0


def _rss(pid: int) -> int:
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  return 0


def _get(url):
  started = time.perf_counter()
  with urllib.request.urlopen(url, timeout=30) as r:
    body = r.read()
  return time.perf_counter() - started, body


def _start_page(bootstrap, config, topic, dlq, backfill):
  cmd = [sys.executable, '-m', 'beam_jobs.status', '--bootstrap_servers',
         bootstrap, '--output_topic', topic, '--dead_letter_topic', dlq,
         '--input_topic', topic, '--port', '0',
         '--backfill_records', str(backfill),
         '--max_behind', str(max(200_000, 2 * backfill))] + [
             f'--kafka_config={k}={v}' for k, v in config.items()
             if k != 'bootstrap.servers']
  started = time.monotonic()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
  url = re.search(r'http://\S+/', proc.stdout.readline()).group(0)
  return proc, url, started


def _wait_read(proc, url, want, started, timeout_s=600):
  peak = 0
  while True:
    peak = max(peak, _rss(proc.pid))
    doc = json.loads(_get(url + 'api/status')[1])
    c = doc['collector']
    if c['records_read'] >= want:
      return time.monotonic() - started, peak, doc
    if time.monotonic() - started > timeout_s:
      raise TimeoutError(c)
    time.sleep(0.2)


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m bench.status_bench',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--records', type=int, default=1_000_000,
                      help='prediction rows on the topic (default: 1000000)')
  parser.add_argument('--live_records', type=int, default=200_000,
                      help='rows produced while the page runs (default: '
                      '200000)')
  parser.add_argument('--requests', type=int, default=50,
                      help='/api/status calls timed (default: 50)')
  parser.add_argument('--broker', choices=local_broker.KINDS,
                      default='noida', help='(default: noida)')
  args = parser.parse_args(argv)
  results = []

  def report(name, text):
    print(f'{name:12} {text}', flush=True)
    results.append((name, text))

  with tempfile.TemporaryDirectory() as tmp:
    info = local_broker.start(args.broker, data_dir=tmp,
                              state_file=os.path.join(tmp, 'b.json'))
    try:
      config = {'bootstrap.servers': info.bootstrap_servers,
                **local_broker.client_tuning(args.broker)}
      topic, dlq = 'predictions', 'dead-letters'
      admin.create_topic(config, topic, 4, config={'retention.ms': '-1'})
      admin.create_topic(config, dlq, 1, config={'retention.ms': '-1'})
      now = time.time()
      started = time.monotonic()
      _fill(config, topic, dlq, args.records, 0, now)
      n_dead = (args.records + 99) // 100
      report('fill', f'{args.records} rows + {n_dead} dead letters in '
             f'{time.monotonic() - started:.1f} s')

      # Default page: the recent window only.
      proc, url, started = _start_page(info.bootstrap_servers, config, topic,
                                       dlq, 10_000)
      try:
        want = 4 * 10_000 + min(n_dead, 10_000)
        took, peak, doc = _wait_read(proc, url, want, started)
        report('start', f'read {doc["collector"]["records_read"]} records '
               f'(the recent window) in {took:.1f} s from launch; RSS '
               f'{_rss(proc.pid) / 2**20:.0f} MiB (peak {peak / 2**20:.0f})')
        times, size = [], 0
        for _ in range(args.requests):
          t, body = _get(url + 'api/status')
          times.append(t)
          size = len(body)
        times.sort()
        report('refresh', f'/api/status p50 {statistics.median(times) * 1e3:.1f}'
               f' ms, p99 {times[int(len(times) * 0.99) - 1] * 1e3:.1f} ms, '
               f'{size / 1024:.0f} KiB')
        base = doc['collector']['records_read']
        peak = [0]
        done = threading.Event()

        def watch():
          while not done.is_set():
            peak[0] = max(peak[0], _rss(proc.pid))
            time.sleep(0.1)

        watcher = threading.Thread(target=watch)
        watcher.start()
        started = time.monotonic()
        _fill(config, topic, dlq, args.live_records, args.records, time.time())
        produced_s = time.monotonic() - started
        took, _, doc = _wait_read(proc, url, base + args.live_records,
                                  started)
        done.set()
        watcher.join()
        c = doc['collector']
        times = [_get(url + 'api/status')[0] for _ in range(10)]
        report('tail', f'{args.live_records} rows produced in {produced_s:.1f}'
               f' s, all read {took:.1f} s after the first; skipped '
               f'{c["skipped"]}; peak RSS {peak[0] / 2**20:.0f} MiB; refresh '
               f'p50 {statistics.median(times) * 1e3:.1f} ms')
      finally:
        proc.terminate()
        proc.wait(30)

      # The whole topic at start.
      total = args.records + args.live_records
      proc, url, started = _start_page(info.bootstrap_servers, config, topic,
                                       dlq, total)
      try:
        took, peak, doc = _wait_read(
            proc, url, total + (total + 99) // 100, started)
        c = doc['collector']
        report('full read', f'{c["records_read"]} records in {took:.1f} s '
               f'({c["records_read"] / took:,.0f}/s incl. start); peak RSS '
               f'{peak / 2**20:.0f} MiB; counted {c["predictions_counted"]} '
               f'predictions')
        times = sorted(_get(url + 'api/status')[0] for _ in range(20))
        report('refresh', f'after the full read: p50 '
               f'{statistics.median(times) * 1e3:.1f} ms')
      finally:
        proc.terminate()
        proc.wait(30)
    finally:
      local_broker.stop(info)
  print('\n| step | figure |\n|---|---|')
  for name, text in results:
    print(f'| {name} | {text} |')


if __name__ == '__main__':
  main()
