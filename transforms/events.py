"""Columnar batches of events: the element type between parse and sinks.

Per-element work dominates Python pipelines (docs/performance.md: ~25 us per element in
window code vs ~0.1 us per row in numpy), so one element carries many events:
the rows of one source chunk (one Kafka partition poll, or a run of lines of
one file), later split by key and window. Columns are numpy arrays so window
ids, aggregates and model inputs are computed on arrays.
"""

import dataclasses
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np


class RawRecord(NamedTuple):
  """A payload to parse, with where it came from.

  Attributes:
    source: 'kafka:<topic>/<partition>' or 'file:<path>'.
    position: Kafka offset, or line/record number in the file.
    payload: the bytes as read (None for a Kafka tombstone).
    timestamp: record/file time in epoch seconds, or None.
    key: the Kafka record key, or None.
  """
  source: str
  position: int
  payload: Optional[bytes]
  timestamp: Optional[float] = None
  key: Optional[bytes] = None


class Document(NamedTuple):
  """A typed row to validate (``RecordParser.parse_documents``): what a
  RawRecord is for bytes, for rows a reader has already decoded (Parquet,
  tf.Example).

  Attributes:
    source: 'file:<path>' (or 'kafka:<topic>/<partition>').
    position: record number in the file (or offset).
    doc: the row as a dict; an Exception when the reader could not decode
      the row (a dead letter).
    timestamp: record/file time in epoch seconds, or None.
    key: the record key, or None.
    payload: the row's original bytes, or None (the row as JSON is kept).
  """
  source: str
  position: int
  doc: Any
  timestamp: Optional[float] = None
  key: Optional[bytes] = None
  payload: Optional[bytes] = None


@dataclasses.dataclass
class EventBatch:
  """Validated events of one source, as columns.

  Attributes:
    source: where all rows came from (see RawRecord.source).
    positions: int64 offsets/line numbers, one per row.
    raw: original payloads, one per row (kept so that a later stage can
      dead-letter a row with its original bytes); empty once dropped by
      ``without_payloads``.
    ids: event ids.
    keys: grouping keys (window features are per key).
    event_time: float64 epoch seconds.
    features: float32 [n, F] model inputs, in the schema's feature order.
    window_values: float32 [n, W] values of the schema's window features.
    labels: float64 [n] (nan where absent), or None without a label field.
    read_time: float64 [n] epoch seconds when each row was read/parsed.
    window: (start, end) epoch seconds of the event-time window, or None
      for the global window; set by WindowFeatures.
    win_count: int64 [n] events of the key in the window so far, this one
      included; set by WindowFeatures.
    win_mean, win_std: float32 [n, W] mean and population std of the window
      features over those events; set by WindowFeatures.
    late: bool [n]: the event arrived after its window's end had passed
      the watermark (within the allowed lateness); set by WindowFeatures.
    records: the source records of the rows (Kafka records: key, headers,
      timestamp), so that a later stage dead-letters a row as its whole
      record; empty for file rows (source and position name them) and once
      dropped by ``without_payloads``.
  """
  source: str
  positions: np.ndarray
  raw: list
  ids: list
  keys: list
  event_time: np.ndarray
  features: np.ndarray
  window_values: np.ndarray
  labels: Optional[np.ndarray]
  read_time: np.ndarray
  window: Optional[tuple[float, float]] = None
  win_count: Optional[np.ndarray] = None
  win_mean: Optional[np.ndarray] = None
  win_std: Optional[np.ndarray] = None
  late: Optional[np.ndarray] = None
  records: list = dataclasses.field(default_factory=list)

  def __len__(self) -> int:
    return len(self.ids)

  def take(self, idx) -> 'EventBatch':
    """The rows at ``idx`` (an int array or boolean mask), as a new batch."""
    idx = np.asarray(idx)
    if idx.dtype == bool:
      idx = np.flatnonzero(idx)
    pick = lambda seq: [seq[i] for i in idx]
    opt = lambda a: None if a is None else a[idx]
    return EventBatch(
        source=self.source, positions=self.positions[idx],
        raw=pick(self.raw) if self.raw else [],
        ids=pick(self.ids), keys=pick(self.keys),
        event_time=self.event_time[idx], features=self.features[idx],
        window_values=self.window_values[idx], labels=opt(self.labels),
        read_time=self.read_time[idx], window=self.window,
        win_count=opt(self.win_count), win_mean=opt(self.win_mean),
        win_std=opt(self.win_std), late=opt(self.late),
        records=pick(self.records) if self.records else [])

  def without_payloads(self) -> 'EventBatch':
    """A copy without the payloads and model inputs (``features`` of width
    0): what scored events still need is a fraction of the bytes."""
    return dataclasses.replace(
        self, raw=[], records=[],
        features=np.empty((len(self), 0), dtype=self.features.dtype))

  def min_time(self) -> float:
    return float(self.event_time.min())


# The roles a model version scores in (models/deployments.py): the primary
# scores what the canary does not; a shadow scores beside them.
PRIMARY_ROLE = 'primary'
CANARY_ROLE = 'canary'
SHADOW_ROLE = 'shadow'


@dataclasses.dataclass
class ScoredBatch:
  """The model's result for one EventBatch (models produce it; the output
  and window steps read it).

  Attributes:
    batch: the scored events.
    scores: float32 [n] (or [n, k] for multi-output models).
    model_version: the version that scored them (0 for an unversioned dir);
      with ``versions``, the primary version.
    scored_time: epoch seconds when the scores were computed.
    errors: None, or one message per row (None for rows that scored).
    versions: None when ``model_version`` scored every row, else int64 [n]:
      the version of each row (a canary scores some keys).
    roles: None when every row was scored in ``role``, else one role per
      row (object array of PRIMARY_ROLE / CANARY_ROLE).
    role: the role of every row when ``roles`` is None.
    shadow_version: the shadow version that scored every row beside the
      primary, or None.
    shadow_scores: float32 [n] shadow scores (NaN where the shadow failed),
      or None without a shadow.
  """
  batch: EventBatch
  scores: np.ndarray
  model_version: int
  scored_time: float
  errors: Optional[list] = None
  versions: Optional[np.ndarray] = None
  roles: Optional[np.ndarray] = None
  role: str = PRIMARY_ROLE
  shadow_version: Optional[int] = None
  shadow_scores: Optional[np.ndarray] = None

  def row_versions(self) -> np.ndarray:
    """int64 [n]: the version that scored each row."""
    if self.versions is not None:
      return self.versions
    return np.full(len(self.batch), int(self.model_version), np.int64)

  def row_roles(self) -> list:
    """The role each row was scored in."""
    if self.roles is not None:
      return self.roles.tolist()
    return [self.role] * len(self.batch)

  def take(self, idx) -> 'ScoredBatch':
    """The rows at ``idx`` (an int array or boolean mask), without errors."""
    idx = np.asarray(idx)
    if idx.dtype == bool:
      idx = np.flatnonzero(idx)
    opt = lambda a: None if a is None else a[idx]
    return dataclasses.replace(
        self, batch=self.batch.take(idx), scores=self.scores[idx],
        errors=None, versions=opt(self.versions), roles=opt(self.roles),
        shadow_scores=opt(self.shadow_scores))


def concat_features(batches: Sequence[EventBatch]) -> np.ndarray:
  """Model inputs of several batches as one [sum(n), F] array."""
  if len(batches) == 1:
    return batches[0].features
  return np.concatenate([b.features for b in batches], axis=0)
