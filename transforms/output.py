"""Prediction records: one flat JSON-ready row per scored event.

The same rows go to every sink (Kafka, files, BigQuery); their schema is
derived from the event schema (window feature names) by ``output_columns``.
Times are epoch seconds (floats) so latencies are simple differences:
``scored_time - event_time`` is event-to-prediction latency.
"""

import math
from typing import Sequence

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.metrics import Metrics

from models.handler import ScoredBatch
from transforms.schema import EventSchema

_NAMESPACE = 'output'

# (name, type) with types: STRING, FLOAT, INTEGER, BOOLEAN.
BASE_COLUMNS = (
    ('event_id', 'STRING'), ('key', 'STRING'),
    ('window_start', 'FLOAT'), ('window_end', 'FLOAT'),
    ('score', 'FLOAT'), ('model_version', 'INTEGER'),
    ('event_time', 'FLOAT'), ('read_time', 'FLOAT'), ('scored_time', 'FLOAT'),
    ('late', 'BOOLEAN'), ('win_count', 'INTEGER'),
)


def output_columns(schema: EventSchema) -> list[tuple[str, str]]:
  """The columns of a prediction record for events of ``schema``."""
  cols = list(BASE_COLUMNS)
  for name in schema.window_features:
    cols.append((f'win_mean_{name}', 'FLOAT'))
    cols.append((f'win_std_{name}', 'FLOAT'))
  if schema.label_field:
    cols.append(('label', 'FLOAT'))
  return cols


def _finite_or_none(x: float):
  return x if math.isfinite(x) else None


def prediction_rows(scored: ScoredBatch,
                    window_feature_names: Sequence[str],
                    with_label: bool) -> list[dict]:
  """The prediction records of one ScoredBatch, in row order."""
  b = scored.batch
  n = len(b)
  start, end = b.window if b.window is not None else (-math.inf, math.inf)
  start = _finite_or_none(float(start))
  end = _finite_or_none(float(end))
  scores = scored.scores
  if scores.ndim > 1:
    scores = scores[:, 0]
  scores = scores.tolist()
  times = b.event_time.tolist()
  read = b.read_time.tolist()
  late = (b.late if b.late is not None else np.zeros(n, bool)).tolist()
  counts = (b.win_count if b.win_count is not None else
            np.zeros(n, np.int64)).tolist()
  means = b.win_mean.tolist() if b.win_mean is not None else None
  stds = b.win_std.tolist() if b.win_std is not None else None
  labels = b.labels.tolist() if (with_label and b.labels is not None) else None
  version = int(scored.model_version)
  scored_time = float(scored.scored_time)
  rows = []
  for i in range(n):
    row = {
        'event_id': b.ids[i], 'key': b.keys[i], 'window_start': start,
        'window_end': end, 'score': scores[i], 'model_version': version,
        'event_time': times[i], 'read_time': read[i],
        'scored_time': scored_time, 'late': late[i], 'win_count': counts[i],
    }
    if means is not None:
      for j, name in enumerate(window_feature_names):
        row[f'win_mean_{name}'] = means[i][j]
        row[f'win_std_{name}'] = stds[i][j]
    if with_label:
      row['label'] = (None if labels is None or not math.isfinite(labels[i])
                      else labels[i])
    rows.append(row)
  return rows


class ToPredictionRows(beam.DoFn):
  """ScoredBatch -> list of prediction rows (one element per batch)."""

  def __init__(self, schema: EventSchema):
    self._names = list(schema.window_features)
    self._with_label = schema.label_field is not None
    self.rows = Metrics.counter(_NAMESPACE, 'predictions')

  def process(self, scored: ScoredBatch):
    rows = prediction_rows(scored, self._names, self._with_label)
    self.rows.inc(len(rows))
    yield rows


def kafka_records(rows: list[dict]) -> list[tuple[bytes, bytes]]:
  """Prediction rows as (key = event id, value = JSON) Kafka records."""
  return [(r['event_id'].encode('utf-8'), orjson.dumps(r)) for r in rows]
