"""Offset commits on a thread of their own.

A commit waits for the broker's answer. On the local runner the read runs on
the one thread that runs every step, so a commit that waits (a broker busy
writing, a slow group coordinator) would hold up every record in flight.
``BackgroundCommits`` takes the periodic commits off that thread: the read
hands over the offsets and goes on; a later hand-over before the thread got
to the earlier one replaces it (offsets only grow, and the committer never
moves a group backwards). A final commit is made after the pending one, on
the caller's thread, so that it is done when it returns.
"""

import logging
import threading
from typing import Mapping, Optional, Protocol

_LOGGER = logging.getLogger(__name__)
_JOIN_TIMEOUT_S = 30.0


class Committer(Protocol):
  """What is committed through (reader_core.OffsetCommitter)."""

  def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
    ...


class BackgroundCommits:
  """Commits handed over by ``submit`` on a daemon thread (thread-safe).

  Failures are the committer's to report (OffsetCommitter logs and counts
  them; the next commit covers the same partitions).
  """

  def __init__(self, committer: Committer, *, name: str = 'offset-commits'):
    self._committer = committer
    self._cond = threading.Condition()
    self._next: Optional[dict] = None
    self._busy = False
    self._closed = False
    self._thread = threading.Thread(target=self._run, name=name, daemon=True)
    self._thread.start()

  def submit(self, offsets: Mapping[tuple[str, int], int]) -> None:
    """Commits ``offsets`` soon; returns at once."""
    with self._cond:
      if self._closed:
        raise RuntimeError('background commits are closed')
      merged = dict(self._next or {})
      for key, offset in offsets.items():
        merged[key] = max(offset, merged.get(key, -1))
      self._next = merged
      self._cond.notify_all()

  def commit_now(self, offsets: Mapping[tuple[str, int], int]) -> None:
    """Commits ``offsets`` after anything handed over before; returns when
    done."""
    self.wait_idle()
    if offsets:
      self._committer.commit(offsets)

  def wait_idle(self, timeout_s: Optional[float] = None) -> bool:
    """Waits until every handed-over commit was made; False on timeout."""
    with self._cond:
      return self._cond.wait_for(
          lambda: self._next is None and not self._busy, timeout_s)

  def close(self) -> bool:
    """Makes what was handed over, then stops the thread.

    Returns:
      Whether the thread ended (False: a commit still waits for the broker
      after _JOIN_TIMEOUT_S; the committer is then still in use).
    """
    with self._cond:
      self._closed = True
      self._cond.notify_all()
    self._thread.join(_JOIN_TIMEOUT_S)
    return not self._thread.is_alive()

  def _run(self) -> None:
    while True:
      with self._cond:
        self._cond.wait_for(lambda: self._next is not None or self._closed)
        if self._next is None:
          return  # closed, nothing left
        todo, self._next, self._busy = self._next, None, True
      try:
        self._committer.commit(todo)
      except Exception:  # pylint: disable=broad-except
        # The thread must outlive a failed commit; the next one covers it.
        _LOGGER.warning('offset commit failed', exc_info=True)
      finally:
        with self._cond:
          self._busy = False
          self._cond.notify_all()


__all__ = ['BackgroundCommits']
