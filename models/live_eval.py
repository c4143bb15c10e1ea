"""Live evaluation per model version: predictions joined with late labels.

Reads what a scoring job wrote to its prediction topic (rows of
transforms/prediction_rows.py: ``event_id``, ``score``, ``model_version``,
``model_role``, ``shadow_score``, ``shadow_version``, ``event_time``,
``scored_time`` and, when the events carry labels, ``label``) and labels
from either

* the rows' own ``label`` column (the schema's label field: the demo's
  events carry it), or
* a labels topic of JSON records ``{"event_id": ..., "label": 0|1}`` that
  arrive later; a label counts when it arrived within ``horizon_s`` of the
  event's time (the record timestamp minus ``event_time``), later ones are
  ignored (counted as ``late_labels``).

and reports, per (version, role) series (a shadow's scores are their own
series, role ``shadow``): predictions, labelled predictions, AUC,
accuracy at 0.5, log loss (models.train.binary_metrics: the figures
metrics.json holds), mean score and a 10-bin score histogram.
``python -m models.deploy status`` prints it and ``guard`` acts on it.

Reading is bounded: the window ``since`` (epoch seconds) and at most
``max_records`` per partition (the latest), so a long topic costs what the
window holds. Predictions are deduplicated by (event id, version, role): an
at-least-once rewrite is not counted twice.
"""

import dataclasses
import math
import time
import uuid
from typing import Iterable, Mapping, Optional

import numpy as np
import orjson
from confluent_kafka import Consumer, TopicPartition

from transforms.events import SHADOW_ROLE
from transforms.kafka import admin, client_logs, config_refs

HIST_BINS = 10
DEFAULT_HORIZON_S = 3600.0
DEFAULT_MAX_RECORDS = 500_000


@dataclasses.dataclass
class Rows:
  """Prediction columns, one entry per (event, series)."""
  event_id: list
  version: list
  role: list
  score: np.ndarray
  event_time: np.ndarray
  scored_time: np.ndarray
  label: np.ndarray      # NaN where the row has no label

  def __len__(self):
    return len(self.event_id)


@dataclasses.dataclass(frozen=True)
class SeriesReport:
  """Live figures of one (version, role)."""
  version: Optional[int]
  role: str
  predictions: int
  labelled: int
  auc: float
  accuracy: float
  loss: float
  mean_score: float
  histogram: tuple       # fractions per bin of [0, 1]
  first_scored: float
  last_scored: float

  def metric(self, name: str) -> float:
    return getattr(self, name)


def _consumer(client_config: Mapping) -> Consumer:
  config = client_logs.route(config_refs.resolve(client_config))
  config['group.id'] = f'kbi-live-eval-{uuid.uuid4().hex[:8]}'
  config.update({'enable.auto.commit': False, 'fetch.queue.backoff.ms': 1,
                 'queued.max.messages.kbytes': 65536,
                 'receive.message.max.bytes': 1_000_000_000})
  return Consumer(config)


def read_topic(client_config: Mapping, topic: str, *, since: float,
               max_records: int = DEFAULT_MAX_RECORDS,
               timeout_s: float = 60.0) -> list:
  """(value, timestamp seconds) of the records of ``topic`` written since
  ``since`` (at most ``max_records`` per partition, the latest), read to
  the end offsets the topic had when called."""
  ends = admin.end_offsets(client_config, topic, timeout_s=timeout_s)
  consumer = _consumer(client_config)
  try:
    wanted = [TopicPartition(topic, p, int(since * 1000)) for p in ends]
    by_time = {tp.partition: tp.offset for tp in
               consumer.offsets_for_times(wanted, timeout=timeout_s)}
    starts = {}
    for p, end in ends.items():
      start = by_time.get(p, 0)
      if start is None or start < 0:
        start = end  # nothing written since ``since``
      starts[p] = max(start, end - max_records, 0)
    pending = {p for p in ends if starts[p] < ends[p]}
    consumer.assign([TopicPartition(topic, p, starts[p]) for p in pending])
    out = []
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
      for m in consumer.consume(num_messages=10_000, timeout=0.5):
        if m.error() is not None or m.partition() not in pending:
          continue
        if m.offset() < ends[m.partition()]:
          out.append((m.value(), m.timestamp()[1] / 1000.0))
        if m.offset() + 1 >= ends[m.partition()]:
          pending.discard(m.partition())
    return out
  finally:
    consumer.close()


def _float(x) -> float:
  return math.nan if x is None else float(x)


def parse_predictions(values: Iterable[bytes], *, since: float = -math.inf
                      ) -> tuple[Rows, int]:
  """Prediction rows -> Rows (shadow scores as rows of role shadow),
  deduplicated; rows scored before ``since`` are left out. Returns (rows,
  values that are not prediction rows)."""
  seen: dict = {}
  bad = 0
  for value in values:
    try:
      r = orjson.loads(value)
      eid, score = r['event_id'], r['score']
    except (orjson.JSONDecodeError, KeyError, TypeError):
      bad += 1
      continue
    if not isinstance(r, dict) or score is None:
      bad += 1
      continue
    scored = _float(r.get('scored_time'))
    if scored < since:
      continue
    common = (_float(r.get('event_time')), scored, _float(r.get('label')))
    role = r.get('model_role') or 'primary'
    seen[(eid, r.get('model_version'), role)] = (float(score),) + common
    shadow = r.get('shadow_score')
    if r.get('shadow_version') is not None and shadow is not None:
      seen[(eid, r['shadow_version'], SHADOW_ROLE)] = (float(shadow),) + common
  keys = list(seen)
  cols = np.asarray(list(seen.values()), np.float64).reshape(-1, 4)
  return Rows(event_id=[k[0] for k in keys], version=[k[1] for k in keys],
              role=[k[2] for k in keys], score=cols[:, 0],
              event_time=cols[:, 1], scored_time=cols[:, 2],
              label=cols[:, 3]), bad


def parse_labels(records: Iterable[tuple]) -> dict:
  """Labels topic records (value, timestamp) -> {event_id: (label, time)};
  the first label of an event wins (a correction is a new event id)."""
  out: dict = {}
  for value, ts in records:
    try:
      doc = orjson.loads(value)
      eid, label = doc['event_id'], float(doc['label'])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
      continue
    if eid not in out and label in (0.0, 1.0):
      out[eid] = (label, ts)
  return out


def join_labels(rows: Rows, labels: Mapping[str, tuple], horizon_s: float
                ) -> int:
  """Sets ``rows.label`` from ``labels`` where a label arrived within
  ``horizon_s`` of the event time; returns how many came later."""
  late = 0
  for i, eid in enumerate(rows.event_id):
    found = labels.get(eid)
    if found is None:
      continue
    label, arrived = found
    if arrived - rows.event_time[i] <= horizon_s:
      rows.label[i] = label
    else:
      late += 1
  return late


def histogram(scores: np.ndarray) -> tuple:
  counts, _ = np.histogram(np.clip(scores, 0.0, 1.0), bins=HIST_BINS,
                           range=(0.0, 1.0))
  total = max(1, int(counts.sum()))
  return tuple(round(c / total, 4) for c in counts.tolist())


def report(rows: Rows) -> list[SeriesReport]:
  """One SeriesReport per (version, role), primary first, then by
  version."""
  from models.train import binary_metrics  # pylint: disable=import-outside-toplevel
  order = {'primary': 0, 'canary': 1, SHADOW_ROLE: 2}
  keys = sorted(set(zip(rows.version, rows.role)),
                key=lambda k: (order.get(k[1], 3), -1 if k[0] is None
                               else k[0]))
  versions = np.asarray([-1 if v is None else v for v in rows.version])
  roles = np.asarray(rows.role, object)
  out = []
  for version, role in keys:
    sel = (versions == (-1 if version is None else version)) & (roles == role)
    scores = rows.score[sel]
    labels = rows.label[sel]
    has = np.isfinite(labels) & np.isfinite(scores)
    nan = math.nan
    auc = accuracy = loss = nan
    if has.any():
      m = binary_metrics(labels[has], scores[has])
      auc, accuracy, loss = m['auc'], m['accuracy'], m['loss']
    finite = scores[np.isfinite(scores)]
    scored = rows.scored_time[sel]
    out.append(SeriesReport(
        version=version, role=role, predictions=int(sel.sum()),
        labelled=int(has.sum()), auc=auc, accuracy=accuracy, loss=loss,
        mean_score=float(finite.mean()) if len(finite) else nan,
        histogram=histogram(finite),
        first_scored=float(np.nanmin(scored)) if len(scored) else nan,
        last_scored=float(np.nanmax(scored)) if len(scored) else nan))
  return out


def evaluate(client_config: Mapping, predictions_topic: str, *,
             since: float, labels_topic: Optional[str] = None,
             horizon_s: float = DEFAULT_HORIZON_S,
             max_records: int = DEFAULT_MAX_RECORDS,
             timeout_s: float = 60.0) -> tuple[list[SeriesReport], dict]:
  """Reads predictions scored since ``since`` (and labels), joins and
  reports. Returns (series, notes: rows read, bad rows, late labels)."""
  values = read_topic(client_config, predictions_topic, since=since,
                      max_records=max_records, timeout_s=timeout_s)
  rows, bad = parse_predictions((v for v, _ in values), since=since)
  late = 0
  if labels_topic:
    # Labels arrive after the predictions: read them up to now.
    labels = parse_labels(read_topic(client_config, labels_topic,
                                     since=since, max_records=max_records,
                                     timeout_s=timeout_s))
    late = join_labels(rows, labels, horizon_s)
  return report(rows), {'records': len(values), 'not_predictions': bad,
                        'late_labels': late}


def _f(x: float, digits: int = 4) -> str:
  return '-' if x is None or not math.isfinite(x) else f'{x:.{digits}f}'


_BARS = ' ▁▂▃▄▅▆▇█'


def spark(hist: tuple) -> str:
  """A histogram as one line of block characters (0..1 left to right)."""
  top = max(hist) if hist and max(hist) > 0 else 1.0
  return ''.join(_BARS[int(round(h / top * (len(_BARS) - 1)))] for h in hist)


def format_table(series: list[SeriesReport]) -> str:
  header = ('version', 'role', 'predictions', 'labelled', 'auc', 'accuracy',
            'log_loss', 'mean_score', 'scores 0..1')
  rows = [(str(s.version), s.role, str(s.predictions), str(s.labelled),
           _f(s.auc), _f(s.accuracy), _f(s.loss), _f(s.mean_score, 3),
           spark(s.histogram)) for s in series]
  widths = [max(len(c) for c in col) for col in zip(header, *rows)]
  line = lambda cells: '  '.join(  # pylint: disable=unnecessary-lambda-assignment
      c.ljust(w) if i in (1, 8) else c.rjust(w)
      for i, (c, w) in enumerate(zip(cells, widths)))
  return '\n'.join([line(header)] + [line(r) for r in rows])


__all__ = ['Rows', 'SeriesReport', 'evaluate', 'format_table',
           'join_labels', 'parse_labels', 'parse_predictions', 'report']
