"""What the collectors read, folded into bounded counts (buckets.py).

``Aggregates`` takes decoded predictions and dead letters (tail.py) and
keeps, per time bucket: latency histograms (``scored_time - event_time``
and ``read_time - event_time``), score histograms per model version (and
role, when rows carry ``model_role``), split by label where rows carry
one, and dead letters per reason; plus totals since start and a small ring
of the latest dead letters. ``OffsetHistory`` keeps the offset samples
(log ends per topic, the group's committed offsets) from which throughput
and lag are charted. Both are thread-safe: collectors add from their
threads while the server reads.

Memory is fixed by the flags (docs/status_page.md has the figures): the
number of buckets times (two latency histograms + three score histograms
per version series + one count per reason), with at most ``MAX_SERIES``
versions and ``MAX_SERIES`` reasons (more go to ``other``: the values come
from topics anyone may write to).
"""

import collections
import dataclasses
import math
import threading
import time
from typing import Optional

import numpy as np

from beam_jobs.status import buckets as bk

MAX_SERIES = 32
OTHER = 'other'


@dataclasses.dataclass(frozen=True)
class Predictions:
  """Columns of a batch of prediction rows (NaN where a row has none)."""
  scored_time: np.ndarray
  event_time: np.ndarray
  read_time: np.ndarray
  score: np.ndarray
  label: np.ndarray
  model_version: list  # int or None per row
  model_role: list     # str or None per row

  def __len__(self):
    return len(self.score)


@dataclasses.dataclass(frozen=True)
class DeadLetterSample:
  """One dead letter as the page shows it (payload already cut short)."""
  time: float
  reason: str
  stage: str
  detail: str
  source: str
  position: str
  event_id: Optional[str]
  payload: str          # the first bytes, decoded with replacement
  payload_bytes: int    # the whole value's size
  partition: int
  offset: int


def series_name(version, role) -> str:
  """The chart label of a model version (and role): ``v3``, ``v4 canary``."""
  name = 'v?' if version is None else f'v{version}'
  return f'{name} {role}' if role else name


class _Series:
  """Score histograms of one version (and role) per bucket."""

  def __init__(self, n: int, version, role):
    self.version = version
    self.role = role
    self.scores = np.zeros((n, bk.SCORE_BINS), np.int64)
    self.pos = np.zeros((n, bk.SCORE_BINS), np.int64)
    self.neg = np.zeros((n, bk.SCORE_BINS), np.int64)
    self.total = 0
    self.labelled = 0
    self.last_time = -math.inf

  def arrays(self):
    return (self.scores, self.pos, self.neg)


def _add_counts(target: np.ndarray, slots: np.ndarray,
                bins: Optional[np.ndarray] = None) -> None:
  """target[slot, bin] += 1 for each pair (one bincount, not a loop)."""
  if not len(slots):
    return
  if bins is None:
    target += np.bincount(slots, minlength=target.shape[0])
    return
  width = target.shape[1]
  flat = np.bincount(slots * width + bins, minlength=target.size)
  target += flat.reshape(target.shape)


class Aggregates:
  """Bucketed counts of predictions and dead letters (module docstring)."""

  def __init__(self, *, buckets: int, bucket_s: float,
               recent_samples: int = 20, clock=time.time):
    self.ring = bk.TimeRing(buckets, bucket_s)
    self._clock = clock
    self._lock = threading.Lock()
    n = buckets
    self._latency_scored = np.zeros((n, bk.LATENCY_BINS), np.int64)
    self._latency_read = np.zeros((n, bk.LATENCY_BINS), np.int64)
    self._predictions = np.zeros(n, np.int64)
    self._series: dict[str, _Series] = {}
    self._reasons: dict[str, np.ndarray] = {}
    self._dead_letters = np.zeros(n, np.int64)
    self.reason_totals: collections.Counter = collections.Counter()
    self.recent: collections.deque = collections.deque(maxlen=recent_samples)
    self.predictions_total = 0
    self.dead_letters_total = 0

  def _arrays(self) -> list:
    out = [self._latency_scored, self._latency_read, self._predictions,
           self._dead_letters]
    for s in self._series.values():
      out.extend(s.arrays())
    out.extend(self._reasons.values())
    return out

  def _slots(self, times: np.ndarray) -> np.ndarray:
    # A time ahead of this clock (skew) counts in the current bucket; a
    # missing one (NaN) too: it was written about now.
    now = self._clock()
    times = np.where(np.isfinite(times), np.minimum(times, now), now)
    return self.ring.claim(self.ring.bucket_of(times), self._arrays(),
                           int(self.ring.bucket_of(np.array([now]))[0]))

  def _series_for(self, version, role) -> _Series:
    name = series_name(version, role)
    if name not in self._series:
      if len(self._series) >= MAX_SERIES:
        name = OTHER
      if name not in self._series:
        self._series[name] = _Series(self.ring.n, version if name != OTHER
                                     else None, role if name != OTHER else None)
    return self._series[name]

  def add_predictions(self, batch: Predictions) -> None:
    """Counts a batch of prediction rows in the buckets of their
    ``scored_time``."""
    if not len(batch):
      return
    with self._lock:
      slots = self._slots(batch.scored_time)
      ok = slots >= 0
      self.predictions_total += len(batch)
      _add_counts(self._predictions, slots[ok])
      for lat, target in ((batch.scored_time - batch.event_time,
                           self._latency_scored),
                          (batch.read_time - batch.event_time,
                           self._latency_read)):
        keep = ok & np.isfinite(lat)
        _add_counts(target, slots[keep], bk.latency_bins(lat[keep]))
      bins = bk.score_bins(batch.score)
      has_score = np.isfinite(batch.score)
      keys = list(zip(batch.model_version, batch.model_role))
      for key in set(keys):
        series = self._series_for(*key)
        rows = np.fromiter((k == key for k in keys), bool, len(keys))
        series.total += int(rows.sum())
        series.last_time = max(series.last_time, float(np.nanmax(
            np.where(rows, batch.scored_time, -math.inf))))
        rows &= ok & has_score
        _add_counts(series.scores, slots[rows], bins[rows])
        pos = rows & (batch.label == 1)
        neg = rows & (batch.label == 0)
        series.labelled += int(pos.sum() + neg.sum())
        _add_counts(series.pos, slots[pos], bins[pos])
        _add_counts(series.neg, slots[neg], bins[neg])

  def add_dead_letters(self, letters: list) -> None:
    """Counts DeadLetterSamples by reason in the buckets of their time and
    keeps the latest few."""
    if not letters:
      return
    with self._lock:
      slots = self._slots(np.array([d.time for d in letters], np.float64))
      self.dead_letters_total += len(letters)
      for d, slot in zip(letters, slots):
        reason = d.reason
        if reason not in self._reasons:
          if len(self._reasons) >= MAX_SERIES:
            reason = OTHER
          self._reasons.setdefault(reason, np.zeros(self.ring.n, np.int64))
        self.reason_totals[reason] += 1
        if slot >= 0:
          self._reasons[reason][slot] += 1
          self._dead_letters[slot] += 1
      self.recent.extend(letters)

  def view(self, now: Optional[float] = None) -> 'AggregateView':
    """A consistent copy of the last ``buckets`` buckets up to ``now``."""
    now = self._clock() if now is None else now
    with self._lock:
      starts, slots = self.ring.window(now)
      g = lambda a: bk.gather(a, slots)  # pylint: disable=unnecessary-lambda-assignment
      series = {
          name: SeriesView(s.version, s.role, g(s.scores), g(s.pos),
                           g(s.neg), s.total, s.labelled, s.last_time)
          for name, s in self._series.items()}
      return AggregateView(
          now=now, bucket_s=self.ring.bucket_s, starts=starts,
          predictions=g(self._predictions),
          latency_scored=g(self._latency_scored),
          latency_read=g(self._latency_read), series=series,
          reasons={r: g(a) for r, a in self._reasons.items()},
          dead_letters=g(self._dead_letters),
          reason_totals=dict(self.reason_totals),
          recent=list(self.recent),
          predictions_total=self.predictions_total,
          dead_letters_total=self.dead_letters_total)


@dataclasses.dataclass(frozen=True)
class SeriesView:
  version: Optional[int]
  role: Optional[str]
  scores: np.ndarray
  pos: np.ndarray
  neg: np.ndarray
  total: int
  labelled: int
  last_time: float


@dataclasses.dataclass(frozen=True)
class AggregateView:
  """A copy of the aggregates over the bucket window ending at ``now``
  (arrays indexed by bucket, oldest first; ``starts`` are their times)."""
  now: float
  bucket_s: float
  starts: np.ndarray
  predictions: np.ndarray
  latency_scored: np.ndarray
  latency_read: np.ndarray
  series: dict
  reasons: dict
  dead_letters: np.ndarray
  reason_totals: dict
  recent: list
  predictions_total: int
  dead_letters_total: int

  def last(self, window_s: float) -> slice:
    """The buckets that overlap the last ``window_s`` seconds."""
    k = max(1, int(math.ceil(window_s / self.bucket_s)))
    return slice(max(0, len(self.starts) - k), len(self.starts))


@dataclasses.dataclass(frozen=True)
class OffsetSample:
  """One look at the offsets: log ends per topic and partition, and the
  group's committed offsets on the input topics (None: none committed)."""
  time: float
  ends: dict        # topic -> {partition: end offset}
  committed: dict   # topic -> {partition: committed offset or None}


class OffsetHistory:
  """The last ``maxlen`` offset samples (thread-safe)."""

  def __init__(self, maxlen: int):
    self._samples: collections.deque = collections.deque(maxlen=maxlen)
    self._lock = threading.Lock()

  def add(self, sample: OffsetSample) -> None:
    with self._lock:
      self._samples.append(sample)

  def samples(self) -> list:
    with self._lock:
      return list(self._samples)
