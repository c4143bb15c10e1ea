"""Validated rows -> EventBatches (one per source), and their dead letters.

Rows arrive either as columns (the fast path: ``Columns`` of a group of
rows) or one by one (``Rows``: the full validation's rows, or a mix of
both). Either way the batch is made by ``make_batch``, which also
dead-letters rows whose numbers overflow float32.
"""

from typing import NamedTuple, Optional

import numpy as np

from transforms import dead_letters as dl
from transforms.events import EventBatch
from transforms.kafka.records import KafkaRecord


def float32(values) -> np.ndarray:
  """Numbers as float32. A finite double beyond float32's range (1e300)
  becomes inf, which ``make_batch`` turns into a non_finite dead letter;
  numpy's "overflow encountered in cast" warning for it is expected here,
  not a problem to report."""
  with np.errstate(over='ignore'):
    return np.asarray(values, dtype=np.float32)


class Columns(NamedTuple):
  """The columns of a group of rows the fast path read (m rows).

  Attributes:
    ok: bool [m]: the row passed every check (others take the full
      validation).
    ids, keys: lists of str.
    times: float64 [m] event times.
    features: float32 [m, F]; window: float32 [m, W].
    labels: float64 [m] (nan where absent), or None without a label field.
  """
  ok: np.ndarray
  ids: list
  keys: list
  times: np.ndarray
  features: np.ndarray
  window: np.ndarray
  labels: Optional[np.ndarray]


class Rows:
  """Validated rows collected one by one, as columns per source, and the
  dead letters."""

  __slots__ = ('by_source', 'dead')

  def __init__(self, dead: list):
    self.by_source: dict[str, tuple] = {}
    self.dead: list[dl.DeadLetter] = dead

  def add(self, raw, payload, row) -> None:
    """Adds one row: (event_id, key, time, features, window values, label)
    of the record ``raw`` (its source and position) with ``payload``."""
    cols = self.by_source.get(raw.source)
    if cols is None:
      cols = self.by_source[raw.source] = ([], [], [], [], [], [], [], [], [])
    event_id, key, t, feats, wvals, label = row
    cols[0].append(raw.position)
    cols[1].append(payload)
    cols[2].append(event_id)
    cols[3].append(key)
    cols[4].append(t)
    cols[5].append(feats)
    cols[6].append(wvals)
    cols[7].append(label)
    cols[8].append(raw)

  def batches(self, now: float, n_features: int, n_window: int,
              has_label: bool) -> tuple[list[EventBatch], list[dl.DeadLetter]]:
    """One EventBatch per source, and the dead letters."""
    dead = self.dead
    batches = []
    for source, (pos, raw_payloads, ids, keys, times, feats, wvals,
                 labels, items) in self.by_source.items():
      n = len(ids)
      batch = make_batch(
          source, np.asarray(pos, dtype=np.int64), raw_payloads, ids, keys,
          np.asarray(times, dtype=np.float64),
          float32(feats).reshape(n, n_features),
          float32(wvals).reshape(n, n_window),
          np.asarray(labels, dtype=np.float64) if has_label else None,
          items, now, dead)
      if batch is not None:
        batches.append(batch)
    return batches, dead


def batch_from_columns(source: str, items: list, payloads: list,
                       cols: Columns, keep: np.ndarray, now: float,
                       dead: list
                      ) -> tuple[list[EventBatch], list[dl.DeadLetter]]:
  """The rows ``keep`` of ``cols`` (``items``/``payloads``: theirs) as
  the batch of their one source, and the dead letters."""
  if len(keep) == len(cols.ids):
    pick = lambda seq: seq
  else:
    pick = lambda seq: [seq[j] for j in keep]
  labels = cols.labels
  batch = make_batch(
      source, np.asarray([it.position for it in items], dtype=np.int64),
      payloads, pick(cols.ids), pick(cols.keys), cols.times[keep],
      cols.features[keep], cols.window[keep],
      None if labels is None else labels[keep], items, now, dead)
  return ([] if batch is None else [batch]), dead


def make_batch(source, positions, raw_payloads, ids, keys, times, features,
               window_values, labels, items, now, dead
              ) -> Optional[EventBatch]:
  """The EventBatch of validated rows (``items``: their source records);
  rows whose numbers overflow float32 become dead letters (appended to
  ``dead``). None when no row is left."""
  n = len(ids)
  # Finite as doubles can still overflow float32 (e.g. 1e300).
  bad = ~np.isfinite(features).all(axis=1)
  if window_values.shape[1]:
    bad |= ~np.isfinite(window_values).all(axis=1)
  keep = None
  if bad.any():
    for i in np.flatnonzero(bad):
      dead.append(dl.DeadLetter.of_record(
          items[i], stage=dl.VALIDATE, reason=dl.NON_FINITE,
          detail='a numeric field overflows float32', event_id=ids[i],
          payload=raw_payloads[i], time=now))
    keep = np.flatnonzero(~bad)
    if not len(keep):
      return None
  # Kafka records are kept (key, headers, timestamp) for dead letters of
  # later stages; file rows are named by source and position.
  records = list(items) if n and type(items[0]) is KafkaRecord else []
  batch = EventBatch(
      source=source, positions=positions, raw=raw_payloads, ids=ids,
      keys=keys, event_time=times, features=features,
      window_values=window_values, labels=labels,
      read_time=np.full(n, now, dtype=np.float64), records=records)
  return batch if keep is None else batch.take(keep)
