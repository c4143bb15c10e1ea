"""The splittable reader of ReadFromKafka, called directly (no runner).

Layer 1 (no broker): the restriction provider, the offset tracker and the
watermark estimator of ``_ReadPartitionsFn``. Layer 2 (``it``, a real
broker): ``process`` driven the way the SDK harness drives it
(``apache_beam/runners/common.py``: the tracker wrapped in a
``ThreadsafeRestrictionTracker`` behind a ``RestrictionTrackerView``, every
output's timestamp observed by the watermark estimator, ``check_done()`` after
the call, the residual taken from ``deferred_status()``).
"""

import functools

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.runners.sdf_utils import (RestrictionTrackerView,
                                           ThreadsafeRestrictionTracker,
                                           ThreadsafeWatermarkEstimator)
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from kafka_helpers import produce
from transforms.kafka import KafkaRecord, ReadFromKafka, admin
from transforms.kafka.offsets import UNBOUNDED, PartitionRange
from transforms.kafka.read import (KafkaOffsetTracker, _ReadPartitionsFn,
                                   _ReadUnboundedPartitionsFn)
from transforms.kafka.watermark import (KafkaWatermarkEstimator,
                                        KafkaWatermarkEstimatorProvider)

BASE_TS = 1_700_000_000_000
UNUSED = {'bootstrap.servers': 'unused.invalid:1'}


def _fn(config=None, **read_kwargs) -> _ReadPartitionsFn:
  """The reader DoFn exactly as ReadFromKafka would build it."""
  read = ReadFromKafka(config or UNUSED, 't', start='earliest', stop='end',
                       **read_kwargs)
  return _ReadPartitionsFn(read.settings)


def _ts(seconds: float) -> Timestamp:
  return Timestamp.of(seconds)


def test_only_the_unbounded_reader_is_declared_unbounded():
  settings = ReadFromKafka(UNUSED, 't', start='earliest').settings
  bounded = _ReadPartitionsFn(settings)
  unbounded = _ReadUnboundedPartitionsFn(settings)
  assert not getattr(bounded.process, 'unbounded_per_element', False)
  assert unbounded.process.unbounded_per_element
  # One body: both take the same parameters and read through _read.
  args = beam.transforms.core.get_function_args_defaults
  assert args(bounded.process) == args(unbounded.process)


# Restriction provider.


def test_initial_restriction_is_the_partition_range():
  fn = _fn()
  assert fn.initial_restriction(PartitionRange('t', 0, 5, 100)) == OffsetRange(
      5, 100)
  assert fn.initial_restriction(PartitionRange('t', 1, 7)) == OffsetRange(
      7, UNBOUNDED)


@pytest.mark.parametrize('stop, pieces', [(1000, 10), (1010, 10), (1030, 11)])
def test_bounded_range_splits_into_split_offsets_pieces(stop, pieces):
  fn = _fn(split_offsets=100)
  element = PartitionRange('t', 0, 0, stop)
  parts = list(fn.split(element, OffsetRange(0, stop)))
  assert len(parts) == pieces
  # Contiguous, no gap, no overlap; split_offsets each, except the last
  # (a tail under a quarter of split_offsets is merged into it).
  assert parts[0].start == 0 and parts[-1].stop == stop
  assert all(a.stop == b.start for a, b in zip(parts, parts[1:]))
  assert all(p.stop - p.start == 100 for p in parts[:-1])
  assert 25 <= parts[-1].stop - parts[-1].start < 125


def test_small_unbounded_and_committing_ranges_are_not_split():
  fn = _fn(split_offsets=100)
  small = OffsetRange(0, 100)
  assert list(fn.split(PartitionRange('t', 0, 0, 100), small)) == [small]
  unbounded = OffsetRange(0, UNBOUNDED)
  assert list(fn.split(PartitionRange('t', 0, 0), unbounded)) == [unbounded]
  # Committed offsets must cover a prefix of the output: no sub-ranges.
  committing = _fn({**UNUSED, 'group.id': 'g'}, split_offsets=100)
  big = OffsetRange(0, 10_000)
  assert list(committing.split(PartitionRange('t', 0, 0, 10_000), big)) == [
      big]


def test_restriction_size():
  fn = _fn()
  element = PartitionRange('t', 0, 10, 250)
  assert fn.restriction_size(element, OffsetRange(10, 250)) == 240
  assert fn.restriction_size(element, OffsetRange(250, 250)) == 0
  # Unknown backlog: a constant, not "infinity".
  assert fn.restriction_size(PartitionRange('t', 0, 10),
                             OffsetRange(10, UNBOUNDED)) == 1_000_000


def test_truncate_on_drain_stops_unbounded_and_finishes_bounded():
  fn = _fn()
  assert fn.truncate(PartitionRange('t', 0, 3),
                     OffsetRange(3, UNBOUNDED)) is None
  bounded = OffsetRange(3, 90)
  assert fn.truncate(PartitionRange('t', 0, 3, 90), bounded) == bounded


# Offset tracker.


def test_unbounded_tracker_only_checkpoints():
  tracker = _fn().create_tracker(OffsetRange(0, UNBOUNDED))
  assert isinstance(tracker, KafkaOffsetTracker)
  for offset in range(10):
    assert tracker.try_claim(offset)
  assert tracker.try_split(0.5) is None
  assert tracker.try_split(0.01) is None
  assert tracker.current_restriction() == OffsetRange(0, UNBOUNDED)
  primary, residual = tracker.try_split(0)
  assert primary == OffsetRange(0, 10)
  assert residual == OffsetRange(10, UNBOUNDED)
  tracker.check_done()
  # One checkpoint per call: nothing more to split off.
  assert tracker.try_split(0) is None


def test_unbounded_tracker_checkpoint_before_any_claim_defers_everything():
  tracker = _fn().create_tracker(OffsetRange(42, UNBOUNDED))
  primary, residual = tracker.try_split(0)
  assert primary == OffsetRange(42, 42)
  assert residual == OffsetRange(42, UNBOUNDED)
  tracker.check_done()


def test_bounded_tracker_split_half_halves_the_remainder():
  tracker = _fn().create_tracker(OffsetRange(0, 100))
  for offset in range(10):
    assert tracker.try_claim(offset)
  primary, residual = tracker.try_split(0.5)
  # Unclaimed remainder [10, 100): 90 offsets, split in two near-halves.
  assert primary.start == 0 and residual.stop == 100
  assert primary.stop == residual.start
  assert abs((primary.stop - 10) - (residual.stop - residual.start)) <= 2
  assert tracker.current_restriction() == primary
  # Claims past the split point now fail; the primary can be finished.
  assert not tracker.try_claim(residual.start)
  tracker.check_done()


def test_committing_tracker_refuses_dynamic_splits_but_checkpoints():
  fn = _fn({**UNUSED, 'group.id': 'g'})
  tracker = fn.create_tracker(OffsetRange(0, 100))
  assert tracker.try_claim(0)
  assert tracker.try_split(0.5) is None
  assert tracker.try_split(0) == (OffsetRange(0, 1), OffsetRange(1, 100))


# Watermark estimator.


def _estimator(state=None, max_delay_s=2.0, idle_timeout_s=5.0):
  provider = KafkaWatermarkEstimatorProvider(max_delay_s=max_delay_s,
                                             idle_timeout_s=idle_timeout_s)
  if state is None:
    state = provider.initial_estimator_state(None, None)
  return provider.create_watermark_estimator(state)


def test_watermark_starts_at_min_and_follows_max_record_time_minus_delay():
  est = _estimator(max_delay_s=2.0)
  assert est.current_watermark() == MIN_TIMESTAMP
  est.observe_timestamp(_ts(100))
  assert est.current_watermark() == _ts(98)
  est.observe_timestamp(_ts(90))  # out of order: tolerated, no effect
  assert est.current_watermark() == _ts(98)
  est.observe_timestamp(_ts(120))
  assert est.current_watermark() == _ts(118)


def test_watermark_never_goes_backwards():
  est = _estimator(max_delay_s=0.0, idle_timeout_s=1.0)
  est.observe_timestamp(_ts(500))
  marks = [est.current_watermark()]
  for ts in (400, 450, 100):
    est.observe_timestamp(_ts(ts))
    marks.append(est.current_watermark())
  # The idle advance and later old records do not pull it back either.
  est.record_activity(caught_up=True, now=1_000.0)
  est.record_activity(caught_up=True, now=1_002.0)
  marks.append(est.current_watermark())
  est.record_activity(caught_up=False, now=1_003.0)
  est.observe_timestamp(_ts(600))
  marks.append(est.current_watermark())
  assert marks == sorted(marks)
  assert marks[-1] == _ts(1_002)


def test_watermark_advances_with_the_clock_only_after_idle_timeout():
  est = _estimator(max_delay_s=3.0, idle_timeout_s=5.0)
  est.observe_timestamp(_ts(100))
  est.record_activity(caught_up=True, now=1_000.0)  # idleness starts
  assert est.current_watermark() == _ts(97)
  est.record_activity(caught_up=True, now=1_004.9)
  assert est.current_watermark() == _ts(97)
  est.record_activity(caught_up=True, now=1_005.0)
  assert est.current_watermark() == _ts(1_002)  # now - max_delay
  est.record_activity(caught_up=True, now=1_010.0)
  assert est.current_watermark() == _ts(1_007)


def test_watermark_does_not_advance_while_records_keep_coming():
  est = _estimator(max_delay_s=0.0, idle_timeout_s=1.0)
  est.observe_timestamp(_ts(100))
  for now in (1_000.0, 1_001.5, 1_003.0):
    est.record_activity(caught_up=False, now=now)
  assert est.current_watermark() == _ts(100)
  assert not est.is_idle
  # A read that was caught up and then got records starts idleness anew.
  est.record_activity(caught_up=True, now=1_004.0)
  est.record_activity(caught_up=False, now=1_004.5)
  est.record_activity(caught_up=True, now=1_005.0)
  est.record_activity(caught_up=True, now=1_005.9)
  assert est.current_watermark() == _ts(100)


def test_watermark_state_round_trips_through_a_checkpoint():
  est = _estimator(max_delay_s=1.0, idle_timeout_s=5.0)
  est.observe_timestamp(_ts(200))
  est.record_activity(caught_up=True, now=1_000.0)
  state = est.get_estimator_state()
  assert state == (_ts(199), _ts(200), 1_000.0)
  # The state is what the runner stores with the residual: it must encode.
  coder = beam.coders.registry.get_coder(object)
  resumed = _estimator(coder.decode(coder.encode(state)), max_delay_s=1.0,
                       idle_timeout_s=5.0)
  assert resumed.current_watermark() == _ts(199)
  # Idleness carries over: the timeout counts from before the checkpoint.
  resumed.record_activity(caught_up=True, now=1_005.0)
  assert resumed.current_watermark() == _ts(1_004)


def test_watermark_estimator_through_the_harness_wrapper():
  est = ThreadsafeWatermarkEstimator(_estimator(max_delay_s=0.0))
  est.observe_timestamp(_ts(10))
  est.record_activity(caught_up=False, now=1.0)  # via __getattr__
  assert est.current_watermark() == _ts(10)
  with pytest.raises(ValueError):
    est.observe_timestamp(10)  # the harness wants Timestamps


# Driving process() against a real broker.


class _Finalizer:
  """Records bundle-finalization callbacks (the runner calls them after the
  bundle's output is committed)."""

  def __init__(self):
    self.callbacks = []

  def register(self, callback):
    self.callbacks.append(callback)


class _Call:
  """One process() call made the way runners/common.py makes it."""

  def __init__(self, fn: _ReadPartitionsFn, element: PartitionRange,
               restriction: OffsetRange, estimator_state=None):
    self.fn = fn
    self.element = element
    self.tracker = ThreadsafeRestrictionTracker(fn.create_tracker(restriction))
    if estimator_state is None:
      estimator_state = fn.initial_estimator_state(element, restriction)
    self.estimator = ThreadsafeWatermarkEstimator(
        fn.create_watermark_estimator(estimator_state))
    self.finalizer = _Finalizer()
    self.outputs = []

  def iterate(self):
    """Yields the outputs, observing each timestamp as the harness does."""
    for out in self.fn.process(self.element, finalizer=self.finalizer,
                               tracker=RestrictionTrackerView(self.tracker),
                               watermark=self.estimator):
      self.estimator.observe_timestamp(out.timestamp)
      self.outputs.append(out)
      yield out

  def run(self) -> '_Call':
    for _ in self.iterate():
      pass
    return self.finish()

  def finish(self) -> '_Call':
    # The invoker checks this right after process(): a call must claim (or
    # give back, by a split or checkpoint) its whole restriction.
    self.tracker.check_done()
    return self

  @property
  def residual(self):
    status = self.tracker.deferred_status()
    return status[0] if status else None

  @property
  def resume_delay(self):
    status = self.tracker.deferred_status()
    return status[1] if status else None

  def records(self):
    """(record, element timestamp ms) for every record output."""
    out = []
    for tv in self.outputs:
      values = tv.value if isinstance(tv.value, list) else [tv.value]
      out.extend((r, tv.timestamp.micros // 1000) for r in values)
    return out


def _produce_partition(broker, topic, partition, n, headers=True):
  produce(broker, topic, [
      (partition, f'k{i}'.encode(), f'v{i}'.encode(),
       [('i', str(i).encode())] if headers else None, BASE_TS + 7 * i)
      for i in range(n)
  ])


def _expected(topic, partition, n, start=0, stop=None):
  stop = n if stop is None else stop
  return [(KafkaRecord(topic, partition, i, f'k{i}'.encode(),
                       f'v{i}'.encode(), BASE_TS + 7 * i, 1,
                       (('i', str(i).encode()),)), BASE_TS + 7 * i)
          for i in range(start, stop)]


@pytest.fixture
def setup_fn():
  """Builds reader DoFns with setup() called; tears them down afterwards."""
  fns = []

  def make(config, **read_kwargs):
    fn = _fn(config, **read_kwargs)
    fn.setup()
    fns.append(fn)
    return fn

  yield make
  for fn in fns:
    fn.teardown()


@pytest.mark.it
def test_bounded_range_is_fully_claimed_with_record_timestamps(
    broker, make_topic, setup_fn):
  topic = make_topic(2)
  _produce_partition(broker, topic, 1, 300)
  # consume_batch > records + the end-of-partition event: one consumer call
  # returns everything as soon as it is fetched.
  fn = setup_fn(broker.client_config(), consume_batch=400,
                poll_timeout_s=10, checkpoint_interval_s=30)
  element = PartitionRange(topic, 1, 0, 300)
  call = _Call(fn, element, fn.initial_restriction(element)).run()

  assert call.residual is None  # done, not checkpointed
  assert call.tracker.current_restriction() == OffsetRange(0, 300)
  assert call.records() == _expected(topic, 1, 300)
  # Event time = CreateTime; the watermark followed the records.
  assert call.estimator.current_watermark() == Timestamp(
      micros=(BASE_TS + 7 * 299) * 1000)


@pytest.mark.it
def test_bounded_range_in_batches_carries_earliest_time_per_chunk(
    broker, make_topic, setup_fn):
  topic = make_topic(1)
  _produce_partition(broker, topic, 0, 250)
  fn = setup_fn(broker.client_config(), consume_batch=300, poll_timeout_s=10,
                checkpoint_interval_s=30, max_batch_records=100)
  element = PartitionRange(topic, 0, 20, 250)
  call = _Call(fn, element, fn.initial_restriction(element)).run()

  assert call.residual is None
  assert [len(tv.value) for tv in call.outputs] == [100, 100, 30]
  for tv in call.outputs:
    assert tv.timestamp == Timestamp(
        micros=min(r.timestamp_ms for r in tv.value) * 1000)
  assert [r for r, _ in call.records()] == [
      r for r, _ in _expected(topic, 0, 250, start=20)]
  assert call.estimator.current_watermark() == Timestamp(
      micros=(BASE_TS + 7 * 249) * 1000)


@pytest.mark.it
def test_unbounded_caught_up_read_checkpoints_and_commits_on_finalize(
    broker, make_topic, setup_fn):
  topic = make_topic(2)
  group = f'g-{topic}'
  _produce_partition(broker, topic, 0, 50)
  config = broker.client_config(**{'group.id': group})
  fn = setup_fn(config, consume_batch=51, poll_timeout_s=10,
                checkpoint_interval_s=30, idle_resume_s=0.5)
  element = PartitionRange(topic, 0, 0)
  call = _Call(fn, element, fn.initial_restriction(element)).run()

  # Everything available was emitted, then the read self-checkpointed:
  # the primary is what was read, the residual the unbounded rest, resumed
  # after idle_resume_s.
  assert call.records() == _expected(topic, 0, 50)
  assert call.tracker.current_restriction() == OffsetRange(0, 50)
  assert call.residual == OffsetRange(50, UNBOUNDED)
  assert Duration(seconds=0) <= call.resume_delay <= Duration(seconds=0.5)
  assert call.tracker.try_split(0) is None  # already checkpointed
  # The residual carries the estimator state: caught up, so idle since now.
  watermark, max_seen, idle_since = call.estimator.get_estimator_state()
  assert max_seen == Timestamp(micros=(BASE_TS + 7 * 49) * 1000)
  assert idle_since is not None

  # The commit waits for finalization (output durable), then commits
  # exactly the next offset to read.
  assert len(call.finalizer.callbacks) == 1
  assert admin.committed_offsets(config, group, topic) == {0: None, 1: None}
  call.finalizer.callbacks[0]()
  assert admin.committed_offsets(config, group, topic) == {0: 50, 1: None}

  # Resuming the residual with nothing new: no records, another checkpoint
  # at the same offset, and no commit registered for a call that read
  # nothing. (A worker that did not run the first call: its own consumer.)
  fn = setup_fn(config, consume_batch=51, poll_timeout_s=0.5,
                checkpoint_interval_s=30)
  fn2_call = _Call(fn, element, call.residual,
                   call.estimator.get_estimator_state()).run()
  assert fn2_call.outputs == []
  assert fn2_call.residual == OffsetRange(50, UNBOUNDED)
  assert fn2_call.finalizer.callbacks == []

  # New records: the resumed read continues exactly where it stopped.
  produce(broker, topic, [(0, b'k50', b'v50', [('i', b'50')],
                           BASE_TS + 7 * 50)])
  fn = setup_fn(config, consume_batch=2, poll_timeout_s=10,
                checkpoint_interval_s=30)
  third = _Call(fn, element, fn2_call.residual,
                fn2_call.estimator.get_estimator_state()).run()
  assert third.records() == _expected(topic, 0, 51, start=50)
  assert third.residual == OffsetRange(51, UNBOUNDED)
  third.finalizer.callbacks[0]()
  assert admin.committed_offsets(config, group, topic)[0] == 51


@pytest.mark.it
@pytest.mark.parametrize('max_batch_records', [0, 64])
def test_dynamic_split_mid_read_primary_stops_residual_covers_the_rest(
    broker, make_topic, setup_fn, max_batch_records):
  topic = make_topic(1)
  _produce_partition(broker, topic, 0, 1000, headers=False)
  fn = setup_fn(broker.client_config(), consume_batch=100, poll_timeout_s=10,
                checkpoint_interval_s=30, max_batch_records=max_batch_records)
  element = PartitionRange(topic, 0, 0, 1000)
  call = _Call(fn, element, fn.initial_restriction(element))

  outputs = call.iterate()
  next(outputs)  # the read is under way: some offsets are claimed
  split = call.tracker.try_split(0.5)
  assert split is not None
  primary, residual = split
  assert primary == OffsetRange(0, residual.start)
  assert residual.stop == 1000
  assert 100 <= residual.start < 1000
  for _ in outputs:
    pass
  call.finish()
  assert call.residual is None  # a split, not a checkpoint
  first = [r.offset for r, _ in call.records()]
  assert first == list(range(residual.start))

  rest = _Call(fn, element, residual).run()
  assert rest.residual is None
  second = [r.offset for r, _ in rest.records()]
  assert second == list(range(residual.start, 1000))


@pytest.mark.it
def test_empty_range_claims_nothing_and_is_done(broker, make_topic, setup_fn):
  topic = make_topic(1)
  fn = setup_fn(broker.client_config())
  element = PartitionRange(topic, 0, 0, 0)
  call = _Call(fn, element, fn.initial_restriction(element)).run()
  assert call.outputs == [] and call.residual is None


@pytest.mark.it
def test_commit_callbacks_finalized_out_of_order_never_move_back(
    broker, make_topic, setup_fn):
  topic = make_topic(1)
  group = f'g-{topic}'
  _produce_partition(broker, topic, 0, 20)
  config = broker.client_config(**{'group.id': group})
  # checkpoint_interval_s=0: every call checkpoints after one consumer call.
  fn = setup_fn(config, consume_batch=10, poll_timeout_s=10,
                checkpoint_interval_s=0)
  element = PartitionRange(topic, 0, 0, 20)
  first = _Call(fn, element, fn.initial_restriction(element)).run()
  assert first.residual == OffsetRange(10, 20)
  second = _Call(fn, element, first.residual,
                 first.estimator.get_estimator_state()).run()
  # Finalization of the later bundle arrives first.
  second.finalizer.callbacks[0]()
  first.finalizer.callbacks[0]()
  assert admin.committed_offsets(config, group, topic) == {0: 20}
  commit = first.finalizer.callbacks[0]
  assert isinstance(commit, functools.partial)
  assert commit.args == ({(topic, 0): 10},)


@pytest.mark.it
@pytest.mark.parametrize('with_metadata', [True, False])
@pytest.mark.parametrize('max_batch_records', [0, 40])
@pytest.mark.parametrize('policy', ['create_time', 'processing_time',
                                    'function'])
def test_element_shapes_and_timestamps_for_every_policy(
    broker, make_topic, setup_fn, with_metadata, max_batch_records, policy):
  topic = make_topic(1)
  _produce_partition(broker, topic, 0, 100)
  timestamp_policy = {
      'create_time': 'create_time',
      'processing_time': 'processing_time',
      # Event time from the value: 'v<i>' -> i seconds.
      'function': lambda r: int(r.value[1:]),
  }[policy]
  fn = setup_fn(broker.client_config(), consume_batch=101, poll_timeout_s=10,
                checkpoint_interval_s=30, with_metadata=with_metadata,
                max_batch_records=max_batch_records,
                timestamp_policy=timestamp_policy)
  element = PartitionRange(topic, 0, 0, 100)
  before = Timestamp.now()
  call = _Call(fn, element, fn.initial_restriction(element)).run()
  after = Timestamp.now()

  assert call.residual is None
  if max_batch_records:
    assert [len(tv.value) for tv in call.outputs] == [40, 40, 20]
    pairs = [(item, tv.timestamp) for tv in call.outputs for item in tv.value]
  else:
    assert len(call.outputs) == 100
    pairs = [(tv.value, tv.timestamp) for tv in call.outputs]
  expected = _expected(topic, 0, 100)
  if with_metadata:
    assert [item for item, _ in pairs] == [r for r, _ in expected]
  else:
    assert [item for item, _ in pairs] == [(r.key, r.value)
                                           for r, _ in expected]

  def event_time(i):
    if policy == 'create_time':
      return Timestamp(micros=(BASE_TS + 7 * i) * 1000)
    return Timestamp.of(i)

  if policy == 'processing_time':
    assert all(before <= tv.timestamp <= after for tv in call.outputs)
  elif max_batch_records:
    # Each list carries its earliest record time.
    assert [tv.timestamp for tv in call.outputs] == [
        event_time(i) for i in (0, 40, 80)]
  else:
    assert [tv.timestamp for tv in call.outputs] == [
        event_time(i) for i in range(100)]


def test_output_element_type_selects_fast_coders():
  from apache_beam.typehints import typehints  # pylint: disable=import-outside-toplevel
  from transforms.kafka import KafkaRecordCoder  # pylint: disable=import-outside-toplevel
  p = beam.Pipeline()
  batched = p | 'Batched' >> ReadFromKafka(UNUSED, 't', start='earliest',
                                           max_batch_records=10)
  assert batched.element_type == typehints.List[KafkaRecord]
  coder = beam.coders.registry.get_coder(batched.element_type)
  assert isinstance(coder, beam.coders.ListCoder)
  kv = p | 'KV' >> ReadFromKafka(UNUSED, 't', start='earliest',
                                 with_metadata=False)
  assert kv.element_type == typehints.Tuple[typehints.Optional[bytes],
                                            typehints.Optional[bytes]]
  # Records themselves: round trip, and a size estimate without encoding.
  record = KafkaRecord('t', 1, 2, b'k', b'v' * 100, 3, 1, (('h', None),))
  record_coder = KafkaRecordCoder()
  assert record_coder.decode(record_coder.encode(record)) == record
  assert record_coder.estimate_size(record) == 101 + 48
  assert coder.decode(coder.encode([record, record])) == [record, record]


@pytest.mark.it
def test_consecutive_ranges_continue_on_the_same_consumer(
    broker, make_topic, setup_fn):
  topic = make_topic(1)
  _produce_partition(broker, topic, 0, 100)
  # consume_batch=50: the first range's last record ends a consumer batch,
  # so nothing past its stop is taken from the consumer's queue.
  fn = setup_fn(broker.client_config(), consume_batch=50, poll_timeout_s=10,
                checkpoint_interval_s=30, split_offsets=50)
  element = PartitionRange(topic, 0, 0, 100)
  first, second = fn.split(element, fn.initial_restriction(element))
  assert (first, second) == (OffsetRange(0, 50), OffsetRange(50, 100))

  call = _Call(fn, element, first).run()
  assert call.residual is None
  assert [r.offset for r, _ in call.records()] == list(range(50))
  consumers = fn._consumers  # pylint: disable=protected-access
  consumer = consumers.positioned(topic, 0, 50)
  # Done at the range's last offset (no wait for the end of the partition),
  # and the consumer stands at the next range's start: no re-assign (which
  # costs up to fetch.wait.max.ms on some brokers).
  assert consumers._next_offset[(topic, 0)] == 50  # pylint: disable=protected-access

  call = _Call(fn, element, second).run()
  assert [r.offset for r, _ in call.records()] == list(range(50, 100))
  assert consumers.positioned(topic, 0, 100) is consumer


def test_total_records_allocates_present_records_then_spreads_the_rest():
  # pylint: disable=protected-access
  from transforms.kafka import offsets as offsets_lib
  starts = {('t', 0): 0, ('t', 1): 5, ('t', 2): 0}
  highs = {('t', 0): 10, ('t', 1): 8, ('t', 2): 0}
  assert offsets_lib._allocate_total(starts, highs, 12) == {
      ('t', 0): 10, ('t', 1): 7, ('t', 2): 0}
  # 13 present, 20 wanted: 7 more, spread 3/2/2.
  assert offsets_lib._allocate_total(starts, highs, 20) == {
      ('t', 0): 13, ('t', 1): 10, ('t', 2): 2}
  with pytest.raises(ValueError, match='total_records must be >= 1'):
    offsets_lib.StopAt.total_records(0)
