"""Time buckets and histograms of the status page (beam_jobs/status/buckets.py)."""

import numpy as np
import pytest

from beam_jobs.status import buckets as bk


def test_ring_keeps_the_last_n_buckets_and_refuses_older_ones():
  ring = bk.TimeRing(3, 10.0)
  counts = np.zeros(3, np.int64)
  slots = ring.claim(ring.bucket_of(np.array([5.0, 15.0, 25.0])), [counts])
  counts[slots] += 1
  # Bucket 3 (t=35) takes bucket 0's slot and clears it.
  slot = ring.claim(ring.bucket_of(np.array([35.0])), [counts])
  assert counts[slot[0]] == 0
  counts[slot] += 1
  # A value of bucket 0 is now too old for the ring.
  assert ring.claim(ring.bucket_of(np.array([1.0])), [counts]).tolist() == [-1]
  starts, window = ring.window(now=39.0)
  assert starts.tolist() == [10.0, 20.0, 30.0]
  assert bk.gather(counts, window).tolist() == [1, 1, 1]
  # Later, buckets nobody wrote to read as empty.
  starts, window = ring.window(now=51.0)
  assert starts.tolist() == [30.0, 40.0, 50.0]
  assert bk.gather(counts, window).tolist() == [1, 0, 0]


def test_latency_percentiles_are_within_half_a_bin():
  rng = np.random.default_rng(1)
  values = rng.lognormal(mean=0.0, sigma=1.5, size=20_000)
  hist = np.bincount(bk.latency_bins(values), minlength=bk.LATENCY_BINS)
  qs = (0.5, 0.9, 0.99)
  shown = [row[0] for row in bk.latency_percentiles(hist, qs)]
  for q, got in zip(qs, shown):
    exact = float(np.quantile(values, q))
    assert abs(got / exact - 1) < 0.06, (q, got, exact)


def test_latencies_out_of_range_go_to_the_open_bins():
  bins = bk.latency_bins(np.array([-3.0, 0.0, 1e-4, 1e9]))
  assert bins.tolist() == [0, 0, 0, bk.LATENCY_BINS - 1]
  assert bk.latency_value(0) == bk.LATENCY_MIN_S
  assert bk.latency_value(bk.LATENCY_BINS - 1) == bk.LATENCY_MAX_S


def test_empty_histograms_have_no_percentile_accuracy_or_auc():
  empty = np.zeros(bk.SCORE_BINS, np.int64)
  assert bk.score_percentiles(empty, (0.5,)) == [[None]]
  assert bk.accuracy(empty, empty) is None
  assert bk.auc(empty, empty) is None


def _exact_auc(scores, labels):
  pos, neg = scores[labels == 1], scores[labels == 0]
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return (greater + 0.5 * ties) / (len(pos) * len(neg))


@pytest.mark.parametrize('separation', [0.0, 0.5, 2.0])
def test_accuracy_and_auc_from_histograms(separation):
  rng = np.random.default_rng(7)
  labels = rng.integers(0, 2, 3000)
  scores = 1 / (1 + np.exp(-(rng.normal(size=3000) + separation * (
      labels - 0.5))))
  bins = bk.score_bins(scores)
  pos = np.bincount(bins[labels == 1], minlength=bk.SCORE_BINS)
  neg = np.bincount(bins[labels == 0], minlength=bk.SCORE_BINS)
  assert bk.accuracy(pos, neg) == pytest.approx(
      np.mean((scores >= 0.5) == (labels == 1)))
  # Binning ties scores within 1/50 of each other: AUC within 0.01.
  assert bk.auc(pos, neg) == pytest.approx(_exact_auc(scores, labels),
                                           abs=0.01)
  # The same binned ties, counted exactly, agree to rounding.
  assert bk.auc(pos, neg) == pytest.approx(
      _exact_auc(bins.astype(float), labels), abs=1e-9)


def test_scores_outside_zero_one_and_nan_are_clipped():
  assert bk.score_bins(np.array([-1.0, 0.0, 0.5, 1.0, 7.0, np.nan])
                       ).tolist() == [0, 0, 25, 49, 49, 0]


def test_a_batch_spanning_more_than_the_ring_keeps_only_the_newest():
  ring = bk.TimeRing(6, 10.0)
  counts = np.zeros(6, np.int64)
  # Buckets 0 and 6 share a slot: 0 is too old once 6 is in the batch.
  slots = ring.claim(np.array([0, 6, 6]), [counts])
  assert slots.tolist() == [-1, 0, 0]
  # And too old relative to now, even in an empty ring.
  ring = bk.TimeRing(6, 10.0)
  assert ring.claim(np.array([0]), [counts], now_bucket=6).tolist() == [-1]
