"""Ids seen within a time horizon, at ~11 bytes per id: the memory of
effectively-once output (transforms/dedup.py).

An id is kept as a 64-bit fingerprint (Python's ``hash`` of the id: SipHash
keyed with a per-process secret; fingerprints never leave the process that
made them) tagged with the time bucket in which it was seen. The horizon is
cut into ``BUCKETS`` buckets; a bucket is forgotten whole once all of it is
older than the horizon, so an id is remembered for at least the horizon and
at most one bucket (1/16 of it) longer.

Layout (why: bench/dedup_bench.py, docs/operations.md section 7):

* a sorted uint64 array of fingerprints (8 bytes per id) with a parallel
  uint8 bucket tag (1 byte) and a radix directory on the top bits (under
  1 byte per id), so that a lookup costs two cache misses instead of the
  ~20 of a binary search over millions of ids;
* the newest ids in Python sets (one per bucket; ~70 bytes per id), merged
  into the array once they reach 1/64 of it (or ``PENDING_IDS``), so that
  the merges cost ~64 element moves per id and the sets stay small.

Fingerprints make membership probabilistic in one direction only: an id
never seen is taken for a seen one when its fingerprint equals one of the
``n`` held, with probability at most ``n / 2**64`` per lookup (5.4e-13 at
10M ids held). An id that was seen is always found.
"""

import ctypes
import logging
import math
import threading
import time
from typing import Iterable, Optional

import numpy as np

_LOGGER = logging.getLogger(__name__)

BUCKETS = 16
# Pending ids (in sets) merged into the sorted array past this many, or
# past 1/_MERGE_RATIO of the array, whichever is more.
PENDING_IDS = 65_536
_MERGE_RATIO = 64
# The directory has ~1 entry per _IDS_PER_SLOT ids.
_IDS_PER_SLOT = 4
# Logged at most this often when the cap forgets ids early.
_WARN_EVERY_S = 60.0
# Bucket tags are bucket indexes modulo this; live buckets span <= BUCKETS+1.
_TAGS = 256


def _load_malloc_trim():
  try:
    return ctypes.CDLL('libc.so.6').malloc_trim
  except (OSError, AttributeError):
    return None   # not glibc: nothing to trim


_MALLOC_TRIM = _load_malloc_trim()
# A trim walks the whole heap: at most this often.
_TRIM_EVERY_S = 10.0
_last_trim = -math.inf


def _release_freed_memory() -> None:
  """Returns the pages of the arrays merges replaced to the system.

  glibc raises its mmap threshold after a large free, so later arrays of
  up to 32 MB come from the heap and, once freed, stay in the process:
  measured, 17.5 instead of 10.6 resident bytes per id at 10M ids.
  """
  global _last_trim
  if _MALLOC_TRIM is not None and (
      time.monotonic() - _last_trim >= _TRIM_EVERY_S):
    _last_trim = time.monotonic()
    _MALLOC_TRIM(0)


def fingerprints(ids: Iterable) -> np.ndarray:
  """64-bit fingerprints of ids (str or any hashable), as int64."""
  ids = ids if isinstance(ids, (list, tuple)) else list(ids)
  return np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))


def first_occurrences(fps: np.ndarray) -> np.ndarray:
  """Mask of the first occurrence of each value of ``fps``."""
  mask = np.zeros(len(fps), dtype=bool)
  if len(fps):
    mask[np.unique(fps, return_index=True)[1]] = True
  return mask


class _SortedIndex:
  """Sorted unique uint64 fingerprints, their uint8 bucket tags, and a
  directory: ``slots[t]`` is the first position whose top bits are >= t."""

  __slots__ = ('fps', 'tags', '_slots', '_shift')

  def __init__(self, fps: np.ndarray, tags: np.ndarray):
    self.fps = fps
    self.tags = tags
    bits = max(8, int(math.log2(max(len(fps), 1) / _IDS_PER_SLOT)))
    self._shift = np.uint64(64 - bits)
    # Slot boundaries found by binary search (no per-id temporary array).
    starts = np.arange(1 << bits, dtype=np.uint64) << self._shift
    dtype = np.uint32 if len(fps) < 2**32 else np.int64
    self._slots = np.empty((1 << bits) + 1, dtype=dtype)
    self._slots[:-1] = np.searchsorted(fps, starts)
    self._slots[-1] = len(fps)

  @classmethod
  def empty(cls) -> '_SortedIndex':
    return cls(np.empty(0, np.uint64), np.empty(0, np.uint8))

  def __len__(self) -> int:
    return len(self.fps)

  def nbytes(self) -> int:
    return self.fps.nbytes + self.tags.nbytes + self._slots.nbytes

  def contains(self, q: np.ndarray) -> np.ndarray:
    """Mask of the uint64 fingerprints ``q`` held."""
    found = np.zeros(len(q), dtype=bool)
    n = len(self.fps)
    if n == 0 or len(q) == 0:
      return found
    top = (q >> self._shift).astype(np.int64)
    lo = self._slots[top].astype(np.int64)
    hi = self._slots[top + 1].astype(np.int64)
    # A binary search of every query at once within its directory slot
    # (a few ids long).
    active = lo < hi
    while active.any():
      mid = (lo + hi) >> 1
      value = self.fps[np.minimum(mid, n - 1)]
      less = value < q
      hit = active & (value == q)
      found |= hit
      lo = np.where(active & less, mid + 1, lo)
      hi = np.where(hit, lo, np.where(active & ~less, mid, hi))
      active = lo < hi
    return found

  def merged(self, fps: np.ndarray, tags: np.ndarray) -> '_SortedIndex':
    """A new index with sorted unique fingerprints not held here added."""
    at = np.searchsorted(self.fps, fps)
    return _SortedIndex(np.insert(self.fps, at, fps),
                        np.insert(self.tags, at, tags))

  def kept(self, live_tags: np.ndarray) -> '_SortedIndex':
    """A new index without the ids whose tag is not live."""
    keep = live_tags[self.tags]
    return _SortedIndex(self.fps[keep], self.tags[keep])


class SeenIds:
  """Fingerprints of ids seen within ``horizon_s``, in time buckets.

  Thread-safe. ``max_ids`` caps the ids held: past it, the oldest buckets
  are forgotten before their time (a WARNING says how much of the horizon
  the ids held then cover; ``take_evicted`` counts the ids). None: no cap.
  """

  def __init__(self, horizon_s: float, *, max_ids: Optional[int] = None):
    if horizon_s <= 0:
      raise ValueError(f'horizon must be > 0 s, got {horizon_s}')
    if max_ids is not None and max_ids <= 0:
      raise ValueError(f'max_ids must be > 0, got {max_ids}')
    self.horizon_s = horizon_s
    self.max_ids = max_ids
    self._width = horizon_s / BUCKETS
    self._index = _SortedIndex.empty()
    self._pending: dict[int, set] = {}   # bucket -> fingerprints (int)
    self._buckets: set[int] = set()      # buckets holding ids
    self._lock = threading.Lock()
    self._evicted = 0   # forgotten early by the cap, not yet taken
    self._warned_at = -math.inf

  def __len__(self) -> int:
    return len(self._index) + sum(map(len, self._pending.values()))

  def nbytes(self) -> int:
    """Bytes of the sorted arrays (the pending sets not included)."""
    return self._index.nbytes()

  def take_evicted(self) -> int:
    """Ids the cap forgot early since the last call."""
    with self._lock:
      n, self._evicted = self._evicted, 0
      return n

  def unseen(self, fps: np.ndarray) -> np.ndarray:
    """Mask of the fingerprints (int64) not held; no side effects."""
    with self._lock:
      return self._unseen(fps)

  def remember(self, fps: np.ndarray, now: float) -> None:
    """Remembers fingerprints (int64) seen at ``now`` (epoch seconds)."""
    with self._lock:
      self._remember(fps, now)

  def keep_new(self, fps: np.ndarray, now: float) -> np.ndarray:
    """Mask of the fingerprints not seen before (the first occurrence in
    ``fps`` included); remembers them at ``now``. Atomic."""
    with self._lock:
      self._expire(now)
      mask = self._unseen(fps) & first_occurrences(fps)
      self._remember(fps[mask], now)
    return mask

  def add(self, fps: np.ndarray, times: np.ndarray, now: float) -> None:
    """Remembers fingerprints seen at ``times`` (epoch seconds each), e.g.
    read back from where they were written. Those older than the horizon
    at ``now`` are ignored; times after ``now`` count as ``now``."""
    if len(fps) == 0:
      return
    times = np.minimum(np.asarray(times, dtype=np.float64), now)
    buckets = np.floor(times / self._width).astype(np.int64)
    with self._lock:
      self._expire(now)
      keep = buckets >= self._oldest_bucket(now)
      self._merge(fps[keep], buckets[keep])
      self._enforce_cap(now)

  # --- under the lock ---------------------------------------------------------

  def _bucket(self, t: float) -> int:
    return int(math.floor(t / self._width))

  def _oldest_bucket(self, now: float) -> int:
    """The oldest bucket still (partly) within the horizon at ``now``."""
    return self._bucket(now - self.horizon_s)

  def _unseen(self, fps: np.ndarray) -> np.ndarray:
    found = self._index.contains(fps.view(np.uint64))
    if self._pending:
      as_list = fps.tolist()
      for pending in self._pending.values():
        hits = pending.intersection(as_list)
        if hits:
          found |= np.isin(fps, np.fromiter(hits, np.int64, len(hits)))
    return ~found

  def _remember(self, fps: np.ndarray, now: float) -> None:
    if len(fps) == 0:
      return
    self._expire(now)
    bucket = self._bucket(now)
    self._pending.setdefault(bucket, set()).update(fps.tolist())
    self._buckets.add(bucket)
    pending = sum(map(len, self._pending.values()))
    if pending >= max(PENDING_IDS, len(self._index) // _MERGE_RATIO):
      self._merge_pending()
    self._enforce_cap(now)

  def _merge_pending(self) -> None:
    parts = [(np.fromiter(s, np.int64, len(s)), b)
             for b, s in self._pending.items()]
    self._pending = {}
    self._merge(np.concatenate([p for p, _ in parts]),
                np.concatenate([np.full(len(p), b, np.int64)
                                for p, b in parts]))

  def _merge(self, fps: np.ndarray, buckets: np.ndarray) -> None:
    """Adds int64 fingerprints with their buckets; a fingerprint given
    twice keeps its newest bucket, one already held keeps its own."""
    if len(fps) == 0:
      return
    q = fps.view(np.uint64)
    order = np.lexsort((buckets, q))
    q, buckets = q[order], buckets[order]
    last = np.ones(len(q), dtype=bool)
    last[:-1] = q[1:] != q[:-1]
    new = last & ~self._index.contains(q)
    if new.any():
      self._index = self._index.merged(
          q[new], (buckets[new] % _TAGS).astype(np.uint8))
      self._buckets.update(np.unique(buckets[new]).tolist())
      _release_freed_memory()

  def _drop_buckets(self, dropped: set) -> None:
    for b in dropped:
      self._pending.pop(b, None)
    self._buckets -= dropped
    live = np.zeros(_TAGS, dtype=bool)
    live[[b % _TAGS for b in self._buckets]] = True
    self._index = self._index.kept(live)
    _release_freed_memory()

  def _expire(self, now: float) -> None:
    oldest = self._oldest_bucket(now)
    old = {b for b in self._buckets if b < oldest}
    if old:
      self._drop_buckets(old)

  def _enforce_cap(self, now: float) -> None:
    if self.max_ids is None or len(self) <= self.max_ids:
      return
    before = len(self)
    while len(self) > self.max_ids and len(self._buckets) > 1:
      self._drop_buckets({min(self._buckets)})
    dropped = before - len(self)
    self._evicted += dropped
    if dropped and time.monotonic() - self._warned_at >= _WARN_EVERY_S:
      self._warned_at = time.monotonic()
      covered = now - min(self._buckets) * self._width
      _LOGGER.warning(
          'dedup: %d ids exceed the cap of %d: forgot the oldest %d; the '
          'ids held now cover only the last %.0f s of the %.0f s horizon '
          '(raise the cap or shorten the horizon: docs/operations.md, '
          'sizing)', before, self.max_ids, dropped, covered, self.horizon_s)
