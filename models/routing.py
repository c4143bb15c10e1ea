"""Canary routing: which events a canary version scores, by key.

An event goes to the canary when the stable 64-bit hash of its key falls in
the first ``fraction`` of ``BUCKETS`` buckets. Stable means the same on
every worker, process and run: BLAKE2b of the key's UTF-8 bytes (8-byte
digest), not Python's ``hash()``, which is salted per process. So during a
canary the same key always goes to the same version, and the per-key window
features a version sees stay coherent; raising the fraction only adds keys
(a key in the canary at 10% is still in it at 20%).

Events without a key (a schema without ``key_field`` gives every event the
empty key) are routed by their event id instead: they share no per-key
state, and one empty key would send all of them to one side.
"""

import hashlib
from typing import Sequence

import numpy as np

BUCKETS = 10_000
# Keys whose bucket is remembered per process (a key's bucket is computed
# once, not for every event); the cache is cleared when it is full.
_CACHE_SIZE = 200_000
_cache: dict = {}


def bucket(key: str) -> int:
  """The bucket of ``key`` in [0, BUCKETS)."""
  b = _cache.get(key)
  if b is None:
    digest = hashlib.blake2b(key.encode('utf-8'), digest_size=8).digest()
    b = int.from_bytes(digest, 'big') % BUCKETS
    if len(_cache) >= _CACHE_SIZE:
      _cache.clear()
    _cache[key] = b
  return b


def threshold(fraction: float) -> int:
  """Buckets below this go to the canary (rounded to whole buckets)."""
  return int(round(min(max(fraction, 0.0), 1.0) * BUCKETS))


def in_canary(key: str, fraction: float) -> bool:
  return bucket(key) < threshold(fraction)


def canary_mask(keys: Sequence[str], ids: Sequence[str],
                fraction: float) -> np.ndarray:
  """bool [n]: which rows the canary scores (``ids`` route rows whose key
  is empty)."""
  limit = threshold(fraction)
  n = len(keys)
  if limit <= 0 or n == 0:
    return np.zeros(n, bool)
  if limit >= BUCKETS:
    return np.ones(n, bool)
  # Streaming batches hold one key's rows (transforms/windows.py): one hash.
  first = keys[0]
  if first and all(k == first for k in keys):
    return np.full(n, bucket(first) < limit)
  return np.fromiter(
      (bucket(k if k else i) < limit for k, i in zip(keys, ids)), bool, n)


__all__ = ['BUCKETS', 'bucket', 'canary_mask', 'in_canary', 'threshold']
