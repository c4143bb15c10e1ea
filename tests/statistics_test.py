"""FeatureStatisticsFn: TFX-format statistics checked against numpy."""

import pickle

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing.util import assert_that
from tensorflow_metadata.proto.v0 import statistics_pb2

from transforms import example_coder as ec
from transforms import statistics as st

N = 20_000


@pytest.fixture(scope='module')
def columns():
  rng = np.random.default_rng(7)
  x = rng.lognormal(1.0, 0.8, N).astype(np.float32)
  x[:100] = 0.0
  t = 1_790_000_000_000 + rng.integers(0, 3_600_000, N)
  keys = [f'det-{k}' for k in rng.choice(5, N, p=[.4, .3, .15, .1, .05])]
  present = np.ones(N, bool)
  present[::10] = False
  return {'x': x, 't': t, 'key': keys, 'present': present}


def _batches(c, size):
  for s in range(0, N, size):
    part = slice(s, s + size)
    yield ec.record_batch({
        'x': ec.column(c['x'][part], ec.FLOAT),
        't': ec.column(c['t'][part], ec.INT, present=c['present'][part]),
        'key': ec.column(c['key'][part], ec.BYTES)})


def _feature(stats, name):
  return next(f for f in stats.features if f.path.step == [name])


def check(stats: statistics_pb2.DatasetFeatureStatistics, c) -> None:
  assert stats.num_examples == N
  x = c['x'].astype(np.float64)
  f = _feature(stats, 'x')
  assert f.type == statistics_pb2.FeatureNameStatistics.FLOAT
  num = f.num_stats
  assert num.common_stats.num_non_missing == N
  assert num.common_stats.num_missing == 0
  assert num.common_stats.avg_num_values == 1
  assert num.mean == pytest.approx(x.mean(), rel=1e-12)
  assert num.std_dev == pytest.approx(x.std(), rel=1e-10)
  assert (num.min, num.max, num.num_zeros) == (x.min(), x.max(), 100)
  # Quantiles: each boundary's rank is within the sketch's error.
  quantiles = next(h for h in num.histograms
                   if h.type == statistics_pb2.Histogram.QUANTILES)
  ordered = np.sort(x)
  for k, bucket in enumerate(quantiles.buckets):
    rank = np.searchsorted(ordered, bucket.high_value, side='right') / N
    assert abs(rank - (k + 1) / st.HISTOGRAM_BUCKETS) <= st.QUANTILES_EPS + 1e-9
    assert bucket.sample_count == N / st.HISTOGRAM_BUCKETS
  assert abs(np.searchsorted(ordered, num.median) / N - 0.5) <= st.QUANTILES_EPS
  standard = next(h for h in num.histograms
                  if h.type == statistics_pb2.Histogram.STANDARD)
  counts, _ = np.histogram(x, bins=st.HISTOGRAM_BUCKETS,
                           range=(x.min(), x.max()))
  got = np.array([b.sample_count for b in standard.buckets])
  assert got.sum() == pytest.approx(N)
  assert np.abs(got - counts).max() <= 2 * st.QUANTILES_EPS * N

  t = c['t'][c['present']].astype(np.float64)
  f = _feature(stats, 't')
  assert f.type == statistics_pb2.FeatureNameStatistics.INT
  assert f.num_stats.common_stats.num_missing == N // 10
  assert f.num_stats.common_stats.num_non_missing == N - N // 10
  assert f.num_stats.mean == pytest.approx(t.mean(), rel=1e-14)
  assert f.num_stats.std_dev == pytest.approx(t.std(), rel=1e-9)
  assert (f.num_stats.min, f.num_stats.max) == (t.min(), t.max())

  f = _feature(stats, 'key')
  assert f.type == statistics_pb2.FeatureNameStatistics.STRING
  values, counts = np.unique(c['key'], return_counts=True)
  order = np.argsort(-counts)
  assert f.string_stats.unique == len(values)
  assert [(v.value, v.frequency) for v in f.string_stats.top_values] == [
      (values[i], counts[i]) for i in order]
  assert f.string_stats.avg_length == pytest.approx(5.0)
  assert [b.label for b in f.string_stats.rank_histogram.buckets] == [
      values[i] for i in order]


def test_statistics_match_numpy_across_batches_and_merges(columns):
  fn = st.FeatureStatisticsFn('train')
  # Three partial accumulators, pickled as Beam moves them, then merged.
  accumulators = []
  for part in range(3):
    acc = fn.create_accumulator()
    for k, batch in enumerate(_batches(columns, 1500)):
      if k % 3 == part:
        acc = fn.add_input(acc, batch)
    accumulators.append(pickle.loads(pickle.dumps(acc)))
  stats = fn.extract_output(fn.merge_accumulators(accumulators))
  assert stats.name == 'train'
  check(stats, columns)


def test_statistics_in_a_pipeline(columns):
  def matches(outputs):
    (stats,) = outputs
    check(stats, columns)

  with beam.Pipeline() as p:
    stats = (p | beam.Create(list(_batches(columns, 4000)))
             | beam.CombineGlobally(st.FeatureStatisticsFn()))
    assert_that(stats, matches)


def test_statistics_list_names_each_dataset():
  fn = st.FeatureStatisticsFn()
  acc = fn.add_input(fn.create_accumulator(), ec.record_batch(
      {'x': ec.column(np.array([1.0, np.nan, 3.0]), ec.FLOAT)}))
  stats = fn.extract_output(acc)
  assert stats.features[0].num_stats.mean == 2.0
  assert stats.features[0].num_stats.histograms[0].num_nan == 1
  listed = st.statistics_list({'eval': stats})
  assert [d.name for d in listed.datasets] == ['eval']
