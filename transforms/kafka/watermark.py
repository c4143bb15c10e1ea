"""Per-partition event-time watermark for the Kafka read.

The watermark follows record timestamps (the largest seen minus ``max_delay``,
the out-of-orderness the policy tolerates) and, once a partition has had no
new records for ``idle_timeout``, moves on with the wall clock
(``now - max_delay``) so event-time windows still close on quiet partitions.
Never goes backwards, and never ahead of the wall clock: a record stamped in
the future (a producer with a skewed clock) counts as stamped now, so a few
such records cannot make the events after them late.
Used by the splittable reader (as a Beam WatermarkEstimator) and by the local
streaming read.
"""

import time
from typing import Callable, Optional

from apache_beam.io.iobase import WatermarkEstimator
from apache_beam.transforms.core import WatermarkEstimatorProvider
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

# (watermark, largest record timestamp seen, wall-clock second idleness began)
EstimatorState = tuple[Timestamp, Optional[Timestamp], Optional[float]]


class KafkaWatermarkEstimator(WatermarkEstimator):
  """Watermark = max(record time) - max_delay, advancing with the clock when idle."""

  def __init__(self, state: Optional[EstimatorState], *, max_delay_s: float,
               idle_timeout_s: float,
               clock: Callable[[], float] = time.time):
    state = state or (MIN_TIMESTAMP, None, None)
    self._watermark, self._max_seen, self._idle_since = state
    self._max_delay = Duration(seconds=max_delay_s)
    self._idle_timeout_s = idle_timeout_s
    self._clock = clock

  def observe_timestamp(self, timestamp: Timestamp) -> None:
    if self._max_seen is not None and timestamp <= self._max_seen:
      return
    now = Timestamp.of(self._clock())
    self._max_seen = min(timestamp, now)

  def current_watermark(self) -> Timestamp:
    if self._max_seen is not None:
      candidate = self._max_seen - self._max_delay
      if candidate > self._watermark:
        self._watermark = candidate
    return self._watermark

  def get_estimator_state(self) -> EstimatorState:
    return (self.current_watermark(), self._max_seen, self._idle_since)

  def record_activity(self, *, caught_up: bool, now: float) -> None:
    """Tells the estimator whether the partition is caught up at wall time ``now``.

    A partition that stays caught up (no new records) for ``idle_timeout_s``
    advances its watermark to ``now - max_delay``: the next record is assumed
    to carry an event time near the time it is written.
    """
    if not caught_up:
      self._idle_since = None
      return
    if self._idle_since is None:
      self._idle_since = now
    elif now - self._idle_since >= self._idle_timeout_s:
      candidate = Timestamp.of(now) - self._max_delay
      if candidate > self.current_watermark():
        self._watermark = candidate

  @property
  def is_idle(self) -> bool:
    return self._idle_since is not None


class KafkaWatermarkEstimatorProvider(WatermarkEstimatorProvider):
  """Creates a KafkaWatermarkEstimator per partition restriction."""

  def __init__(self, *, max_delay_s: float = 0.0, idle_timeout_s: float = 5.0):
    if max_delay_s < 0:
      raise ValueError(f'max_delay_s must be >= 0, got {max_delay_s}')
    if idle_timeout_s < 0:
      raise ValueError(f'idle_timeout_s must be >= 0, got {idle_timeout_s}')
    self._max_delay_s = max_delay_s
    self._idle_timeout_s = idle_timeout_s

  def initial_estimator_state(self, element, restriction) -> EstimatorState:
    return (MIN_TIMESTAMP, None, None)

  def create_watermark_estimator(self, estimator_state) -> KafkaWatermarkEstimator:
    return KafkaWatermarkEstimator(estimator_state,
                                   max_delay_s=self._max_delay_s,
                                   idle_timeout_s=self._idle_timeout_s)
