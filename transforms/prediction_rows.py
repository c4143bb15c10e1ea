"""Prediction records: one flat JSON-ready row per scored event.

The same rows go to every sink (Kafka, files, BigQuery); their schema is
derived from the event schema (window feature names) by ``output_columns``.
Times are epoch seconds (floats) so latencies are simple differences:
``scored_time - event_time`` is event-to-prediction latency.

Every row says which model version scored it and in which role
(``model_role``: primary, or canary for the keys a canary scores); with a
shadow version deployed, ``shadow_score`` and ``shadow_version`` hold its
score beside the primary's (both null without a shadow, and
``shadow_score`` null where the shadow failed). docs/operating_models.md.
"""

import collections.abc
import itertools
import math
from typing import Sequence

import apache_beam as beam
import numpy as np
import orjson
from apache_beam.metrics import Metrics

from transforms.events import ScoredBatch
from transforms.schema import EventSchema

_NAMESPACE = 'output'

# (name, type) with types: STRING, FLOAT, INTEGER, BOOLEAN.
BASE_COLUMNS = (
    ('event_id', 'STRING'), ('key', 'STRING'),
    ('window_start', 'FLOAT'), ('window_end', 'FLOAT'),
    ('score', 'FLOAT'), ('model_version', 'INTEGER'),
    ('model_role', 'STRING'), ('shadow_score', 'FLOAT'),
    ('shadow_version', 'INTEGER'), ('event_time', 'FLOAT'), ('read_time', 'FLOAT'), ('scored_time', 'FLOAT'),
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


def _per_row(value, n: int):
  """A column kept as one value for every row, or as an array/list."""
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, list):
    return value
  return itertools.repeat(value, n)


class PredictionRows(collections.abc.Sequence):
  """The prediction rows of one ScoredBatch, kept as columns.

  It is a sequence of row dicts (``len``, indexing, slicing, iteration,
  ``==`` with a list), each dict built when first asked for; sinks that
  write columns (Parquet) take ``to_record_batch`` and never build the
  dicts, which cost more than scoring the events (docs/performance.md: per-row Python
  work is the cost). Pickles as its columns (no payloads).
  """

  __slots__ = ('_cols', '_n', '_names', '_with_label', '_rows')

  def __init__(self, cols: dict, n: int, window_feature_names: Sequence[str],
               with_label: bool):
    self._cols = cols
    self._n = n
    self._names = tuple(window_feature_names)
    self._with_label = with_label
    self._rows = None

  @classmethod
  def of(cls, scored: ScoredBatch, window_feature_names: Sequence[str],
         with_label: bool) -> 'PredictionRows':
    b = scored.batch
    n = len(b)
    start, end = b.window if b.window is not None else (-math.inf, math.inf)
    scores = scored.scores
    if scores.ndim > 1:
      scores = scores[:, 0]
    versions = (int(scored.model_version) if scored.versions is None else
                scored.versions)
    roles = scored.role if scored.roles is None else scored.roles.tolist()
    shadow = scored.shadow_scores
    if shadow is not None and shadow.ndim > 1:
      shadow = shadow[:, 0]
    cols = {
        'event_id': b.ids, 'key': b.keys,
        'window_start': _finite_or_none(float(start)),
        'window_end': _finite_or_none(float(end)),
        'score': scores, 'model_version': versions, 'model_role': roles,
        'shadow_score': shadow,
        'shadow_version': (None if scored.shadow_version is None else
                           int(scored.shadow_version)),
        'event_time': b.event_time, 'read_time': b.read_time,
        'scored_time': float(scored.scored_time),
        'late': b.late if b.late is not None else np.zeros(n, bool),
        'win_count': (b.win_count if b.win_count is not None else
                      np.zeros(n, np.int64)),
        'win_mean': b.win_mean, 'win_std': b.win_std,
        'label': b.labels if with_label else None,
    }
    return cls(cols, n, window_feature_names, with_label)

  def __len__(self) -> int:
    return self._n

  def __getitem__(self, index):
    if isinstance(index, slice):
      lo, hi, step = index.indices(self._n)
      if step != 1:
        return self.rows()[index]
      cols = {k: (v[lo:hi] if isinstance(v, (list, np.ndarray)) else v)
              for k, v in self._cols.items()}
      return PredictionRows(cols, max(0, hi - lo), self._names,
                            self._with_label)
    return self.rows()[index]

  def __iter__(self):
    return iter(self.rows())

  def __eq__(self, other):
    if isinstance(other, PredictionRows):
      other = other.rows()
    return isinstance(other, (list, tuple)) and self.rows() == list(other)

  def __ne__(self, other):
    return not self == other

  __hash__ = None

  def __repr__(self):
    return f'PredictionRows({self.rows()!r})'

  def __reduce__(self):
    return PredictionRows, (self._cols, self._n, self._names,
                            self._with_label)

  def rows(self) -> list[dict]:
    """The rows as dicts (built once)."""
    if self._rows is None:
      self._rows = self._build_rows()
    return self._rows

  def _build_rows(self) -> list[dict]:
    c = self._cols
    n = self._n
    # Column lists zipped into rows with one key tuple: no per-row key
    # formatting or per-key stores (this ran per event for the Kafka sink).
    names = ['event_id', 'key', 'window_start', 'window_end', 'score',
             'model_version', 'model_role', 'shadow_score', 'shadow_version',
             'event_time', 'read_time', 'scored_time', 'late', 'win_count']
    shadow = c['shadow_score']
    columns = [
        c['event_id'], c['key'], itertools.repeat(c['window_start'], n),
        itertools.repeat(c['window_end'], n), c['score'].tolist(),
        _per_row(c['model_version'], n), _per_row(c['model_role'], n),
        (itertools.repeat(None, n) if shadow is None else
         [None if not math.isfinite(v) else v for v in shadow.tolist()]),
        itertools.repeat(c['shadow_version'], n), c['event_time'].tolist(),
        c['read_time'].tolist(), itertools.repeat(c['scored_time'], n),
        c['late'].tolist(), c['win_count'].tolist()]
    if c['win_mean'] is not None:
      for j, name in enumerate(self._names):
        names += [f'win_mean_{name}', f'win_std_{name}']
        columns += [c['win_mean'][:, j].tolist(), c['win_std'][:, j].tolist()]
    if self._with_label:
      names.append('label')
      labels = c['label']
      columns.append(
          itertools.repeat(None, n) if labels is None else
          [None if not math.isfinite(v) else v for v in labels.tolist()])
    names = tuple(names)
    return [dict(zip(names, values)) for values in zip(*columns)]

  def to_record_batch(self, schema):
    """The rows as a pyarrow RecordBatch of ``schema`` (built from the
    columns; equal to ``RecordBatch.from_pylist(rows, schema)``: a schema
    column the rows do not have is null)."""
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    n = self._n
    arrays = []
    for field in schema:
      values = self._column(field.name)
      if values is None:
        arrays.append(pa.nulls(n, field.type))
      elif isinstance(values, np.ndarray):
        # Rows hold None for a missing label or shadow score (NaN here).
        mask = (np.isnan(values) if field.name in ('label', 'shadow_score')
                else None)
        arrays.append(pa.array(values, type=field.type, mask=mask))
      elif isinstance(values, list):
        arrays.append(pa.array(values, type=field.type))
      else:  # one value for every row
        arrays.append(pa.array([values] * n, type=field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)

  def _column(self, name: str):
    """A column as rows would have it: array, list, scalar, or None when
    the rows have no such key."""
    c = self._cols
    if name in ('window_start', 'window_end', 'model_version',
                'model_role', 'shadow_version', 'scored_time', 'event_id',
                'key', 'event_time', 'read_time', 'late', 'win_count'):
      return c[name]
    if name in ('score', 'shadow_score'):
      return None if c[name] is None else c[name].astype(np.float64)
    if name == 'label':
      if not self._with_label:
        return None
      if c['label'] is None:
        return np.full(self._n, np.nan)
      return c['label']
    for prefix, key in (('win_mean_', 'win_mean'), ('win_std_', 'win_std')):
      if name.startswith(prefix) and c[key] is not None:
        feature = name[len(prefix):]
        if feature in self._names:
          return c[key][:, self._names.index(feature)].astype(np.float64)
    return None


def prediction_rows(scored: ScoredBatch,
                    window_feature_names: Sequence[str],
                    with_label: bool) -> list[dict]:
  """The prediction records of one ScoredBatch, in row order."""
  return PredictionRows.of(scored, window_feature_names, with_label).rows()


class ToPredictionRows(beam.DoFn):
  """ScoredBatch -> PredictionRows (a list-like of row dicts, one element
  per batch)."""

  def __init__(self, schema: EventSchema):
    self._names = list(schema.window_features)
    self._with_label = schema.label_field is not None
    self.rows = Metrics.counter(_NAMESPACE, 'predictions')

  def process(self, scored: ScoredBatch):
    rows = PredictionRows.of(scored, self._names, self._with_label)
    self.rows.inc(len(rows))
    yield rows


def kafka_records(rows: Sequence[dict]) -> list[tuple[bytes, bytes]]:
  """Prediction rows as (key = event id, value = JSON) Kafka records."""
  return [(r['event_id'].encode('utf-8'), orjson.dumps(r)) for r in rows]
