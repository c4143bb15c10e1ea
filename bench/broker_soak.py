"""Soak: the streaming job against an embedded broker for a long run.

Runs what ``./run_local.sh`` runs, for ``--minutes``: the demo's topics
(with the demo's retention, ``--retention_s``), its paced SUSY-like
producer at ``--rate`` events/s, and ``beam_jobs.score_stream`` on the
local engine as a subprocess (beam_jobs/fault_harness.JobProcess). Every
``--sample_s`` it prints one row: events produced, broker RSS (now and the
highest seen since the last row), data directory and snapshot size, job
lag and job RSS. At the end it stops the producer, lets the job catch up,
stops the job (SIGTERM: drain and commit), stops the broker with
``local_broker.stop`` (noida: waits for the final save) and prints a
summary. Results and the decision they led to: docs/brokers.md.

  python -m bench.broker_soak --broker noida --minutes 30 --rate 3000
  python -m bench.broker_soak --broker tansu --minutes 5 --retention_s 0
"""

import argparse
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from typing import Optional

from beam_jobs import demo
from beam_jobs import local_broker
from beam_jobs import fault_harness as reliability
from transforms.kafka import admin

# Stops the run before a broker that keeps everything in memory takes the
# shared machine down with it.
DEFAULT_MAX_RSS_MB = 8000

HEADER = (f'{"min":>5} {"produced":>9} {"ev/s":>6} {"RSS MB":>7} '
          f'{"peak":>6} {"dir MB":>7} {"snap MB":>7} {"tmp MB":>6} '
          f'{"lag":>8} {"outputs":>9} {"job MB":>6}')

_DELETED = re.compile(rb'offsets \[(\d+), (\d+)\) were deleted by retention')


def rss_mb(pid: int, field: str = 'VmRSS') -> float:
  """A process's resident memory (``VmRSS``) or its peak (``VmHWM``), MB;
  0 once it is gone."""
  try:
    with open(f'/proc/{pid}/status', encoding='ascii') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) / 1024
  except OSError:
    pass
  return 0.0


def deleted_before_read(job_log: str) -> int:
  """Input offsets that retention deleted before the job read them (the
  reader logs each skipped range)."""
  try:
    with open(job_log, 'rb') as f:
      text = f.read()
  except OSError:
    return 0
  return sum(int(b) - int(a) for a, b in _DELETED.findall(text))


def _tail(path: str, lines: int = 40) -> str:
  with open(path, encoding='utf-8', errors='replace') as f:
    return ''.join(f.readlines()[-lines:])


def _outputs(config: dict, topics: dict) -> int:
  """Records written to the predictions and dead-letter topics (their end
  offsets: retention does not lower them)."""
  try:
    return sum(sum(admin.end_offsets(config, topics[name], 10).values())
               for name in ('predictions', 'dead-letters'))
  except Exception:  # pylint: disable=broad-except
    return -1


def _lag(config: dict, group: str, topic: str) -> int:
  return demo.consumer_lag(config, group, topic)


def soak(kind: str, *, minutes: float, rate: float, retention_s: float,
         partitions: int, sample_s: float, model_dir: str, work_dir: str,
         max_rss_mb: float, out=sys.stdout) -> dict:
  """Runs one soak and returns its summary (also printed to ``out``)."""

  def say(line: str) -> None:
    print(line, file=out, flush=True)

  broker = local_broker.start(kind, data_dir=os.path.join(work_dir, 'broker'))
  config = broker.client_config(log_level=0)
  run_id = uuid.uuid4().hex[:8]
  topics = demo.create_topics(config, run_id, partitions=partitions,
                              retention_s=retention_s)
  group = f'soak-{run_id}'
  job_log = os.path.join(work_dir, 'job.log')
  job = reliability.JobProcess(
      demo.job_args(config, topics, group, model_dir=model_dir,
                    window_size_s=10.0), job_log)
  producer = None
  summary = {'broker': kind, 'minutes': minutes, 'rate': rate,
             'retention_s': retention_s, 'aborted': ''}
  peak_rss = peak_dir = 0.0
  try:
    job.start()
    job.wait_until_reading()
    producer = demo.RateProducer(config, topics['events'], rate,
                                 malformed_fraction=0.01)
    producer.start()
    say(f'{kind} broker pid {broker.pid}, data dir {broker.data_dir}; '
        f'{rate:.0f} events/s for {minutes:g} min; topics keep '
        + (f'{retention_s:g} s' if retention_s > 0 else 'everything'))
    say(HEADER)
    t0 = time.monotonic()
    next_row = t0 + sample_s
    last_produced, last_t = 0, t0
    row_peak = 0.0
    while time.monotonic() - t0 < minutes * 60:
      time.sleep(2.0)
      rss = rss_mb(broker.pid)
      row_peak = max(row_peak, rss)
      peak_rss = max(peak_rss, rss)
      usage = local_broker.disk_usage(broker)
      peak_dir = max(peak_dir, usage.data_dir / 2**20)
      if rss > max_rss_mb:
        summary['aborted'] = (f'broker RSS {rss:.0f} MB > --max_rss_mb '
                              f'{max_rss_mb:.0f} after '
                              f'{(time.monotonic() - t0) / 60:.1f} min')
        say('stopping early: ' + summary['aborted'])
        break
      if not job.alive():
        summary['aborted'] = f'job exited with {job.proc.returncode}'
        say('stopping early: ' + summary['aborted'])
        break
      now = time.monotonic()
      if now < next_row:
        continue
      next_row += sample_s
      produced = producer.produced
      say(f'{(now - t0) / 60:5.1f} {produced:>9} '
          f'{(produced - last_produced) / (now - last_t):>6.0f} '
          f'{rss:>7.0f} {row_peak:>6.0f} {usage.data_dir / 2**20:>7.0f} '
          f'{usage.snapshot / 2**20:>7.0f} {usage.partial / 2**20:>6.0f} '
          f'{_lag(config, group, topics["events"]):>8} '
          f'{_outputs(config, topics):>9} {rss_mb(job.proc.pid):>6.0f}')
      last_produced, last_t = produced, now
      row_peak = 0.0
    producer.stop()
    summary['produced'] = producer.produced
    summary['failed_deliveries'] = producer.failed
    caught_up = time.monotonic()
    reliability.wait_for_zero_lag(config, group, topics['events'], 300)
    summary['catch_up_s'] = time.monotonic() - caught_up
    summary['lag_before_stop'] = _lag(config, group, topics['events'])
    summary['job_exit'] = job.stop_gracefully()
    if summary['job_exit'] != 0:
      say(f'job exit {summary["job_exit"]}; the end of its log:\n'
          + _tail(job_log))
    summary['outputs'] = _outputs(config, topics)
    summary['deleted_before_read'] = deleted_before_read(job_log)
    usage = local_broker.disk_usage(broker)
    summary['final_dir_mb'] = usage.data_dir / 2**20
  finally:
    if producer is not None and producer.is_alive():
      producer.stop()
    job.kill_if_alive()
    summary['peak_rss_mb'] = max(peak_rss, rss_mb(broker.pid, 'VmHWM'))
    summary['peak_dir_mb'] = peak_dir
    try:
      result = local_broker.stop(broker)
      summary['stop_s'] = result.seconds
      summary['stop'] = 'saved' if result.saved else 'nothing to save'
      summary['saved_mb'] = result.snapshot_bytes / 2**20
    except local_broker.BrokerError as e:
      summary['stop'] = f'FAILED: {e}'
  _print_summary(summary, say)
  return summary


def _print_summary(s: dict, say) -> None:
  say(f'\nsummary ({s["broker"]}, {s["rate"]:.0f} events/s, '
      f'{s["minutes"]:g} min, retention '
      + (f'{s["retention_s"]:g} s' if s['retention_s'] > 0 else 'none')
      + (f'; ABORTED: {s["aborted"]}' if s['aborted'] else '') + ')')
  if 'produced' in s:
    say(f'  produced {s["produced"]} ({s["failed_deliveries"]} failed '
        f'deliveries); outputs {s["outputs"]} (predictions + dead letters); '
        f'deleted by retention before the job read them '
        f'{s["deleted_before_read"]}')
    say(f'  job caught up in {s["catch_up_s"]:.0f} s (lag '
        f'{s["lag_before_stop"]}), exit {s["job_exit"]}')
  say(f'  broker peak RSS {s["peak_rss_mb"]:.0f} MB; data dir peak '
      f'{s["peak_dir_mb"]:.0f} MB')
  if 'stop_s' in s:
    say(f'  broker stop: {s["stop"]} in {s["stop_s"]:.1f} s'
        + (f' ({s["saved_mb"]:.0f} MB snapshot)' if s['saved_mb'] else ''))
  else:
    say(f'  broker stop: {s["stop"]}')


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bench.broker_soak',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--broker', choices=local_broker.KINDS,
                      default=local_broker.DEFAULT_KIND,
                      help='embedded broker (default: %(default)s)')
  parser.add_argument('--minutes', type=float, default=30,
                      help='minutes of production (default: %(default)s)')
  parser.add_argument('--rate', type=float, default=3000,
                      help='events per second (default: %(default)s)')
  parser.add_argument('--retention_s', type=float,
                      default=demo.DEFAULT_RETENTION_S,
                      help='seconds the topics keep, as run_local.sh\'s '
                      '--retention_s; 0 keeps everything (default: '
                      '%(default)s)')
  parser.add_argument('--partitions', type=int, default=4,
                      help='partitions of the events topic (default: 4)')
  parser.add_argument('--sample_s', type=float, default=60,
                      help='seconds between table rows (default: 60)')
  parser.add_argument('--max_rss_mb', type=float, default=DEFAULT_MAX_RSS_MB,
                      help='stop early above this broker RSS (default: '
                      '%(default)s)')
  parser.add_argument('--model_dir', default=demo.DEFAULT_MODEL_DIR,
                      help='model root; a demo model is trained there if '
                      'empty (default: %(default)s)')
  args = parser.parse_args(argv)
  print(demo.ensure_demo_model(args.model_dir), flush=True)
  work_dir = tempfile.mkdtemp(prefix=f'kbi-soak-{args.broker}-')
  try:
    summary = soak(args.broker, minutes=args.minutes, rate=args.rate,
                   retention_s=args.retention_s, partitions=args.partitions,
                   sample_s=args.sample_s,
                   model_dir=os.path.abspath(args.model_dir),
                   work_dir=work_dir, max_rss_mb=args.max_rss_mb)
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  return 1 if summary['aborted'] or summary['stop'].startswith('FAILED') else 0


if __name__ == '__main__':
  sys.exit(main())
