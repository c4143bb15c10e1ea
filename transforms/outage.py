"""Riding out an unavailable destination: capped backoff, a log line, a limit.

A streaming job meets outages: a bucket or directory that refuses writes for
a while, a broker restarting, an API returning 503. Failing the bundle at once
turns a blip of a second into a failed job on runners that retry a bundle only
a few times (Beam's local runners: four attempts, milliseconds apart). Sinks
therefore retry a failed write in place, with capped exponential backoff,
logging one line per ``log_every_s`` ("output X unavailable for 42 s,
retrying: <error>"), for as long as the job's ``--max_outage_s`` allows; only
then the write raises ``OutageError`` naming the destination. While a sink
waits, its bundle is unfinished, so nothing after it is committed: offsets
never move past undelivered output.

Only errors that can heal are retried here (the caller says which); a
deterministic failure (a record a destination will never accept) is the
caller's to dead-letter or raise.
"""

import dataclasses
import logging
import math
import time
from typing import Callable, Optional, TypeVar

_LOGGER = logging.getLogger(__name__)

T = TypeVar('T')

DEFAULT_MAX_OUTAGE_S = 1800.0


class OutageError(IOError):
  """A destination stayed unavailable for longer than the policy allows."""


@dataclasses.dataclass(frozen=True)
class OutagePolicy:
  """How long and how often a destination is retried.

  Attributes:
    max_outage_s: give up after the destination failed for this long
      (``math.inf``: never, as a Dataflow streaming job).
    initial_backoff_s: first wait after a failure; doubles per failure.
    max_backoff_s: longest wait between two attempts.
    log_every_s: at most one "unavailable" log line per this many seconds.
  """
  max_outage_s: float = DEFAULT_MAX_OUTAGE_S
  initial_backoff_s: float = 0.2
  max_backoff_s: float = 15.0
  log_every_s: float = 10.0

  def __post_init__(self):
    if not self.max_outage_s >= 0:
      raise ValueError(f'max outage must be >= 0 s, got {self.max_outage_s}')
    if not 0 < self.initial_backoff_s <= self.max_backoff_s:
      raise ValueError('backoff must satisfy 0 < initial <= max, got '
                       f'{self.initial_backoff_s}, {self.max_backoff_s}')

  @classmethod
  def of_flag(cls, max_outage_s: Optional[float]) -> 'OutagePolicy':
    """The policy of ``--max_outage_s`` (0 or None: unlimited)."""
    if not max_outage_s:
      return cls(max_outage_s=math.inf)
    return cls(max_outage_s=float(max_outage_s))


class Outage:
  """One destination's current run of failures.

  ``failed(error)`` after each failed attempt: logs (rate-limited), sleeps
  the backoff and returns, or raises OutageError once the outage has lasted
  longer than the policy allows. ``recovered()`` after a success logs the
  recovery if an outage was reported.
  """

  def __init__(self, destination: str, policy: OutagePolicy, *,
               clock: Callable[[], float] = time.monotonic,
               sleep: Callable[[float], None] = time.sleep):
    self._destination = destination
    self._policy = policy
    self._clock = clock
    self._sleep = sleep
    self._started: Optional[float] = None
    self._failures = 0
    self._logged_at: Optional[float] = None

  @property
  def failures(self) -> int:
    return self._failures

  def failed(self, error: BaseException) -> None:
    now = self._clock()
    if self._started is None:
      self._started = now
    self._failures += 1
    down_s = now - self._started
    if down_s >= self._policy.max_outage_s:
      raise OutageError(
          f'{self._destination} unavailable for {down_s:.0f} s '
          f'({self._failures} attempts; --max_outage_s '
          f'{self._policy.max_outage_s:g}): {error}') from error
    if (self._logged_at is None or
        now - self._logged_at >= self._policy.log_every_s):
      _LOGGER.warning('%s unavailable for %.0f s, retrying (attempt %d): %s',
                      self._destination, down_s, self._failures, error)
      self._logged_at = now
    backoff = min(self._policy.max_backoff_s,
                  self._policy.initial_backoff_s * 2**min(self._failures - 1,
                                                          30))
    remaining = self._policy.max_outage_s - down_s
    self._sleep(max(0.0, min(backoff, remaining)))

  def recovered(self) -> None:
    if self._logged_at is not None:
      _LOGGER.warning('%s available again after %.0f s (%d failed attempts)',
                      self._destination, self._clock() - self._started,
                      self._failures)
    self._started = None
    self._failures = 0
    self._logged_at = None


def call_through_outage(fn: Callable[[], T], destination: str,
                        policy: OutagePolicy, *,
                        retriable: Callable[[BaseException], bool],
                        on_failure: Optional[Callable[[BaseException],
                                                      None]] = None) -> T:
  """``fn()``, retried while ``retriable(error)`` within ``policy``.

  Args:
    fn: the attempt; it must be safe to repeat (e.g. write a temporary file
      and rename it).
    destination: names the destination in logs and in the final error.
    policy: the outage policy.
    retriable: which errors can heal; others propagate at once.
    on_failure: called with each retried error (e.g. to count it).
  """
  outage = Outage(destination, policy)
  while True:
    try:
      result = fn()
    except Exception as e:  # pylint: disable=broad-except
      if not retriable(e):
        raise
      if on_failure is not None:
        on_failure(e)
      outage.failed(e)
      continue
    outage.recovered()
    return result


__all__ = ['DEFAULT_MAX_OUTAGE_S', 'Outage', 'OutageError', 'OutagePolicy',
           'call_through_outage']
