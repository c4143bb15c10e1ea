"""ReadFromKafka: a pure-Python, splittable Kafka source on confluent-kafka.

Shape of the read (all steps labelled, so Dataflow ``--update`` can map them)::

  Impulse -> ResolvePartitions -> Reshuffle -> ReadPartitions (splittable DoFn)

``ResolvePartitions`` looks up the topics' partitions and resolves the start
and stop specs to one offset range per partition (fails fast on an unreachable
cluster or an unknown topic). ``ReadPartitions`` is a splittable DoFn with one
restriction per partition range:

* bounded ranges split initially (``split_offsets``) and dynamically, unless
  offsets are committed (then only checkpoints: commits must cover a prefix);
* a read self-checkpoints every ``checkpoint_interval_s`` and when no data is
  available, instead of blocking a bundle (and its worker thread);
* a watermark estimator follows record timestamps and advances on idle
  partitions (transforms/kafka/watermark.py);
* offsets are committed to the consumer group when the runner finalizes the
  bundle, i.e. after its output is durable: at-least-once, never
  commit-before-output.

On the local streaming runner the whole transform is replaced by a native read
(transforms/kafka/local_read.py, installed by beam_jobs/local_runner.py); on
every other runner this SDF is the source. What the two readers share
(settings, fetching, consumer events, records to elements, metrics, offset
commits) is in transforms/kafka/reader_core.py.
"""

import functools
import logging
import time
from typing import (Any, Callable, Iterable, Mapping, Optional, Sequence,
                    Union)

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.restriction_trackers import (OffsetRange,
                                                 OffsetRestrictionTracker)
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.typehints import typehints
from apache_beam.utils.timestamp import Duration, Timestamp
from confluent_kafka import Consumer, TopicPartition

from transforms.kafka import admin
from transforms.kafka import config_refs
from transforms.kafka import offsets as offsets_lib
from transforms.kafka.offsets import PartitionRange, StopAt
from transforms.kafka.reader_core import (NAMESPACE, ConsumerEvent,
                                          OffsetCommitter, ReaderCore,
                                          ReadSettings, reader_config,
                                          split_at_events, timestamp_mode)
from transforms.kafka.records import (KafkaRecord, TimestampPolicy,
                                      resolve_timestamp_fn)
from transforms.kafka.watermark import KafkaWatermarkEstimatorProvider

_LOGGER = logging.getLogger(__name__)


class KafkaRecordCoder(coders.Coder):
  """Encodes a KafkaRecord as a plain tuple with Beam's C-accelerated coder."""

  _inner = coders.FastPrimitivesCoder()

  def encode(self, value: KafkaRecord) -> bytes:
    return self._inner.encode(tuple(value))

  def decode(self, encoded: bytes) -> KafkaRecord:
    return KafkaRecord(*self._inner.decode(encoded))

  def estimate_size(self, value: KafkaRecord) -> int:
    # Runners sample element sizes; encoding a whole record for that would
    # cost more than reading it. Payload plus a fixed allowance for the
    # rest is what matters for their estimates.
    return len(value.value or b'') + len(value.key or b'') + 48

  def is_deterministic(self) -> bool:
    return True

  def to_type_hint(self):
    return KafkaRecord


coders.registry.register_coder(KafkaRecord, KafkaRecordCoder)


class PartitionConsumers:
  """One consumer per assigned partition, created on demand and reused.

  A consumer per partition keeps its prefetched records across calls: when a
  restriction resumes at the offset where the previous call stopped, reading
  continues without a seek. Not thread-safe; one per DoFn instance.
  """

  def __init__(self, consumer_config: Mapping[str, Any]):
    self._config = reader_config(consumer_config)
    self._consumers: dict[tuple[str, int], Consumer] = {}
    self._next_offset: dict[tuple[str, int], int] = {}

  def positioned(self, topic: str, partition: int, offset: int) -> Consumer:
    """A consumer whose next record is at ``offset`` of the partition."""
    key = (topic, partition)
    consumer = self._consumers.get(key)
    if consumer is None:
      consumer = Consumer(self._config)
      self._consumers[key] = consumer
    if self._next_offset.get(key) != offset:
      consumer.assign([TopicPartition(topic, partition, offset)])
      self._next_offset[key] = offset
    return consumer

  def advanced(self, topic: str, partition: int, next_offset: int) -> None:
    """Records where the partition's consumer stands after a read."""
    self._next_offset[(topic, partition)] = next_offset

  def invalidate(self, topic: str, partition: int) -> None:
    """Forgets the position (records were fetched but not used)."""
    self._next_offset.pop((topic, partition), None)

  def close(self) -> None:
    for consumer in self._consumers.values():
      try:
        consumer.close()
      except RuntimeError:
        pass  # already closed
    self._consumers.clear()
    self._next_offset.clear()


class _ResolvePartitionsFn(beam.DoFn):
  """Impulse -> one PartitionRange per topic-partition to read."""

  def __init__(self, settings: ReadSettings):
    self._settings = settings
    self._consumer = None
    self._resolved = None

  def setup(self):
    # Referenced settings (secrets) are read on the worker, never pickled.
    self._resolved = config_refs.resolve(self._settings.consumer_config)
    self._consumer = Consumer(reader_config(self._resolved))

  def process(self, unused_impulse) -> Iterable[PartitionRange]:
    s = self._settings
    partitions = admin.topic_partitions(self._resolved, list(s.topics),
                                        s.metadata_timeout_s)
    ranges = offsets_lib.resolve_ranges(
        self._consumer, self._resolved, partitions, s.start, s.stop,
        timeout_s=s.metadata_timeout_s)
    for r in ranges:
      _LOGGER.info('kafka read plan: %s[%d] offsets [%d, %s)%s', r.topic,
                   r.partition, r.start_offset,
                   'inf' if r.stop_offset == offsets_lib.UNBOUNDED else
                   r.stop_offset,
                   f' until t={r.deadline:.0f}' if r.deadline else '')
    yield from ranges

  def teardown(self):
    if self._consumer is not None:
      self._consumer.close()
      self._consumer = None


class KafkaOffsetTracker(OffsetRestrictionTracker):
  """OffsetRestrictionTracker that knows unbounded ranges.

  An unbounded range ([start, UNBOUNDED)) only accepts checkpoints
  (``try_split(0)``): splitting "half of infinity" is meaningless. With
  ``dynamic_splits=False`` a bounded range only accepts checkpoints too (the
  reader uses that when it commits offsets; see _ReadPartitionsFn.split).
  """

  def __init__(self, offset_range: OffsetRange, *,
               dynamic_splits: bool = True):
    super().__init__(offset_range)
    self._dynamic_splits = dynamic_splits

  def is_bounded(self) -> bool:
    return self.current_restriction().stop != offsets_lib.UNBOUNDED

  def try_split(self, fraction_of_remainder):
    if fraction_of_remainder > 0 and (not self.is_bounded()
                                      or not self._dynamic_splits):
      return None
    return super().try_split(fraction_of_remainder)


def _finish_range(tracker) -> None:
  """Marks the rest of the range as done: no record is left below its stop
  (transaction markers or compaction at the end of the log) or the read
  deadline passed. Claiming the stop offset itself fails by design, and
  leaves the tracker done."""
  tracker.try_claim(tracker.current_restriction().stop)


def _claim_run(run: list, tracker) -> tuple[list, bool]:
  """Claims a run of consecutive data messages of one partition.

  One claim per run, not per record: claiming the run's last offset claims
  every offset below it (an OffsetRestrictionTracker only remembers the last
  claim, and a split point always lies above it). If that claim fails, the
  range ended inside the run (its stop offset, or a split that happened
  after the previous claim); the failed claim leaves the tracker done, so no
  further split can move the stop again, and the records below the final
  stop are exactly the ones this restriction owns.

  Returns:
    (the messages this restriction owns, whether the range is done).
  """
  if tracker.try_claim(run[-1].offset()):
    return run, False
  stop = tracker.current_restriction().stop
  return [m for m in run if m.offset() < stop], True


def _process_method(*, unbounded: bool):
  """The reader DoFn's ``process``. Each class gets a function object of its
  own: Beam marks an unbounded one with an attribute on the function."""

  def process(self,
              element: PartitionRange,
              # Beam fills the finalizer positionally: it must come before
              # the restriction and watermark parameters.
              finalizer=beam.DoFn.BundleFinalizerParam,
              tracker=beam.DoFn.RestrictionParam(),
              watermark=beam.DoFn.WatermarkEstimatorParam()):
    yield from self._read(element, tracker, watermark, finalizer)

  return beam.DoFn.unbounded_per_element()(process) if unbounded else process


class _ReadPartitionsFn(beam.DoFn, RestrictionProvider,
                        KafkaWatermarkEstimatorProvider):
  """Splittable DoFn: reads one partition's offset range in batches.

  The DoFn is its own restriction provider (offset ranges of one partition)
  and watermark estimator provider, so their settings travel with it.

  Hot path: per-element overhead dominates Python pipelines, so the reader
  does per-record work only where it must (building the records). Claims
  are made per consumed run of records, timestamps are kept as integer
  microseconds and become Timestamp objects only per emitted element, and
  with ``max_batch_records`` records accumulate over consumer calls into
  full chunks while data keeps arriving.
  """

  process = _process_method(unbounded=False)

  def __init__(self, settings: ReadSettings):
    beam.DoFn.__init__(self)
    KafkaWatermarkEstimatorProvider.__init__(
        self, max_delay_s=settings.max_delay_s,
        idle_timeout_s=settings.idle_timeout_s)
    self._settings = settings
    self._core = ReaderCore(settings)
    self._idle_resume = Duration(seconds=settings.idle_resume_s)
    self._consumers: Optional[PartitionConsumers] = None
    self._committer: Optional[OffsetCommitter] = None
    self.checkpoints = Metrics.counter(NAMESPACE, 'checkpoints')

  # RestrictionProvider: offset ranges of one partition.

  def initial_restriction(self, element: PartitionRange) -> OffsetRange:
    return OffsetRange(element.start_offset, element.stop_offset)

  def create_tracker(self, restriction: OffsetRange) -> KafkaOffsetTracker:
    # Committed offsets must only ever cover a prefix of what was output:
    # with a split, the second half could be finalized (and committed) while
    # the first is still being read, and a crash then would skip the rest of
    # the first half. So a committing read accepts checkpoints only.
    return KafkaOffsetTracker(
        restriction, dynamic_splits=not self._settings.commit_offsets)

  def split(self, element: PartitionRange, restriction: OffsetRange):
    # Not for a committing read either (see create_tracker): parallelism then
    # comes from partitions, not from ranges within one.
    split_offsets = self._settings.split_offsets
    if (restriction.stop == offsets_lib.UNBOUNDED or split_offsets <= 0
        or self._settings.commit_offsets
        or restriction.stop - restriction.start <= split_offsets):
      yield restriction
      return
    yield from restriction.split(split_offsets, split_offsets // 4)

  def restriction_size(self, element: PartitionRange,
                       restriction: OffsetRange) -> int:
    if restriction.stop == offsets_lib.UNBOUNDED:
      # Unknown backlog: a constant keeps runners from weighting an
      # unbounded partition as infinitely large.
      return 1_000_000
    return max(0, restriction.stop - restriction.start)

  def truncate(self, element: PartitionRange, restriction: OffsetRange):
    # On drain, an unbounded read stops; a bounded one finishes its range.
    if restriction.stop == offsets_lib.UNBOUNDED:
      return None
    return restriction

  def setup(self):
    # Referenced settings (secrets) are read on the worker, never pickled.
    config = config_refs.resolve(self._settings.consumer_config)
    self._consumers = PartitionConsumers(config)
    if self._settings.commit_offsets:
      self._committer = OffsetCommitter(config)

  def teardown(self):
    if self._consumers is not None:
      self._consumers.close()
    if self._committer is not None:
      self._committer.close()

  def _read(self, element: PartitionRange, tracker, watermark, finalizer):
    core = self._core
    topic, partition = element.topic, element.partition
    restriction = tracker.current_restriction()
    start = restriction.start
    if start >= restriction.stop:
      return  # an empty range: nothing to claim, the tracker is done
    consumer = self._consumers.positioned(topic, partition, start)
    bundle_deadline = (time.monotonic() +
                       self._settings.checkpoint_interval_s)
    batch = self._settings.max_batch_records
    # The next offset this restriction has not read (what a commit covers).
    next_offset = start
    # Records consumed and claimed but not yet emitted, and their element
    # timestamps (integer micros, whatever the policy).
    items: list = []
    stamps: list = []
    try:
      while True:
        if element.deadline is not None and time.time() >= element.deadline:
          yield from self._emit(items, stamps, watermark, everything=True)
          _finish_range(tracker)
          return
        messages = core.fetch(consumer)
        caught_up = not messages
        range_done = repositioned = exact_end = False
        for run, event in split_at_events(messages):
          if run and run[0].offset() < next_offset:
            # Never re-emit: skip anything fetched before a re-position.
            run = [m for m in run if m.offset() >= next_offset]
          if run:
            run, range_done = _claim_run(run, tracker)
            if run:
              next_offset = run[-1].offset() + 1
              core.convert(run, topic, partition, items, stamps)
            if not range_done and (
                next_offset >= tracker.current_restriction().stop):
              # The last offset of the range was read: done now, rather than
              # waiting for the end-of-partition event (the broker may hold
              # that fetch for fetch.wait.max.ms).
              _finish_range(tracker)
              range_done = True
              # Nothing past the stop was taken from the consumer's queue.
              exact_end = event is None
          if range_done or event is None:
            break
          kind = core.handle_event(event)
          if kind is ConsumerEvent.PARTITION_EOF:
            caught_up = True
            if event.offset() >= tracker.current_restriction().stop:
              # Nothing left below the stop offset (it may lie past the last
              # record: transaction markers or compaction at the log end).
              _finish_range(tracker)
              range_done = True
              break
          elif kind is ConsumerEvent.OUT_OF_RANGE:
            self._out_of_range(consumer, topic, partition, next_offset,
                               event.error())
            repositioned = True
            break
        if range_done and not exact_end:
          # Records past the range may have been fetched: position unknown.
          self._consumers.invalidate(topic, partition)
        elif not repositioned:
          # (After an exact end too: the consumer stands at the stop offset,
          # where the next range of this partition, if any, starts.)
          self._consumers.advanced(topic, partition, next_offset)
        if range_done or batch <= 0 or caught_up or len(items) >= batch:
          # Emit what is complete; while records keep coming, a partial
          # chunk waits for the next consumer call to fill it.
          yield from self._emit(items, stamps, watermark,
                                everything=range_done or caught_up)
        if range_done:
          return
        watermark.record_activity(caught_up=caught_up, now=time.time())
        if caught_up or time.monotonic() >= bundle_deadline:
          # Nothing to read now (or this bundle ran long enough): checkpoint
          # so the runner can commit output, finalize and schedule others.
          # Bounded ranges too: waiting here would hold the worker thread
          # while other partitions (whose consumers prefetch meanwhile)
          # may have records ready.
          yield from self._emit(items, stamps, watermark, everything=True)
          self.checkpoints.inc()
          tracker.defer_remainder(self._idle_resume if caught_up else None)
          return
    finally:
      # Only on a normal return is everything claimed also emitted; the
      # runner finalizes (and so commits) only bundles that succeeded.
      if next_offset > start and self._committer is not None:
        finalizer.register(
            functools.partial(self._committer.commit,
                              {(topic, partition): next_offset}))
      if items:
        # The generator was closed early (the bundle failed): the runner
        # retries from the last checkpoint, so nothing is lost.
        _LOGGER.debug('%s[%d]: %d records not emitted (read abandoned)',
                      topic, partition, len(items))

  def _out_of_range(self, consumer, topic, partition, offset, err) -> None:
    offset = self._core.out_of_range(consumer, topic, partition, offset, err)
    self._consumers.invalidate(topic, partition)
    self._consumers.positioned(topic, partition, offset)

  def _emit(self, items: list, stamps: list, watermark, *, everything: bool):
    """Emits pending records as timestamped elements (and empties the lists
    of what it emits; ReaderCore.take_elements)."""
    for value, micros, _, _ in self._core.take_elements(
        items, stamps, watermark, everything=everything):
      yield beam.window.TimestampedValue(value, Timestamp(micros=micros))


class _ReadUnboundedPartitionsFn(_ReadPartitionsFn):
  """The same reader, declared unbounded so runners treat its output as a stream."""

  process = _process_method(unbounded=True)


class ReadFromKafka(beam.PTransform):
  """Reads Kafka topics as a (possibly unbounded) PCollection.

  Example::

    records = p | ReadFromKafka(
        {'bootstrap.servers': 'localhost:9092', 'group.id': 'scorer'},
        ['events'], start='committed', stop=None)

  Elements are ``KafkaRecord`` (``with_metadata=True``) or ``(key, value)``
  tuples; with ``max_batch_records > 0`` each element is a list of up to that
  many of them, all of one partition, timestamped with the earliest record
  time: per-element overhead dominates Python pipelines, so batch early. A
  list is emitted when full, or with fewer records when the partition is
  caught up, its range ends or the read checkpoints.

  A read that commits offsets does not split a partition's range (initially
  or dynamically; checkpoints only): committed offsets must cover a prefix of
  what was output, which independent sub-ranges could not guarantee.

  Throughput is bound by per-record Python work (building the records) and by
  CPython's cyclic GC: NamedTuple records are never untracked, so a fast read
  triggers full collections of the worker's heap. A job can call
  ``gc.freeze()`` once its workers are set up (models loaded) to make those
  cheap (bench/kafka_read_bench.py ``--gc_freeze``: ~+20% read throughput).

  Retry policy: broker errors while reading raise (the runner retries the
  bundle from the last checkpoint; nothing is skipped). Offset commits that
  fail are logged and counted (``kafka_read/offset_commit_failures``), not
  raised: the output is already durable.
  """

  def __init__(self,
               consumer_config: Mapping[str, Any],
               topics: Union[str, Sequence[str]],
               *,
               start: offsets_lib.StartSpec = offsets_lib.START_COMMITTED,
               stop: Union[None, str, StopAt] = None,
               with_metadata: bool = True,
               commit_offsets: Optional[bool] = None,
               timestamp_policy: Union[str, TimestampPolicy,
                                       Any] = TimestampPolicy.CREATE_TIME,
               max_delay_s: float = 0.0,
               idle_timeout_s: float = 5.0,
               max_batch_records: int = 0,
               consume_batch: int = 500,
               checkpoint_interval_s: float = 1.0,
               poll_timeout_s: float = 0.1,
               idle_resume_s: float = 0.1,
               split_offsets: int = 1_000_000,
               metadata_timeout_s: float = 30.0,
               source_watermark=None,
               buffer_horizon: Optional[Callable[[int], int]] = None):
    """Configures the read.

    Args:
      consumer_config: librdkafka settings, passed through unchanged
        (``bootstrap.servers``, ``group.id``, ``security.protocol``,
        ``sasl.*``, ``ssl.*``, ``auto.offset.reset``...).
      topics: a topic or a list of topics.
      start: 'committed' (the group's offsets, falling back to
        ``auto.offset.reset``, default latest), 'earliest', 'latest', or a
        time (ISO-8601 string, datetime, Timestamp) via offsets_for_times.
      stop: None (unbounded), 'end' (end offsets observed at start), or a
        ``StopAt`` (records per partition, read time, timestamp, offsets).
      with_metadata: KafkaRecord elements if True, else (key, value).
      commit_offsets: commit read offsets to ``group.id`` on bundle
        finalization. Default: True when a group.id is configured. Turns
        off the splitting of a partition's range.
      timestamp_policy: 'create_time' (default), 'log_append_time',
        'processing_time', or a function KafkaRecord -> seconds/Timestamp.
      max_delay_s: out-of-orderness tolerated: the watermark trails the
        largest record time by this much.
      idle_timeout_s: after this long without new records a partition's
        watermark advances with the wall clock.
      max_batch_records: 0 for one element per record, else the largest
        size of the record lists emitted as elements.
      consume_batch: most records taken per consumer call (a call returns
        what is queued, without waiting for a full batch). Keep it under
        CPython's gen-0 GC threshold (700 objects): larger batches get their
        messages promoted into old generations and trigger full collections
        of the worker's heap (measured: 1000 -> ~10 full collections and
        ~30% less throughput per 1M records; 500 -> ~3).
      checkpoint_interval_s: longest time one call reads before a
        self-checkpoint (bounds bundle length and offset-commit lag).
      poll_timeout_s: how long one consumer call waits for records.
      idle_resume_s: delay before a caught-up unbounded read resumes.
      split_offsets: initial split size of bounded ranges, in offsets
        (not used when committing offsets).
      metadata_timeout_s: time allowed for the cluster to answer at start.
      source_watermark: local streaming runner only: a
        transforms.source_watermark.SourceWatermark on which the read
        publishes its watermark for the steps downstream.
      buffer_horizon: local streaming runner only: event time (micros) ->
        end (micros) of the last window a windowed sink may hold the
        record's output in (transforms.windows.BufferHorizon). Offsets are
        then committed as those windows are written; without it, only when
        no step holds anything. Elsewhere the runner's bundle finalization
        decides when offsets are committed.
    """
    super().__init__()
    if not consumer_config.get('bootstrap.servers'):
      raise ValueError("consumer_config needs 'bootstrap.servers'")
    topics = (topics,) if isinstance(topics, str) else tuple(topics)
    if not topics:
      raise ValueError('topics must name at least one topic')
    config = dict(consumer_config)
    start = offsets_lib.normalize_start(start)
    if commit_offsets is None:
      commit_offsets = bool(config.get('group.id'))
    if commit_offsets and not config.get('group.id'):
      raise ValueError("commit_offsets=True needs 'group.id' in consumer_config")
    if start == offsets_lib.START_COMMITTED and not config.get('group.id'):
      raise ValueError(
          "start='committed' needs 'group.id' in consumer_config; "
          "or use start='earliest'/'latest'")
    self._settings = ReadSettings(
        consumer_config=config, topics=topics, start=start,
        stop=offsets_lib.normalize_stop(stop),
        timestamp_fn=resolve_timestamp_fn(timestamp_policy),
        timestamp_mode=timestamp_mode(timestamp_policy),
        with_metadata=with_metadata, commit_offsets=commit_offsets,
        max_batch_records=max_batch_records, consume_batch=consume_batch,
        checkpoint_interval_s=checkpoint_interval_s,
        poll_timeout_s=poll_timeout_s, idle_resume_s=idle_resume_s,
        split_offsets=split_offsets, max_delay_s=max_delay_s,
        idle_timeout_s=idle_timeout_s, metadata_timeout_s=metadata_timeout_s,
        source_watermark=source_watermark, buffer_horizon=buffer_horizon)

  @property
  def settings(self) -> ReadSettings:
    """The resolved settings (the local read and the cross-language read
    are built from them)."""
    return self._settings

  @property
  def is_bounded(self) -> bool:
    return self._settings.is_bounded

  def to_runner_api_parameter(self, context):
    # Serialized as itself (as Beam's ReadFromPubSub is) so the runner API
    # round trip keeps the type: the local streaming override matches on it.
    return self.to_runner_api_pickled(context)

  def expand(self, pbegin):
    ranges = (
        pbegin
        | 'Impulse' >> beam.Impulse()
        | 'ResolvePartitions' >> beam.ParDo(
            _ResolvePartitionsFn(self._settings)))
    # Spread partitions over workers before the read (the SDF would
    # otherwise be fused with the single Impulse element's worker).
    ranges = ranges | 'DistributePartitions' >> beam.Reshuffle()
    fn_class = (_ReadPartitionsFn if self._settings.is_bounded else
                _ReadUnboundedPartitionsFn)
    return ranges | 'ReadPartitions' >> beam.ParDo(
        fn_class(self._settings)).with_output_types(self._element_type())

  def _element_type(self):
    """The output element type: it picks the coder of the output (without
    it, records would be pickled one by one wherever they are encoded)."""
    kv = typehints.Tuple[typehints.Optional[bytes], typehints.Optional[bytes]]
    item = KafkaRecord if self._settings.with_metadata else kv
    if self._settings.max_batch_records > 0:
      return typehints.List[item]
    return item
