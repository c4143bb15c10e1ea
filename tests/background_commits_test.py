"""transforms/kafka/background_commits.py: commits off the read's thread."""

import threading
import time

import pytest

from transforms.kafka.background_commits import BackgroundCommits

A, B = ('t', 0), ('t', 1)


class _Committer:
  """Records commits; the first one waits until released."""

  def __init__(self, fail_first=False):
    self.made = []
    self.started = threading.Event()
    self.release = threading.Event()
    self._fail_first = fail_first

  def commit(self, offsets):
    first = not self.started.is_set()
    self.started.set()
    if first:
      assert self.release.wait(10)
      if self._fail_first:
        raise RuntimeError('broker gone')
    self.made.append((dict(offsets), threading.current_thread().name))


def test_submit_returns_while_a_commit_waits_and_later_ones_merge():
  committer = _Committer()
  commits = BackgroundCommits(committer)
  t0 = time.monotonic()
  commits.submit({A: 1})
  assert committer.started.wait(5)
  commits.submit({A: 5})
  commits.submit({A: 7, B: 3})
  commits.submit({A: 6})  # an older offset never wins over a newer one
  assert time.monotonic() - t0 < 1.0  # nobody waited for the broker
  assert not commits.wait_idle(0.05)
  committer.release.set()
  assert commits.wait_idle(5)
  assert [made for made, _ in committer.made] == [{A: 1}, {A: 7, B: 3}]
  assert {thread for _, thread in committer.made} == {'offset-commits'}
  commits.close()


def test_a_final_commit_follows_the_pending_one_on_the_callers_thread():
  committer = _Committer()
  commits = BackgroundCommits(committer)
  commits.submit({A: 3})
  assert committer.started.wait(5)
  threading.Timer(0.2, committer.release.set).start()
  commits.commit_now({A: 9, B: 2})  # returns only when made
  assert committer.made == [({A: 3}, 'offset-commits'),
                            ({A: 9, B: 2}, threading.current_thread().name)]
  commits.close()


def test_a_failed_commit_does_not_stop_later_ones():
  committer = _Committer(fail_first=True)
  commits = BackgroundCommits(committer)
  commits.submit({A: 1})
  assert committer.started.wait(5)
  committer.release.set()
  assert commits.wait_idle(5)
  commits.submit({A: 2})
  assert commits.wait_idle(5)
  assert [made for made, _ in committer.made] == [{A: 2}]
  commits.close()


def test_close_makes_what_was_handed_over_and_refuses_more():
  committer = _Committer()
  committer.release.set()
  commits = BackgroundCommits(committer)
  commits.submit({A: 4})
  commits.close()
  assert [made for made, _ in committer.made] == [{A: 4}]
  with pytest.raises(RuntimeError, match='closed'):
    commits.submit({A: 5})
