"""What each read costs the local runner stays flat over a run.

Three things the bundle-based runner would otherwise pay per read, on a
real broker and a real streaming pipeline (beam_jobs/local_runner.py):

* the bundle that schedules the next read is dropped from the read's
  pending set once evaluated (Beam keeps empty ones, one per read, and
  scans them all at every watermark update);
* an output that received no element is not scheduled on the steps that
  consume it (Beam schedules them with an empty bundle);
* a step's DoFn (and its DoFnRunner) is set up once and reused for every
  bundle, and torn down when the run ends.
"""

import threading
import time

import apache_beam as beam
import pytest
from apache_beam import pvalue
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from beam_jobs import local_runner
from beam_jobs.local_runner import LocalStreamingRunner
from kafka_helpers import produce
from transforms.kafka import ReadFromKafka

pytestmark = pytest.mark.it

_REAL_DOWNSTREAM_STATE = local_runner._downstream_state  # pylint: disable=protected-access
_SEEN: dict = {}      # the evaluation context and the read's transform
_PENDING: list = []   # size of the read's pending set at each read
_LIFE: dict = {}      # lifecycle calls of the counted DoFn
_LOCK = threading.Lock()


def _count(what: str) -> None:
  with _LOCK:
    _LIFE[what] = _LIFE.get(what, 0) + 1


def _spy(context, read):
  _SEEN.setdefault('context', context)
  manager = context._watermark_manager  # pylint: disable=protected-access
  _PENDING.append(len(manager._transform_to_watermarks[read]._pending))  # pylint: disable=protected-access
  return _REAL_DOWNSTREAM_STATE(context, read)


class _Split(beam.DoFn):
  """Every record to the main output; nothing ever to 'never'."""

  def process(self, record):
    if record.value == b'impossible':
      yield pvalue.TaggedOutput('never', record)
    yield record.offset


class _Counted(beam.DoFn):

  def setup(self):
    _count('setup')

  def start_bundle(self):
    _count('bundles')

  def process(self, offset):
    _count('elements')
    yield offset

  def teardown(self):
    _count('teardown')


def _tail(offset):
  _count('tail')


class _NeverBundles(beam.DoFn):

  def start_bundle(self):
    _count('never_bundles')

  def process(self, element):
    _count('never_elements')


def test_reads_cost_the_same_late_in_a_run_as_early(broker, make_topic,
                                                     monkeypatch):
  for seen in (_SEEN, _PENDING, _LIFE):
    seen.clear()
  monkeypatch.setattr(local_runner, '_downstream_state', _spy)
  topic = make_topic(2)
  config = broker.client_config(**{'group.id': f'g-{topic}'})
  p = beam.Pipeline(runner=LocalStreamingRunner(),
                    options=PipelineOptions(streaming=True))
  split = (p
           | 'Read' >> ReadFromKafka(config, topic, start='earliest',
                                     idle_timeout_s=3600)
           | 'Split' >> beam.ParDo(_Split()).with_outputs('never',
                                                          main='offsets'))
  _ = (split.offsets | 'Counted' >> beam.ParDo(_Counted())
       | 'Tail' >> beam.Map(_tail))
  _ = split.never | 'Never' >> beam.ParDo(_NeverBundles())
  result = p.run()
  sent = 0
  try:
    # Records in several rounds, so that many reads deliver something.
    for round_ in range(8):
      produce(broker, topic, [(round_ % 2, b'k', b'v%d' % i, None, None)
                              for i in range(25)])
      sent += 25
      time.sleep(0.3)
    deadline = time.monotonic() + 30
    while _LIFE.get('elements', 0) < sent and time.monotonic() < deadline:
      time.sleep(0.05)
    reads = len(_PENDING)
    # Idle reads too (one per poll timeout).
    while len(_PENDING) < reads + 20 and time.monotonic() < deadline:
      time.sleep(0.05)
  finally:
    result.stop_reading()
    assert result.wait_until_finish() == PipelineState.DONE

  # Reused runners wrote every output of every bundle to that bundle.
  assert _LIFE.get('elements') == _LIFE.get('tail') == sent, _LIFE
  assert len(_PENDING) >= 40, len(_PENDING)
  # Beam's own evaluator would leave one more bundle pending per read.
  assert max(_PENDING) <= 2, _PENDING[-10:]
  # The empty output scheduled nothing; the main output many bundles.
  assert _LIFE.get('never_bundles', 0) == 0
  assert _LIFE['bundles'] >= 4, _LIFE
  # One copy, set up once for all of its bundles, torn down at the end.
  assert _LIFE['setup'] == 1 and _LIFE['teardown'] == 1, _LIFE
