"""The outage policy: capped exponential backoff, rate-limited logs, a limit."""

import logging
import math

import pytest

from transforms.outage import (Outage, OutageError, OutagePolicy,
                               call_through_outage)


class _FakeTime:

  def __init__(self):
    self.now = 100.0
    self.sleeps = []

  def clock(self):
    return self.now

  def sleep(self, s):
    self.sleeps.append(s)
    self.now += s


def test_backoff_doubles_up_to_the_cap_and_gives_up_after_the_limit(caplog):
  t = _FakeTime()
  outage = Outage('output X', OutagePolicy(max_outage_s=60, initial_backoff_s=1,
                                           max_backoff_s=8, log_every_s=10),
                  clock=t.clock, sleep=t.sleep)
  with caplog.at_level(logging.WARNING):
    with pytest.raises(OutageError, match=r'output X unavailable for 6\d s'):
      for _ in range(100):
        outage.failed(IOError('disk full'))
  assert t.sleeps[:6] == [1, 2, 4, 8, 8, 8]
  assert sum(t.sleeps) == pytest.approx(60)  # the last wait ends at the limit
  lines = [r.getMessage() for r in caplog.records]
  assert lines[0].startswith('output X unavailable for 0 s, retrying')
  # One line per 10 s of outage, not one per attempt.
  assert 3 <= len(lines) < outage.failures


def test_recovery_resets_the_outage_and_is_logged(caplog):
  t = _FakeTime()
  outage = Outage('topic out', OutagePolicy(max_outage_s=5, initial_backoff_s=1,
                                            max_backoff_s=1),
                  clock=t.clock, sleep=t.sleep)
  with caplog.at_level(logging.WARNING):
    for _ in range(4):
      outage.failed(IOError('down'))
    outage.recovered()
    for _ in range(4):  # a new outage gets the whole limit again
      outage.failed(IOError('down'))
  assert any('available again after 4 s' in r.getMessage()
             for r in caplog.records)


def test_call_through_outage_retries_only_what_can_heal():
  calls = []

  def flaky():
    calls.append(1)
    if len(calls) < 3:
      raise ConnectionError('refused')
    return 'done'

  policy = OutagePolicy(max_outage_s=5, initial_backoff_s=0.001,
                        max_backoff_s=0.001)
  failures = []
  assert call_through_outage(
      flaky, 'x', policy, retriable=lambda e: isinstance(e, OSError),
      on_failure=failures.append) == 'done'
  assert len(calls) == 3 and len(failures) == 2
  with pytest.raises(ValueError):
    call_through_outage(lambda: int('x'), 'x', policy,
                        retriable=lambda e: isinstance(e, OSError))


def test_flag_zero_means_unlimited():
  assert OutagePolicy.of_flag(0).max_outage_s == math.inf
  assert OutagePolicy.of_flag(None).max_outage_s == math.inf
  assert OutagePolicy.of_flag(42).max_outage_s == 42
  with pytest.raises(ValueError):
    OutagePolicy(max_outage_s=-1)
