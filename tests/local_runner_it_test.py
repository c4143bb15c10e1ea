"""The local runner's commit-safety check, by what Beam's fields mean.

The local read commits offsets only for what no step downstream still holds,
and learns that from three private fields of the bundle-based runner's
watermark manager (beam_jobs/local_runner.py ``_downstream_state``):
``_pending`` (input scheduled for a step, not yet processed),
``_fired_timers`` (timers fired, not yet processed) and
``_keyed_earliest_holds`` (per key, the earliest output time of what a step
buffers). A Beam upgrade could keep the names and change what they hold;
then offsets would be committed before output is durable. So this test runs
a real windowed pipeline and checks the meaning against what the pipeline
did:

* while a record waits in a GroupByKey for its window to close, the
  manager reports a hold inside that window (above its start, at most its
  end) and nothing covering the record is committed;
* once a later record moves the watermark past the window's end, the
  window fires, the sink step writes the record, the hold moves to the
  later record's window and the commit covers the first record;
* from inside the sink step (its input bundle not yet done) and inside a
  timer callback (its firing not yet done), the manager reports pending
  work;
* at every commit, every record below the committed offset was written.
"""

import time

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain

from beam_jobs import local_runner
from beam_jobs.local_runner import LocalStreamingRunner
from kafka_helpers import produce
from transforms.kafka import ReadFromKafka, admin
from transforms.kafka.reader_core import OffsetCommitter

pytestmark = pytest.mark.it

WINDOW_S = 10
_WINDOW_US = WINDOW_S * 10**6

# Observed in the pipeline's process (the runner runs it in this process).
_REAL_DOWNSTREAM_STATE = local_runner._downstream_state  # pylint: disable=protected-access
_CONTEXT: dict = {}    # the evaluation context and the read's transform
_SUNK: list = []       # offsets the sink step has written
_STATES: list = []     # (pending, earliest hold, offsets sunk) per read call
_COMMITS: list = []    # (offsets committed, offsets sunk) per commit
_PROBES: list = []     # (where, pending) seen from inside steps
_WINDOWED: list = []   # offsets that reached the steps after the windowing


def _window_end_us(t_us: int) -> int:
  """The buffer horizon of the pipeline below: its window's end."""
  return (t_us // _WINDOW_US + 1) * _WINDOW_US


def _probe(where: str) -> None:
  _PROBES.append((where, _REAL_DOWNSTREAM_STATE(_CONTEXT['context'],
                                                _CONTEXT['read'])[0]))


class _Sink(beam.DoFn):

  def process(self, group):
    _probe('sink')
    _SUNK.extend(group[1])


class _TimerProbe(beam.DoFn):
  """Sets a timer at each element's window end; probes when it fires."""
  END = userstate.TimerSpec('end', TimeDomain.WATERMARK)

  def process(self, element, window=beam.DoFn.WindowParam,
              end=beam.DoFn.TimerParam(END)):
    _WINDOWED.append(element[1])
    end.set(window.max_timestamp())

  @userstate.on_timer(END)
  def on_end(self):
    _probe('timer')


def _spy_downstream_state(context, read):
  _CONTEXT.setdefault('context', context)
  _CONTEXT.setdefault('read', read)
  pending, earliest = _REAL_DOWNSTREAM_STATE(context, read)
  _STATES.append((pending, earliest, frozenset(_SUNK)))
  return pending, earliest


def _wait(predicate, what, timeout_s=30):
  deadline = time.monotonic() + timeout_s
  while not predicate():
    if time.monotonic() > deadline:
      raise TimeoutError(f'{what}: not within {timeout_s} s')
    time.sleep(0.05)


def _latest_hold():
  """The earliest hold of the latest read call that saw nothing pending."""
  return next(e for p, e, _ in reversed(_STATES) if not p)


def test_commits_follow_what_the_watermark_manager_holds(broker, make_topic,
                                                          monkeypatch):
  for observed in (_CONTEXT, _SUNK, _STATES, _COMMITS, _PROBES, _WINDOWED):
    observed.clear()
  monkeypatch.setattr(local_runner, '_downstream_state', _spy_downstream_state)
  real_commit = OffsetCommitter.commit

  def commit(self, offsets):
    _COMMITS.append((dict(offsets), frozenset(_SUNK)))
    real_commit(self, offsets)

  monkeypatch.setattr(OffsetCommitter, 'commit', commit)
  topic = make_topic(1)
  group = f'g-{topic}'
  config = broker.client_config(**{'group.id': group})
  # Event times in the past, on window boundaries; the watermark moves only
  # with record times (max_delay 0, no idle advance within the test).
  base = (int(time.time()) // WINDOW_S - 100) * WINDOW_S
  first_window = (base * 10**6, (base + WINDOW_S) * 10**6)
  later_window = ((base + 2 * WINDOW_S) * 10**6, (base + 3 * WINDOW_S) * 10**6)
  produce(broker, topic, [(0, b'k', b'first', None, (base + 1) * 1000)])

  p = beam.Pipeline(runner=LocalStreamingRunner(commit_interval_s=0.1),
                    options=PipelineOptions(streaming=True))
  keyed = (p
           | 'Read' >> ReadFromKafka(config, topic, start='earliest',
                                     idle_timeout_s=3600,
                                     buffer_horizon=_window_end_us)
           | 'Key' >> beam.Map(lambda record: ('k', record.offset))
           | 'Window' >> beam.WindowInto(beam.window.FixedWindows(WINDOW_S)))
  _ = keyed | 'Group' >> beam.GroupByKey() | 'Sink' >> beam.ParDo(_Sink())
  _ = keyed | 'Timer' >> beam.ParDo(_TimerProbe())
  result = p.run()
  try:
    # 1. The first record waits in the GroupByKey for its window to close.
    _wait(lambda: _WINDOWED, 'the first record through the windowing')
    calls = len(_STATES)
    _wait(lambda: len(_STATES) >= calls + 10, 'more read calls')  # > 1 s
    hold = _latest_hold()
    assert hold is not None and first_window[0] < hold <= first_window[1], (
        hold, first_window)
    assert not _SUNK
    assert not _COMMITS
    assert admin.committed_offsets(config, group, topic) == {0: None}

    # 2. A record of a later window moves the watermark past the first
    # window's end: it fires, the sink writes, the commit covers it.
    produce(broker, topic,
            [(0, b'k', b'later', None, (base + 2 * WINDOW_S + 5) * 1000)])
    _wait(lambda: admin.committed_offsets(config, group, topic) == {0: 1},
          'the commit of the written record')
    assert _SUNK == [0]
    hold = _latest_hold()
    assert hold is not None and later_window[0] < hold <= later_window[1], (
        hold, later_window)
    assert ('sink', True) in _PROBES and ('timer', True) in _PROBES
  finally:
    result.stop_reading()
    assert result.wait_until_finish() == PipelineState.DONE

  # 3. Drained: everything written, everything committed.
  assert sorted(_SUNK) == [0, 1]
  assert admin.committed_offsets(config, group, topic) == {0: 2}
  # What was seen from inside the steps: pending work, every time.
  assert {where for where, _ in _PROBES} == {'sink', 'timer'}
  assert all(pending for _, pending in _PROBES), _PROBES
  # No commit ever covered a record the sink had not written.
  assert _COMMITS
  for offsets, sunk in _COMMITS:
    assert all(o in sunk for o in range(offsets[(topic, 0)])), (offsets, sunk)
