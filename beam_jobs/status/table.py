"""``--once``: the page's facts as a table for terminals and alerts, and
the thresholds that make the exit status non-zero (like beam_jobs.lag)."""

import datetime
from typing import NamedTuple, Optional

from beam_jobs import lag as lag_lib


class Thresholds(NamedTuple):
  """Exit 1 when any set one is exceeded (None: not checked)."""
  max_lag: Optional[int] = None
  max_dead_letter_rate: Optional[float] = None
  max_latency_p99_s: Optional[float] = None


def _num(x, fmt='{:.1f}') -> str:
  return '-' if x is None else fmt.format(x)


def _seconds(x) -> str:
  if x is None:
    return '-'
  return f'{x * 1000:.0f} ms' if x < 1 else f'{x:.2f} s'


def _metric(metrics: dict, name: str) -> str:
  value = metrics.get(name)
  return f'{value:.4f}' if isinstance(value, float) else _num(value, '{}')


def format_table(doc: dict) -> str:
  """The summary table of a snapshot document (snapshot.build)."""
  s = doc['summary']
  when = datetime.datetime.fromtimestamp(
      doc['now'], datetime.timezone.utc).isoformat(timespec='seconds')
  lines = [f'status at {when} (group {s["group"]}; recent = last '
           f'{s["window_s"]:.0f} s)', '', 'throughput (records/s)']
  latest = doc['throughput']['latest']
  width = max([len(n) for n in latest] + [30])
  for name, value in latest.items():
    lines.append(f'  {name:{width}} {_num(value):>10}')
  lines += ['', 'consumer lag']
  if doc['lag']['partitions']:
    lines += ['  ' + line for line in
              lag_lib.format_table(doc['lag']['partitions']).split('\n')]
  else:
    lines.append('  (no input topic)')
  dl = doc['dead_letters']
  lines += ['', f'dead letters, recent: {dl["window"]} '
            f'(rate {_num(dl["rate"], "{:.2%}")}); since start: '
            f'{dl["total"]}']
  for reason, n in sorted(dl['window_by_reason'].items(),
                          key=lambda kv: -kv[1]):
    lines.append(f'  {reason:30} {n:>10}')
  lat = doc['latency']
  lines += ['', 'latency, recent       p50         p90         p99']
  for name, label in (('scored', 'event -> prediction'),
                      ('read', 'event -> read')):
    w = lat[name]['window']
    lines.append(f'  {label:19} {_seconds(w["p50"]):>10}  '
                 f'{_seconds(w["p90"]):>10}  {_seconds(w["p99"]):>10}')
  lines += ['', 'model versions',
            f'  {"version":>7} {"complete":>8} {"accuracy":>8} {"auc":>8} '
            f'{"serving":24} {"recent":>8} {"live acc":>8} {"live auc":>8}']
  for row in doc['models']['versions']:
    live = row['live']
    recent = sum(x['window_predictions'] for x in live)
    acc = next((x['accuracy'] for x in live if x['accuracy'] is not None),
               None)
    auc = next((x['auc'] for x in live if x['auc'] is not None), None)
    complete = {True: 'yes', False: 'no', None: '-'}[row['complete']]
    lines.append(
        f'  {_num(row["version"], "{}"):>7} {complete:>8} '
        f'{_metric(row["metrics"], "accuracy"):>8} '
        f'{_metric(row["metrics"], "auc"):>8} '
        f'{",".join(row["serving"]) or "-":24} {recent:>8} '
        f'{_num(acc, "{:.4f}"):>8} {_num(auc, "{:.4f}"):>8}')
  if not doc['models']['versions']:
    lines.append('  (no model directory and no predictions)')
  for name, entry in doc['models']['deployments'].items():
    lines.append(f'  deployment {name}: {entry["record"]}')
  c = doc['collector']
  lines += ['', f'read {c["records_read"]} records ({c["skipped"]} '
            f'skipped, {c["unreadable"]} unreadable)']
  return '\n'.join(lines)


def exceeded(doc: dict, thresholds: Thresholds) -> list[str]:
  """One message per threshold exceeded."""
  s = doc['summary']
  out = []
  t = thresholds
  if t.max_lag is not None and (s['lag'] or 0) > t.max_lag:
    out.append(f'lag {s["lag"]} exceeds --max_lag {t.max_lag}')
  if (t.max_dead_letter_rate is not None and s['dead_letter_rate'] is not None
      and s['dead_letter_rate'] > t.max_dead_letter_rate):
    out.append(f'dead-letter rate {s["dead_letter_rate"]:.4f} exceeds '
               f'--max_dead_letter_rate {t.max_dead_letter_rate}')
  if (t.max_latency_p99_s is not None and s['latency_p99_s'] is not None
      and s['latency_p99_s'] > t.max_latency_p99_s):
    out.append(f'latency p99 {s["latency_p99_s"]:.3f} s exceeds '
               f'--max_latency_p99_s {t.max_latency_p99_s}')
  return out
