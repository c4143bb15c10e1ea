"""The page's JSON: every panel's figures from the aggregates, the offset
samples, the model directory and the control topic.

Built on each request from bounded state (the bucket ring, the offset
samples), so its cost does not depend on how much the topics hold. The
``summary`` part is also what ``--once`` prints and checks thresholds on.
"""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

from beam_jobs.status import buckets as bk
from beam_jobs.status.aggregate import AggregateView

MAX_LAG_SERIES = 16
LATENCY_QS = (0.5, 0.9, 0.99)
SCORE_QS = (0.1, 0.5, 0.9)
# Control-record fields that name a version's role (or *_version fields).
ROLE_FIELDS = ('primary', 'canary', 'shadow')
# metrics.json fields shown in the model table (all of them go to JSON).
METRIC_FIELDS = ('accuracy', 'auc', 'loss', 'examples', 'created', 'config')


@dataclasses.dataclass(frozen=True)
class Topics:
  """What the page watches."""
  group: str
  inputs: tuple
  outputs: tuple
  dead_letters: tuple
  control: Optional[str]


def _f(x) -> Optional[float]:
  """A JSON-safe float (None for NaN/inf/None)."""
  if x is None:
    return None
  x = float(x)
  return x if math.isfinite(x) else None


def _rates(times: list, totals: list) -> list:
  out = [None]
  for i in range(1, len(times)):
    dt = times[i] - times[i - 1]
    if totals[i] is None or totals[i - 1] is None or dt <= 0:
      out.append(None)
    else:
      out.append(max(0.0, (totals[i] - totals[i - 1]) / dt))
  return out


def throughput(samples: list, topics: Topics) -> dict:
  """Records per second between consecutive offset samples, per topic
  (input, consumed by the group, output, dead letters)."""
  times = [s.time for s in samples]
  series = []

  def add(name, role, totals):
    series.append({'name': name, 'role': role,
                   'values': _rates(times, totals)})

  for t in topics.inputs:
    add(f'{t} (in)', 'in', [sum(s.ends.get(t, {}).values()) for s in samples])
    add(f'{t} consumed by {topics.group}', 'consumed',
        [None if not s.committed.get(t) or None in s.committed[t].values()
         else sum(s.committed[t].values()) for s in samples])
  for t in topics.outputs:
    add(f'{t} (predictions)', 'out',
        [sum(s.ends.get(t, {}).values()) for s in samples])
  for t in topics.dead_letters:
    add(f'{t} (dead letters)', 'dead_letters',
        [sum(s.ends.get(t, {}).values()) for s in samples])
  latest = {x['name']: (x['values'][-1] if x['values'] else None)
            for x in series}
  ends = samples[-1].ends if samples else {}
  return {'t': times, 'series': series, 'latest': latest,
          'records': {t: sum(p.values()) for t, p in ends.items()}}


def lag(samples: list, topics: Topics) -> dict:
  """Lag per input partition per sample; the current rows as
  beam_jobs.lag prints them (a partition without a committed offset
  counts its whole log)."""
  times = [s.time for s in samples]
  names, per_sample = [], []
  for s in samples:
    row = {}
    for t in topics.inputs:
      for p, end in s.ends.get(t, {}).items():
        done = s.committed.get(t, {}).get(p)
        row[(t, p)] = max(0, end - (done or 0))
    per_sample.append(row)
  keys = sorted({k for row in per_sample for k in row})
  # The partitions with the most lag now, when there are many.
  if len(keys) > MAX_LAG_SERIES and per_sample:
    keys = sorted(keys, key=lambda k: -per_sample[-1].get(k, 0)
                  )[:MAX_LAG_SERIES]
    keys.sort()
  series = [{'name': f'{t}/{p}', 'values': [r.get((t, p)) for r in
                                           per_sample]} for t, p in keys]
  series.append({'name': 'total', 'values': [sum(r.values()) if r else None
                                             for r in per_sample]})
  rows = []
  if samples:
    last = samples[-1]
    for t in topics.inputs:
      for p in sorted(last.ends.get(t, {})):
        end = last.ends[t][p]
        done = last.committed.get(t, {}).get(p)
        rows.append({'topic': t, 'partition': p, 'committed': done,
                     'end': end, 'lag': max(0, end - (done or 0))})
  return {'t': times, 'series': series, 'partitions': rows,
          'total': sum(r['lag'] for r in rows) if rows else None}


def _window_hist(arrays: np.ndarray, window: slice) -> np.ndarray:
  return arrays[window].sum(axis=0)


def latency(view: AggregateView, window_s: float) -> dict:
  """Percentiles per bucket and over the last ``window_s``, for
  scored_time - event_time and read_time - event_time."""
  out = {'t': view.starts.tolist()}
  w = view.last(window_s)
  for name, hist in (('scored', view.latency_scored),
                     ('read', view.latency_read)):
    per_bucket = bk.latency_percentiles(hist, LATENCY_QS)
    overall = bk.latency_percentiles(_window_hist(hist, w), LATENCY_QS)
    out[name] = {
        'per_bucket': {f'p{int(q * 100)}': v for q, v in
                       zip(LATENCY_QS, per_bucket)},
        'window': {f'p{int(q * 100)}': v[0] for q, v in
                   zip(LATENCY_QS, overall)},
        'count': int(hist[w].sum())}
  return out


def dead_letters(view: AggregateView, window_s: float) -> dict:
  w = view.last(window_s)
  in_window = int(view.dead_letters[w].sum())
  predictions = int(view.predictions[w].sum())
  seen = in_window + predictions
  return {
      't': view.starts.tolist(),
      'by_reason': {r: a.tolist() for r, a in sorted(view.reasons.items())},
      'window_by_reason': {r: int(a[w].sum()) for r, a in
                           sorted(view.reasons.items()) if a[w].sum()},
      'totals': dict(sorted(view.reason_totals.items())),
      'total': view.dead_letters_total,
      'window': in_window,
      'rate': in_window / seen if seen else None,
      'recent': [dataclasses.asdict(d) for d in reversed(view.recent)],
  }


def scores(view: AggregateView, window_s: float) -> dict:
  """Per version series: score percentiles per bucket (drift), histograms
  of the last window and of all buckets, live accuracy/AUC."""
  w = view.last(window_s)
  out = {'t': view.starts.tolist(), 'edges': bk.SCORE_EDGES.tolist(),
         'series': {}}
  for name, s in sorted(view.series.items()):
    pct = bk.score_percentiles(s.scores, SCORE_QS)
    recent, everything = s.scores[w].sum(axis=0), s.scores.sum(axis=0)
    pos_w, neg_w = s.pos[w].sum(axis=0), s.neg[w].sum(axis=0)
    out['series'][name] = {
        'version': s.version, 'role': s.role, 'total': s.total,
        'labelled': s.labelled, 'last_time': _f(s.last_time),
        'window_count': int(recent.sum()),
        'per_bucket': {f'p{int(q * 100)}': v for q, v in zip(SCORE_QS, pct)},
        'hist_window': (recent / max(1, recent.sum())).tolist(),
        'hist_all': (everything / max(1, everything.sum())).tolist(),
        'accuracy': [bk.accuracy(p, n) for p, n in zip(s.pos, s.neg)],
        'auc': [bk.auc(p, n) for p, n in zip(s.pos, s.neg)],
        'window_accuracy': bk.accuracy(pos_w, neg_w),
        'window_auc': bk.auc(pos_w, neg_w),
        'window_labelled': int(pos_w.sum() + neg_w.sum()),
    }
  return out


def _deployment_roles(deployments: dict) -> dict:
  """version -> ['<deployment>:<role>', ...] from control records' fields
  named primary/canary/shadow or <role>_version holding a version."""
  roles: dict = {}
  for name, entry in sorted(deployments.items()):
    record = entry['record']
    if not isinstance(record, dict):
      continue
    for field, value in record.items():
      role = field[:-len('_version')] if field.endswith('_version') else (
          field if field in ROLE_FIELDS else None)
      if role and isinstance(value, int) and not isinstance(value, bool):
        roles.setdefault(value, []).append(f'{name}:{role}')
  return roles


def models(versions: list, score_view: dict, deployments: dict,
           window_s: float, now: float) -> dict:
  """The model table: versions in the model directory and versions seen
  in predictions, with metrics, roles and live figures."""
  by_version: dict = {}
  for v in versions:
    by_version[v['version']] = {
        'version': v['version'], 'complete': v['complete'],
        'metrics': v['metrics'], 'in_model_dir': True}
  dep_roles = _deployment_roles(deployments)
  for name, s in score_view['series'].items():
    row = by_version.setdefault(s['version'], {
        'version': s['version'], 'complete': None, 'metrics': {},
        'in_model_dir': False})
    live = row.setdefault('live', [])
    recent = s['last_time'] is not None and now - s['last_time'] <= window_s
    live.append({
        'series': name, 'role': s['role'] or 'serving', 'recent': recent,
        'predictions': s['total'], 'window_predictions': s['window_count'],
        'accuracy': s['window_accuracy'], 'auc': s['window_auc'],
        'labelled': s['window_labelled']})
  for version in dep_roles:
    by_version.setdefault(version, {
        'version': version, 'complete': None, 'metrics': {},
        'in_model_dir': False})
  rows = []
  for version, row in by_version.items():
    serving = sorted({x['role'] for x in row.get('live', []) if x['recent']})
    row['serving'] = serving + dep_roles.get(version, [])
    row.setdefault('live', [])
    rows.append(row)
  rows.sort(key=lambda r: -(r['version'] if r['version'] is not None
                            else -1))
  return {'versions': rows,
          'deployments': {k: v for k, v in sorted(deployments.items())}}


def summary(th: dict, lg: dict, dl: dict, lat: dict, mdl: dict,
            topics: Topics, window_s: float) -> dict:
  """The headline figures (the page's top row and ``--once``)."""
  latest = th['latest']

  def rate(role):
    values = [v for x in th['series'] if x['role'] == role
              for v in [latest[x['name']]] if v is not None]
    return sum(values) if values else None

  top = max(dl['window_by_reason'].items(), key=lambda kv: kv[1],
            default=(None, 0))
  return {
      'window_s': window_s,
      'in_per_s': rate('in'), 'consumed_per_s': rate('consumed'),
      'predictions_per_s': rate('out'),
      'dead_letters_per_s': rate('dead_letters'),
      'lag': lg['total'],
      'lag_max_partition': max((r['lag'] for r in lg['partitions']),
                               default=None),
      'dead_letters_window': dl['window'],
      'dead_letter_rate': dl['rate'],
      'top_reason': top[0],
      'latency_p50_s': lat['scored']['window']['p50'],
      'latency_p99_s': lat['scored']['window']['p99'],
      'read_latency_p50_s': lat['read']['window']['p50'],
      'read_latency_p99_s': lat['read']['window']['p99'],
      'serving': {str(r['version']): r['serving'] for r in mdl['versions']
                  if r['serving']},
      'group': topics.group,
  }


def build(view: AggregateView, samples: list, versions: list,
          deployments: dict, topics: Topics, *, window_s: float,
          collector: dict) -> dict:
  """The whole JSON document of /api/status."""
  th = throughput(samples, topics)
  lg = lag(samples, topics)
  dl = dead_letters(view, window_s)
  lat = latency(view, window_s)
  sc = scores(view, window_s)
  mdl = models(versions, sc, deployments, window_s, view.now)
  return {
      'now': view.now, 'bucket_s': view.bucket_s,
      'topics': dataclasses.asdict(topics),
      'summary': summary(th, lg, dl, lat, mdl, topics, window_s),
      'throughput': th, 'lag': lg, 'dead_letters': dl, 'latency': lat,
      'scores': sc, 'models': mdl,
      'collector': dict(collector, predictions_counted=view.predictions_total,
                        dead_letters_counted=view.dead_letters_total),
  }
