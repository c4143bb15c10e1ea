"""Fixed-size time buckets and histograms: the bounded memory of the page.

Everything the status page charts is kept as counts in a ring of
``n`` time buckets of ``bucket_s`` seconds (the last ``n * bucket_s``
seconds), never as records: memory is fixed by the flags, whatever the
topics hold. A value is added to the bucket of its own time (a
prediction's ``scored_time``, a dead letter's ``dlq.time``), so records
read back from a topic at start land where they happened.

Distributions are histograms with fixed edges, which add up across buckets
and across records read in any order:

* scores: ``SCORE_BINS`` equal bins over [0, 1]; accuracy at 0.5 is exact
  (0.5 is an edge) and AUC is the trapezoid over the bin edges, as
  ``tf.keras.metrics.AUC(num_thresholds=SCORE_BINS + 1)`` computes it;
* latencies: log-spaced bins, ``LATENCY_BINS_PER_DECADE`` per decade from
  ``LATENCY_MIN_S`` to ``LATENCY_MAX_S``; a percentile is reported as its
  bin's geometric middle, within 6% of the true value (half a bin: a
  factor 10**(1/40)).
"""

import math
from typing import Optional, Sequence

import numpy as np

SCORE_BINS = 50
SCORE_EDGES = np.linspace(0.0, 1.0, SCORE_BINS + 1)

LATENCY_MIN_S = 1e-3
LATENCY_MAX_S = 1e5
LATENCY_BINS_PER_DECADE = 20
_DECADES = int(round(math.log10(LATENCY_MAX_S / LATENCY_MIN_S)))
# Inner edges; bin 0 holds everything below LATENCY_MIN_S (including
# negative latencies from clock skew), the last bin everything above
# LATENCY_MAX_S.
LATENCY_EDGES = np.logspace(math.log10(LATENCY_MIN_S),
                            math.log10(LATENCY_MAX_S),
                            _DECADES * LATENCY_BINS_PER_DECADE + 1)
LATENCY_BINS = len(LATENCY_EDGES) + 1


class TimeRing:
  """Which ring slot holds which time bucket.

  Bucket ``b`` (seconds ``[b * bucket_s, (b + 1) * bucket_s)``) lives in
  slot ``b % n``; a slot is cleared when a newer bucket claims it, and a
  value older than the bucket in its slot is too old for the ring (it is
  counted in totals only).
  """

  def __init__(self, n: int, bucket_s: float):
    if n < 1 or bucket_s <= 0:
      raise ValueError(f'need n >= 1 and bucket_s > 0, got {n}, {bucket_s}')
    self.n = n
    self.bucket_s = float(bucket_s)
    self.ids = np.full(n, -1, np.int64)

  def bucket_of(self, times: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(times, np.float64) / self.bucket_s).astype(
        np.int64)

  def claim(self, buckets: np.ndarray, arrays: Sequence[np.ndarray],
            now_bucket: Optional[int] = None) -> np.ndarray:
    """Slots for ``buckets`` (-1 for one too old), clearing the rows of
    ``arrays`` (indexed by slot on axis 0) that newer buckets take over.

    Too old: ``n`` or more buckets before the newest of ``buckets``, of
    the ring, and of ``now_bucket`` (so a batch never claims a slot that
    a newer bucket of the same batch then takes over).
    """
    slots = np.full(len(buckets), -1, np.int64)
    if not len(buckets):
      return slots
    newest = max(int(buckets.max()), int(self.ids.max()),
                 -1 if now_bucket is None else int(now_bucket))
    for b in np.unique(buckets):
      if b <= newest - self.n:
        continue
      slot = int(b % self.n)
      held = self.ids[slot]
      if b < held:
        continue
      if b > held:
        self.ids[slot] = b
        for a in arrays:
          a[slot] = 0
      slots[buckets == b] = slot
    return slots

  def window(self, now: float) -> tuple[np.ndarray, np.ndarray]:
    """(bucket start times, slots or -1) of the ring's last ``n`` buckets,
    oldest first, ending with the bucket of ``now``."""
    last = int(math.floor(now / self.bucket_s))
    buckets = np.arange(last - self.n + 1, last + 1, dtype=np.int64)
    slots = buckets % self.n
    slots = np.where(self.ids[slots] == buckets, slots, -1)
    return buckets * self.bucket_s, slots


def gather(array: np.ndarray, slots: np.ndarray) -> np.ndarray:
  """Rows of ``array`` for ``slots``; zeros where the slot is -1."""
  out = np.zeros((len(slots),) + array.shape[1:], array.dtype)
  ok = slots >= 0
  out[ok] = array[slots[ok]]
  return out


def score_bins(scores: np.ndarray) -> np.ndarray:
  """Score bin of each score (out-of-range scores clipped to the ends)."""
  bins = np.floor(np.asarray(scores, np.float64) * SCORE_BINS)
  return np.clip(np.nan_to_num(bins, nan=0.0), 0, SCORE_BINS - 1).astype(
      np.int64)


def latency_bins(seconds: np.ndarray) -> np.ndarray:
  """Latency bin of each value (see the module docstring)."""
  return np.searchsorted(LATENCY_EDGES, np.asarray(seconds, np.float64),
                         side='right')


def latency_value(bin_index: int) -> float:
  """The value a latency bin stands for: its geometric middle (the edge
  for the two open-ended bins)."""
  if bin_index <= 0:
    return float(LATENCY_EDGES[0])
  if bin_index >= len(LATENCY_EDGES):
    return float(LATENCY_EDGES[-1])
  return float(math.sqrt(LATENCY_EDGES[bin_index - 1] *
                         LATENCY_EDGES[bin_index]))


def percentile_bins(hist: np.ndarray, qs: Sequence[float]) -> list:
  """The bin index holding each quantile ``q`` (0..1) of a histogram
  (last axis), or None where the histogram is empty. ``hist`` may be 1-D
  or 2-D (one row per bucket)."""
  hist = np.atleast_2d(hist)
  cum = np.cumsum(hist, axis=-1)
  total = cum[:, -1]
  out = []
  for q in qs:
    rank = np.maximum(np.ceil(q * total), 1)
    idx = (cum < rank[:, None]).sum(axis=-1)
    out.append([None if t == 0 else int(i) for i, t in zip(idx, total)])
  return out


def latency_percentiles(hist: np.ndarray, qs: Sequence[float]) -> list:
  """Per quantile, the latency (seconds) of each row, None when empty."""
  return [[None if i is None else latency_value(i) for i in row]
          for row in percentile_bins(hist, qs)]


def score_percentiles(hist: np.ndarray, qs: Sequence[float]) -> list:
  """Per quantile, the score bin's middle for each row, None when empty."""
  width = 1.0 / SCORE_BINS
  return [[None if i is None else (i + 0.5) * width for i in row]
          for row in percentile_bins(hist, qs)]


def accuracy(pos: np.ndarray, neg: np.ndarray) -> Optional[float]:
  """Accuracy at threshold 0.5 from score histograms of the two labels."""
  n = pos.sum() + neg.sum()
  if n == 0:
    return None
  half = SCORE_BINS // 2
  return float((pos[half:].sum() + neg[:half].sum()) / n)


def auc(pos: np.ndarray, neg: np.ndarray) -> Optional[float]:
  """ROC AUC from score histograms of positives and negatives (trapezoid
  over the bin edges; scores within one bin count as ties), None unless
  both labels occur."""
  p, n = pos.sum(), neg.sum()
  if p == 0 or n == 0:
    return None
  # Rates at thresholds from the top bin down: (0, 0) ... (1, 1).
  tpr = np.concatenate([[0.0], np.cumsum(pos[::-1]) / p])
  fpr = np.concatenate([[0.0], np.cumsum(neg[::-1]) / n])
  return float(np.sum((fpr[1:] - fpr[:-1]) * (tpr[1:] + tpr[:-1]) / 2))
