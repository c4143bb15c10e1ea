"""Dataset statistics in TFX's format, computed in a Beam combine.

``FeatureStatisticsFn`` is a CombineFn over ``pa.RecordBatch``es of tf.Example
feature columns (list arrays, as transforms/example_coder.py builds and
decodes them) whose output is a ``tensorflow_metadata``
``DatasetFeatureStatistics``: what TFX's StatisticsGen writes per split (as a
``DatasetFeatureStatisticsList`` in ``Split-<name>/FeatureStats.pb``) and
what TFDV, Facets and SchemaGen read. TFDV itself is not used (no wheel for
this Python); the sketches are tfx-bsl's, the ones TFDV uses:

* every feature: ``num_non_missing``, ``num_missing`` (a row without the
  feature, or with an empty list), min/max/avg/total number of values;
* numeric (float, int): exact ``mean`` and ``std_dev`` (population; merged
  with Chan's parallel formula, so partial results combine without loss),
  ``num_zeros``, exact ``min``/``max``, and from a ``QuantilesSketch``
  (rank error at most ``QUANTILES_EPS`` times the count) the ``median``, a
  QUANTILES histogram of ``HISTOGRAM_BUCKETS`` equal-count buckets and a
  STANDARD histogram of as many equal-width buckets (counts interpolated on
  the quantiles, as TFDV does). NaNs are counted in the histograms'
  ``num_nan`` and left out of everything else;
* bytes (reported as STRING): ``unique`` (a ``KmvSketch``: exact below
  ``KMV_BUCKETS`` distinct values, an estimate above), ``top_values`` and a
  ``rank_histogram`` (a ``MisraGriesSketch``: exact counts below
  ``MISRA_GRIES_BUCKETS`` distinct values), ``avg_length``.
"""

import dataclasses
from typing import Optional

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

QUANTILES_EPS = 0.01          # TFDV's default
HISTOGRAM_BUCKETS = 10
TOP_VALUES = 20
RANK_HISTOGRAM_BUCKETS = 100
KMV_BUCKETS = 128
MISRA_GRIES_BUCKETS = 1000
_MAX_ELEMENTS = 2**32
_CDF_POINTS = 200             # quantiles read to interpolate the STANDARD histogram


def _quantiles_sketch():
  from tfx_bsl import sketches  # pylint: disable=import-outside-toplevel
  return sketches.QuantilesSketch(QUANTILES_EPS, _MAX_ELEMENTS, 1)


@dataclasses.dataclass
class _Presence:
  """How often a feature has values and how many."""
  present: int = 0
  missing: int = 0
  values: int = 0
  min_values: Optional[int] = None
  max_values: Optional[int] = None

  def add(self, lengths: np.ndarray) -> None:
    have = lengths > 0
    present = int(have.sum())
    self.present += present
    self.missing += int(len(lengths) - present)
    self.values += int(lengths.sum())
    if present:
      lo, hi = int(lengths[have].min()), int(lengths.max())
      self.min_values = lo if self.min_values is None else min(
          self.min_values, lo)
      self.max_values = hi if self.max_values is None else max(
          self.max_values, hi)

  def merge(self, other: '_Presence') -> None:
    self.present += other.present
    self.missing += other.missing
    self.values += other.values
    for name, pick in (('min_values', min), ('max_values', max)):
      a, b = getattr(self, name), getattr(other, name)
      setattr(self, name, b if a is None else a if b is None else pick(a, b))

  def fill(self, common) -> None:
    common.num_non_missing = self.present
    common.num_missing = self.missing
    common.tot_num_values = self.values
    if self.present:
      common.min_num_values = self.min_values
      common.max_num_values = self.max_values
      common.avg_num_values = self.values / self.present


@dataclasses.dataclass
class _Numeric:
  """Partial statistics of a numeric feature."""
  kind: str                      # 'float' or 'int'
  presence: _Presence = dataclasses.field(default_factory=_Presence)
  count: int = 0                 # finite values
  mean: float = 0.0
  m2: float = 0.0                # sum of squared deviations from the mean
  zeros: int = 0
  nans: int = 0
  min: float = np.inf
  max: float = -np.inf
  sketch: object = dataclasses.field(default_factory=_quantiles_sketch)

  def add(self, values: np.ndarray) -> None:
    v = values.astype(np.float64, copy=False)
    nan = np.isnan(v)
    if nan.any():
      self.nans += int(nan.sum())
      v = v[~nan]
    if not len(v):
      return
    mean = float(v.mean())
    self._merge_moments(len(v), mean, float(((v - mean)**2).sum()))
    self.zeros += int((v == 0).sum())
    self.min = min(self.min, float(v.min()))
    self.max = max(self.max, float(v.max()))
    self.sketch.AddValues(pa.array(v))

  def _merge_moments(self, n: int, mean: float, m2: float) -> None:
    total = self.count + n
    delta = mean - self.mean
    self.mean += delta * n / total
    self.m2 += m2 + delta * delta * self.count * n / total
    self.count = total

  def merge(self, other: '_Numeric') -> None:
    self.presence.merge(other.presence)
    if other.count:
      self._merge_moments(other.count, other.mean, other.m2)
    self.zeros += other.zeros
    self.nans += other.nans
    self.min = min(self.min, other.min)
    self.max = max(self.max, other.max)
    self.sketch.Merge(other.sketch)

  def fill(self, feature, statistics_pb2) -> None:
    feature.type = (statistics_pb2.FeatureNameStatistics.FLOAT
                    if self.kind == 'float' else
                    statistics_pb2.FeatureNameStatistics.INT)
    stats = feature.num_stats
    self.presence.fill(stats.common_stats)
    stats.num_zeros = self.zeros
    if not self.count:
      return
    stats.mean = self.mean
    stats.std_dev = float(np.sqrt(self.m2 / self.count))
    stats.min = self.min
    stats.max = self.max
    # The sketch is final once read: read every point needed at once.
    points = self.sketch.GetQuantiles(_CDF_POINTS).flatten().to_numpy()
    ranks = np.linspace(0.0, 1.0, _CDF_POINTS + 1)
    step = _CDF_POINTS // HISTOGRAM_BUCKETS
    stats.median = float(points[_CDF_POINTS // 2])
    quantiles = stats.histograms.add(
        type=statistics_pb2.Histogram.QUANTILES, num_nan=self.nans)
    for b in range(HISTOGRAM_BUCKETS):
      quantiles.buckets.add(low_value=float(points[b * step]),
                            high_value=float(points[(b + 1) * step]),
                            sample_count=self.count / HISTOGRAM_BUCKETS)
    standard = stats.histograms.add(
        type=statistics_pb2.Histogram.STANDARD, num_nan=self.nans)
    edges = np.linspace(self.min, self.max, HISTOGRAM_BUCKETS + 1)
    # Cumulative fraction at each edge, from the sketch's quantile curve.
    cdf = (np.interp(edges, points, ranks) if self.max > self.min else
           np.r_[np.zeros(HISTOGRAM_BUCKETS), 1.0])
    cdf[0], cdf[-1] = 0.0, 1.0
    for b in range(HISTOGRAM_BUCKETS):
      standard.buckets.add(low_value=float(edges[b]),
                           high_value=float(edges[b + 1]),
                           sample_count=float((cdf[b + 1] - cdf[b])
                                              * self.count))


def _misra_gries():
  from tfx_bsl import sketches  # pylint: disable=import-outside-toplevel
  return sketches.MisraGriesSketch(MISRA_GRIES_BUCKETS)


def _kmv():
  from tfx_bsl import sketches  # pylint: disable=import-outside-toplevel
  return sketches.KmvSketch(KMV_BUCKETS)


@dataclasses.dataclass
class _Bytes:
  """Partial statistics of a bytes feature."""
  presence: _Presence = dataclasses.field(default_factory=_Presence)
  total_length: int = 0
  top: object = dataclasses.field(default_factory=_misra_gries)
  distinct: object = dataclasses.field(default_factory=_kmv)

  def add(self, values: pa.Array) -> None:
    if not len(values):
      return
    self.total_length += int(pc.sum(pc.binary_length(values)).as_py())
    self.top.AddValues(values)
    self.distinct.AddValues(values)

  def merge(self, other: '_Bytes') -> None:
    self.presence.merge(other.presence)
    self.total_length += other.total_length
    self.top.Merge(other.top)
    self.distinct.Merge(other.distinct)

  def fill(self, feature, statistics_pb2) -> None:
    feature.type = statistics_pb2.FeatureNameStatistics.STRING
    stats = feature.string_stats
    self.presence.fill(stats.common_stats)
    if not self.presence.values:
      return
    stats.unique = self.distinct.Estimate()
    stats.avg_length = self.total_length / self.presence.values
    top = self.top.Estimate().to_pylist()
    for rank, item in enumerate(top[:RANK_HISTOGRAM_BUCKETS]):
      value = _label(item['values'])
      if rank < TOP_VALUES:
        stats.top_values.add(value=value, frequency=item['counts'])
      stats.rank_histogram.buckets.add(low_rank=rank, high_rank=rank,
                                       label=value,
                                       sample_count=item['counts'])


def _label(value: bytes) -> str:
  try:
    return value.decode('utf-8')
  except UnicodeDecodeError:
    return repr(value)


def _kind(value_type: pa.DataType) -> Optional[str]:
  if pa.types.is_floating(value_type):
    return 'float'
  if pa.types.is_integer(value_type):
    return 'int'
  if pa.types.is_binary(value_type) or pa.types.is_large_binary(
      value_type) or pa.types.is_string(value_type) or pa.types.is_large_string(
          value_type):
    return 'bytes'
  return None


class Accumulator:
  """Partial statistics of one dataset (a split): examples and features."""

  def __init__(self):
    self.num_examples = 0
    self.features: dict = {}

  def add(self, batch: pa.RecordBatch) -> None:
    self.num_examples += batch.num_rows
    for name, col in zip(batch.schema.names, batch.columns):
      if pa.types.is_null(col.type):
        continue
      values = col.flatten()
      kind = _kind(values.type)
      if kind is None:
        raise ValueError(f'feature {name!r}: no statistics for values of '
                         f'type {values.type}')
      acc = self.features.get(name)
      if acc is None:
        acc = self.features[name] = (_Bytes() if kind == 'bytes' else
                                     _Numeric(kind))
      acc.presence.add(col.value_lengths().fill_null(0).to_numpy())
      acc.add(values if kind == 'bytes' else
              values.to_numpy(zero_copy_only=False))

  def merge(self, other: 'Accumulator') -> None:
    self.num_examples += other.num_examples
    for name, acc in other.features.items():
      mine = self.features.get(name)
      if mine is None:
        self.features[name] = acc
      else:
        mine.merge(acc)

  def to_proto(self, name: str = ''):
    """The ``DatasetFeatureStatistics`` (features in first-seen order).

    Reading finalizes the sketches: merge nothing into it afterwards.
    """
    # pylint: disable-next=import-outside-toplevel
    from tensorflow_metadata.proto.v0 import statistics_pb2
    out = statistics_pb2.DatasetFeatureStatistics(
        name=name, num_examples=self.num_examples)
    for feature_name, acc in self.features.items():
      feature = out.features.add()
      feature.path.step.append(feature_name)
      acc.fill(feature, statistics_pb2)
    return out


class FeatureStatisticsFn(beam.CombineFn):
  """pa.RecordBatch of feature columns -> ``DatasetFeatureStatistics``
  (module docstring). Accumulators pickle (the sketches do)."""

  def __init__(self, name: str = ''):
    super().__init__()
    self._name = name

  def create_accumulator(self) -> Accumulator:
    return Accumulator()

  def add_input(self, accumulator: Accumulator, batch: pa.RecordBatch
               ) -> Accumulator:
    accumulator.add(batch)
    return accumulator

  def merge_accumulators(self, accumulators) -> Accumulator:
    accumulators = iter(accumulators)
    out = next(accumulators)
    for acc in accumulators:
      out.merge(acc)
    return out

  def extract_output(self, accumulator: Accumulator):
    return accumulator.to_proto(self._name)


def statistics_list(by_name: dict):
  """A ``DatasetFeatureStatisticsList`` of {name: DatasetFeatureStatistics}."""
  # pylint: disable-next=import-outside-toplevel
  from tensorflow_metadata.proto.v0 import statistics_pb2
  out = statistics_pb2.DatasetFeatureStatisticsList()
  for name, stats in by_name.items():
    out.datasets.add().CopyFrom(stats)
    out.datasets[-1].name = name
  return out
