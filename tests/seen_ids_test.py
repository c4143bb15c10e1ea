"""SeenIds: ids of a horizon as 64-bit fingerprints in time buckets."""

import logging

import numpy as np
import pytest

from transforms import seen_ids as lib
from transforms.seen_ids import SeenIds

T0 = 1_800_000_000.0


def _fps(*ids):
  return lib.fingerprints(list(ids))


def test_first_occurrences_are_kept_and_remembered():
  seen = SeenIds(horizon_s=160)
  seen.add(_fps('a'), np.array([T0]), now=T0)
  mask = seen.keep_new(_fps('a', 'b', 'b', 'c'), now=T0 + 10)
  assert mask.tolist() == [False, True, False, True]
  assert len(seen) == 3
  assert seen.keep_new(_fps('c', 'd'), now=T0 + 11).tolist() == [False, True]


def test_an_id_is_remembered_for_the_horizon_and_at_most_a_bucket_more():
  # 16 buckets of 10 s; 'a' is in the bucket [T0, T0 + 10).
  seen = SeenIds(horizon_s=160)
  seen.remember(_fps('a'), now=T0)
  assert not seen.keep_new(_fps('a'), now=T0 + 160).any()
  assert not seen.keep_new(_fps('a'), now=T0 + 169.9).any()
  assert seen.keep_new(_fps('a'), now=T0 + 170).all()


def test_seeded_ids_expire_by_when_they_were_written():
  seen = SeenIds(horizon_s=160)
  now = T0 + 1000
  seen.add(_fps('old', 'mid', 'new', 'future'),
           np.array([now - 500, now - 100, now - 1, now + 50]), now=now)
  # Written before the horizon: never held.
  assert len(seen) == 3
  assert seen.unseen(_fps('old', 'mid', 'new', 'future')).tolist() == [
      True, False, False, False]
  # 'mid' (written at now - 100) leaves 60-70 s later, 'new' 159-169 s.
  assert seen.keep_new(_fps('mid', 'new'), now=now + 70).tolist() == [
      True, False]
  # A time ahead of the clock counts as now.
  assert not seen.keep_new(_fps('future'), now=now + 159).any()


def test_a_fingerprint_seen_twice_keeps_its_newest_time():
  seen = SeenIds(horizon_s=160)
  now = T0 + 1000
  seen.add(_fps('x', 'x'), np.array([now - 150, now - 5]), now=now)
  assert len(seen) == 1
  assert not seen.keep_new(_fps('x'), now=now + 100).any()


def test_many_ids_are_all_found_after_merges_and_others_are_not():
  rng = np.random.default_rng(7)
  ids = rng.integers(-2**63, 2**63 - 1, 400_000, dtype=np.int64)
  others = rng.integers(-2**63, 2**63 - 1, 400_000, dtype=np.int64)
  seen = SeenIds(horizon_s=3600)
  for i in range(0, len(ids), 1000):
    assert seen.keep_new(ids[i:i + 1000], now=T0 + i / 200).all()
  assert len(seen) == len(ids)
  # Most are in the sorted array by now (8 + 1 + ~0.5 bytes per id); the
  # newest still in sets.
  assert len(ids) * 5 < seen.nbytes() < len(ids) * 10
  assert not seen.unseen(ids).any()
  assert seen.unseen(others).all()
  # Extremes of the unsigned order, and duplicates within a query.
  edge = np.array([0, -1, 2**63 - 1, -2**63, 0], dtype=np.int64)
  assert seen.keep_new(edge, now=T0 + 2000).tolist() == [
      True, True, True, True, False]
  assert not seen.unseen(edge).any()


def test_the_sorted_index_agrees_with_numpy():
  rng = np.random.default_rng(3)
  values = np.unique(rng.integers(0, 2**64 - 1, 50_000, dtype=np.uint64))
  index = lib._SortedIndex(values, np.zeros(len(values), np.uint8))
  queries = np.concatenate([values[::7], rng.integers(
      0, 2**64 - 1, 20_000, dtype=np.uint64), np.array([0, 2**64 - 1],
                                                        dtype=np.uint64)])
  assert (index.contains(queries) == np.isin(queries, values)).all()
  assert not lib._SortedIndex.empty().contains(queries).any()


def test_the_cap_forgets_the_oldest_buckets_loudly(caplog):
  seen = SeenIds(horizon_s=160, max_ids=2500)
  rng = np.random.default_rng(1)
  batches = [rng.integers(-2**63, 2**63 - 1, 1000, dtype=np.int64)
             for _ in range(4)]
  with caplog.at_level(logging.WARNING, logger=lib.__name__):
    for i, batch in enumerate(batches):
      seen.keep_new(batch, now=T0 + 20 * i)   # one bucket each
  assert len(seen) == 2000
  assert seen.take_evicted() == 2000 and seen.take_evicted() == 0
  assert seen.unseen(batches[0]).all() and seen.unseen(batches[1]).all()
  assert not seen.unseen(batches[3]).any()
  assert 'exceed the cap of 2500' in caplog.text
  assert 'cover only the last' in caplog.text


def test_settings_are_checked():
  with pytest.raises(ValueError, match='horizon'):
    SeenIds(0)
  with pytest.raises(ValueError, match='max_ids'):
    SeenIds(10, max_ids=0)
