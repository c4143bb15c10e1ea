"""Where a read cycle of score_stream goes, step by step (local runner).

The streaming job runs in cycles on the local runner: one read, then every
step's bundle, then the next read (docs/latency.md). This runs the job
(``beam_jobs.score_stream``, embedded broker, demo model) at a steady input
rate and times, inside the job, what the bundle-based runner spends on each
step: per step, bundles run, milliseconds per bundle in all (the runner's
task: evaluator set-up, the elements, finish, the result's bookkeeping) and
of that the result's bookkeeping (watermarks, bundle commits), and elements
per bundle. Counting starts after a warm-up and ends when the input does.

Usage::

  python -m bench.step_costs --rate 2000 --seconds 40 --warmup_s 10

The timing wraps two methods of Beam's executor in the job's process only
(this tool's child process), never in the product's code.
"""

import argparse
import atexit
import collections
import json
import os
import runpy
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

from beam_jobs import demo, local_broker
from bench import latency_bench
from bench import score_stream_bench as ssb

_OUT_ENV = 'STEP_COSTS_OUT'
# A file the bench creates when counting should start (after the warm-up).
_START_ENV = 'STEP_COSTS_START'


def _instrumented_job(argv: list[str]) -> None:
  """In the job's process: time the executor's tasks per step, write them
  as JSON at exit, run score_stream with ``argv``."""
  from apache_beam.runners.direct import executor  # pylint: disable=import-outside-toplevel

  totals: dict = collections.defaultdict(lambda: [0, 0.0, 0.0, 0])
  lock = threading.Lock()
  counting = threading.Event()
  attempt_call = executor.TransformExecutor.attempt_call
  handle_result = executor._CompletionCallback.handle_result  # pylint: disable=protected-access

  def timed_attempt_call(self, *args):
    started = time.perf_counter()
    try:
      return attempt_call(self, *args)
    finally:
      if counting.is_set():
        bundle = self._input_bundle  # pylint: disable=protected-access
        elements = (len(list(bundle.get_elements_iterable()))
                    if bundle is not None else 0)
        with lock:
          row = totals[self._applied_ptransform.full_label]  # pylint: disable=protected-access
          row[0] += 1
          row[1] += time.perf_counter() - started
          row[3] += elements

  def timed_handle_result(self, transform_executor, *args):
    started = time.perf_counter()
    try:
      return handle_result(self, transform_executor, *args)
    finally:
      if counting.is_set():
        with lock:
          totals[transform_executor._applied_ptransform.full_label][2] += (  # pylint: disable=protected-access
              time.perf_counter() - started)

  executor.TransformExecutor.attempt_call = timed_attempt_call
  executor._CompletionCallback.handle_result = timed_handle_result  # pylint: disable=protected-access
  window = {}

  def start_counting():
    while not os.path.exists(os.environ[_START_ENV]):
      time.sleep(0.05)
    window['start'] = time.monotonic()
    counting.set()

  def write():
    counting.clear()
    with lock:
      steps = {label: row[:] for label, row in totals.items()}
    with open(os.environ[_OUT_ENV], 'w', encoding='utf-8') as f:
      json.dump({'seconds': time.monotonic() - window.get('start', 0.0),
                 'steps': steps}, f)

  threading.Thread(target=start_counting, daemon=True).start()
  atexit.register(write)
  sys.argv = ['score_stream'] + argv
  runpy.run_module('beam_jobs.score_stream', run_name='__main__')


def _table(result: dict) -> str:
  steps = result['steps']
  cycles = max((row[0] for label, row in steps.items()
                if label.startswith('ReadFromKafka')), default=0)
  lines = [f'{cycles:,} reads in {result["seconds"]:.1f} s counted; ms per '
           f'bundle (all / of which result bookkeeping), elements per bundle',
           f'{"bundles":>8} {"ms":>7} {"book":>6} {"elems":>6}  step']
  per_cycle = 0.0
  for label, (n, total, book, elements) in sorted(
      steps.items(), key=lambda kv: -kv[1][1]):
    if not n:
      continue
    lines.append(f'{n:8,} {1000 * total / n:7.3f} {1000 * book / n:6.3f} '
                 f'{elements / n:6.2f}  {label}')
    per_cycle += total
  if cycles:
    lines.append(f'all steps per read cycle: {1000 * per_cycle / cycles:.2f} '
                 f'ms')
  return '\n'.join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  parser.add_argument('--rate', type=float, default=2000,
                      help='input events/s')
  parser.add_argument('--seconds', type=float, default=40,
                      help='seconds of steady input')
  parser.add_argument('--warmup_s', type=float, default=10,
                      help='seconds of input before counting starts')
  parser.add_argument('--broker_kind', choices=('noida', 'tansu'),
                      default='noida', help='embedded broker')
  parser.add_argument('--model_dir', default=demo.DEFAULT_MODEL_DIR,
                      help='model root; a demo model is trained if empty')
  args = parser.parse_args(argv)
  if args.warmup_s >= args.seconds:
    parser.error('--warmup_s must be shorter than --seconds')
  print(demo.ensure_demo_model(args.model_dir), flush=True)
  broker, config = ssb.bench_cluster(args.broker_kind)
  work = tempfile.mkdtemp(prefix='step-costs-')
  out, marker = os.path.join(work, 'steps.json'), os.path.join(work, 'start')
  log_path = os.path.join(work, 'job.log')
  try:
    topics = ssb.topic_maker(config, 'steps')('cycle')
    watcher = latency_bench.LatencyWatcher(config, topics['out'])
    watcher.start()
    job = ssb.job_args(config['bootstrap.servers'], config, topics,
                       args.model_dir, f'steps-{os.getpid()}')
    job[1:3] = ['-m', 'bench.step_costs', '--_job']
    producer = ssb.PacedProducer(config, topics['in'], args.rate,
                                 args.seconds, first_index=10**9)
    with open(log_path, 'w', encoding='utf-8') as log:
      proc = subprocess.Popen(job, stdout=log, stderr=log, env=dict(
          os.environ, **{_OUT_ENV: out, _START_ENV: marker}))
      try:
        _wait_for_first_prediction(config, topics['in'], watcher, log_path)
        producer.start()
        time.sleep(args.warmup_s)
        watcher.take()
        open(marker, 'w', encoding='utf-8').close()
        producer.join()
        time.sleep(1.0)
        rows = watcher.take()
      finally:
        proc.terminate()
        proc.wait(60)
    watcher.stop()
    with open(out, encoding='utf-8') as f:
      result = json.load(f)
    latency = (rows[:, 0] - rows[:, 1]) * 1000
    print(f'input {args.rate:g} events/s for {args.seconds:g} s, counted '
          f'after {args.warmup_s:g} s: {len(rows):,} predictions, p50 '
          f'{np.percentile(latency, 50):.1f} ms, p99 '
          f'{np.percentile(latency, 99):.0f} ms; job log {log_path}')
    print(_table(result))
  finally:
    if broker is not None:
      local_broker.stop(broker)


def _wait_for_first_prediction(config, topic, watcher, log_path) -> None:
  """One event at a time until the job's first prediction arrives."""
  deadline = time.monotonic() + 120
  index = 10**8
  while watcher.first_at is None:
    if time.monotonic() > deadline:
      raise RuntimeError(f'no prediction within 120 s; job log: {log_path}')
    probe = ssb.PacedProducer(config, topic, 1, 1, first_index=index)
    probe.start()
    probe.join()
    index += 1
    time.sleep(0.5)


if __name__ == '__main__':
  if sys.argv[1:2] == ['--_job']:
    _instrumented_job(sys.argv[2:])
  else:
    main()
