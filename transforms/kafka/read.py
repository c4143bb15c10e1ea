"""ReadFromKafka: a pure-Python, splittable Kafka source on confluent-kafka.

Shape of the read (all steps labelled, so Dataflow ``--update`` can map them)::

  Impulse -> ResolvePartitions -> Reshuffle -> ReadPartitions (splittable DoFn)

``ResolvePartitions`` looks up the topics' partitions and resolves the start
and stop specs to one offset range per partition (fails fast on an unreachable
cluster or an unknown topic). ``ReadPartitions`` is a splittable DoFn with one
restriction per partition range:

* bounded ranges split initially (``split_offsets``) and dynamically;
* an unbounded range self-checkpoints every ``checkpoint_interval_s`` and when
  no data is available, instead of blocking a bundle;
* a watermark estimator follows record timestamps and advances on idle
  partitions (transforms/kafka/watermark.py);
* offsets are committed to the consumer group when the runner finalizes the
  bundle, i.e. after its output is durable: at-least-once, never
  commit-before-output.

On the local streaming runner the whole transform is replaced by a native read
(transforms/kafka/local_streaming.py); on every other runner this SDF is the
source.
"""

import functools
import logging
import threading
import time
import uuid
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.restriction_trackers import (OffsetRange,
                                                 OffsetRestrictionTracker)
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.utils.timestamp import Duration, Timestamp
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from transforms.kafka import admin
from transforms.kafka import offsets as offsets_lib
from transforms.kafka.offsets import PartitionRange, StopAt
from transforms.kafka.records import (KafkaRecord, TimestampPolicy,
                                      record_from_message,
                                      resolve_timestamp_fn)
from transforms.kafka.watermark import KafkaWatermarkEstimatorProvider

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'kafka_read'


class KafkaRecordCoder(coders.Coder):
  """Encodes a KafkaRecord as a plain tuple with Beam's C-accelerated coder."""

  _inner = coders.FastPrimitivesCoder()

  def encode(self, value: KafkaRecord) -> bytes:
    return self._inner.encode(tuple(value))

  def decode(self, encoded: bytes) -> KafkaRecord:
    return KafkaRecord(*self._inner.decode(encoded))

  def is_deterministic(self) -> bool:
    return True

  def to_type_hint(self):
    return KafkaRecord


coders.registry.register_coder(KafkaRecord, KafkaRecordCoder)


def reader_config(consumer_config: Mapping[str, Any]) -> dict:
  """The config of the reader's own consumers, derived from the user's.

  The reader assigns partitions and commits explicitly, so auto-commit is off;
  partition EOF events tell it when a partition is caught up. librdkafka
  needs a group.id even for assign(); a throwaway one is used if none is given
  (nothing is committed then).
  """
  cfg = dict(consumer_config)
  cfg['enable.auto.commit'] = False
  cfg['enable.auto.offset.store'] = False
  cfg['enable.partition.eof'] = True
  # Never jump silently: an out-of-range fetch surfaces as an error the reader
  # handles (transforms.kafka.read._ReadPartitionsFn._out_of_range).
  cfg['auto.offset.reset'] = 'error'
  cfg.setdefault('group.id', f'kbi-reader-{uuid.uuid4().hex[:12]}')
  return cfg


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


class OffsetCommitter:
  """Commits consumer-group offsets from a dedicated consumer (thread-safe).

  Separate from the reading consumers so that a runner calling bundle
  finalization on another thread never touches a consumer that is fetching.
  """

  def __init__(self, consumer_config: Mapping[str, Any]):
    self._group = consumer_config.get('group.id')
    self._consumer = Consumer(reader_config(consumer_config))
    self._lock = threading.Lock()
    self.committed = Metrics.counter(_NAMESPACE, 'offset_commits')
    self.failed = Metrics.counter(_NAMESPACE, 'offset_commit_failures')

  def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
    """Commits {(topic, partition): next offset to read}.

    A failed commit is logged and counted, not raised: the records are already
    durable downstream, and a later commit covers the same partition. The
    cost of a lost commit is re-reading those records after a restart.
    """
    if not offsets:
      return
    tps = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
    with self._lock:
      try:
        result = self._consumer.commit(offsets=tps, asynchronous=False)
      except KafkaException as e:
        self.failed.inc()
        _LOGGER.warning('offset commit for group %s failed: %s', self._group,
                        e)
        return
    bad = [tp for tp in result or [] if tp.error is not None]
    if bad:
      self.failed.inc(len(bad))
      _LOGGER.warning('offset commit for group %s failed on %s', self._group,
                      bad)
    else:
      self.committed.inc()

  def close(self) -> None:
    with self._lock:
      try:
        self._consumer.close()
      except RuntimeError:
        pass


def recover_out_of_range(consumer, topic: str, partition: int, offset: int,
                         err, out_of_range_counter,
                         deleted_counter) -> int:
  """Decides where to continue after the broker rejected a fetch as out of range.

  If the offset is still inside the log (some brokers answer out-of-range for
  a moment right after writes), reading retries at the same offset. If
  retention deleted it, reading continues at the log start, and the skipped
  offsets are counted and logged: they no longer exist anywhere.

  Returns:
    The offset to read next (never below ``offset``: claims stay monotonic).
  """
  low, high = consumer.get_watermark_offsets(
      TopicPartition(topic, partition), timeout=10, cached=False)
  out_of_range_counter.inc()
  if offset < low:
    deleted_counter.inc(low - offset)
    _LOGGER.warning(
        '%s[%d]: offsets [%d, %d) were deleted by retention before they '
        'were read; continuing at %d', topic, partition, offset, low, low)
    return low
  _LOGGER.info('%s[%d]: broker answered out of range for offset %d '
               '(log [%d, %d)): %s; retrying', topic, partition, offset, low,
               high, err.str())
  time.sleep(0.05)
  return offset


class _ResolvePartitionsFn(beam.DoFn):
  """Impulse -> one PartitionRange per topic-partition to read."""

  def __init__(self, consumer_config, topics, start, stop, timeout_s):
    self._config = dict(consumer_config)
    self._topics = list(topics)
    self._start = start
    self._stop = stop
    self._timeout_s = timeout_s
    self._consumer = None

  def setup(self):
    self._consumer = Consumer(reader_config(self._config))

  def process(self, unused_impulse) -> Iterable[PartitionRange]:
    partitions = admin.topic_partitions(self._config, self._topics,
                                        self._timeout_s)
    ranges = offsets_lib.resolve_ranges(
        self._consumer, self._config, partitions, self._start, self._stop,
        timeout_s=self._timeout_s)
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
  (``try_split(0)``): splitting "half of infinity" is meaningless.
  """

  def is_bounded(self) -> bool:
    return self.current_restriction().stop != offsets_lib.UNBOUNDED

  def try_split(self, fraction_of_remainder):
    if not self.is_bounded() and fraction_of_remainder > 0:
      return None
    return super().try_split(fraction_of_remainder)


def _finish_range(tracker) -> None:
  """Marks the rest of the range as done: no record is left below its stop
  (transaction markers or compaction at the end of the log) or the read
  deadline passed. Claiming the stop offset itself fails by design, and
  leaves the tracker done."""
  tracker.try_claim(tracker.current_restriction().stop)


class _ReadPartitionsFn(beam.DoFn, RestrictionProvider,
                        KafkaWatermarkEstimatorProvider):
  """Splittable DoFn: reads one partition's offset range in batches.

  The DoFn is its own restriction provider (offset ranges of one partition)
  and watermark estimator provider, so their settings travel with it.
  """

  def __init__(self, consumer_config: Mapping[str, Any], *, timestamp_fn,
               with_metadata: bool, commit_offsets: bool,
               max_batch_records: int, consume_batch: int,
               checkpoint_interval_s: float, poll_timeout_s: float,
               idle_resume_s: float, split_offsets: int, max_delay_s: float,
               idle_timeout_s: float):
    beam.DoFn.__init__(self)
    KafkaWatermarkEstimatorProvider.__init__(
        self, max_delay_s=max_delay_s, idle_timeout_s=idle_timeout_s)
    self._config = dict(consumer_config)
    self._timestamp_fn = timestamp_fn
    self._with_metadata = with_metadata
    self._commit_offsets = commit_offsets
    self._max_batch_records = max_batch_records
    self._consume_batch = consume_batch
    self._checkpoint_interval_s = checkpoint_interval_s
    self._poll_timeout_s = poll_timeout_s
    self._idle_resume = Duration(seconds=idle_resume_s)
    self._split_offsets = split_offsets
    self._consumers: Optional[PartitionConsumers] = None
    self._committer: Optional[OffsetCommitter] = None
    self.records = Metrics.counter(_NAMESPACE, 'records')
    self.bytes = Metrics.counter(_NAMESPACE, 'bytes')
    self.checkpoints = Metrics.counter(_NAMESPACE, 'checkpoints')
    self.out_of_range = Metrics.counter(_NAMESPACE, 'out_of_range_fetches')
    self.deleted_offsets = Metrics.counter(_NAMESPACE,
                                           'offsets_deleted_before_read')
    self.batch_sizes = Metrics.distribution(_NAMESPACE, 'consume_batch_size')

  def process(self,
              element: PartitionRange,
              # Beam fills the finalizer positionally: it must come before
              # the restriction and watermark parameters.
              finalizer=beam.DoFn.BundleFinalizerParam,
              tracker=beam.DoFn.RestrictionParam(),
              watermark=beam.DoFn.WatermarkEstimatorParam()):
    yield from self._read(element, tracker, watermark, finalizer)

  # RestrictionProvider: offset ranges of one partition.

  def initial_restriction(self, element: PartitionRange) -> OffsetRange:
    return OffsetRange(element.start_offset, element.stop_offset)

  def create_tracker(self, restriction: OffsetRange) -> KafkaOffsetTracker:
    return KafkaOffsetTracker(restriction)

  def split(self, element: PartitionRange, restriction: OffsetRange):
    if (restriction.stop == offsets_lib.UNBOUNDED or self._split_offsets <= 0
        or restriction.stop - restriction.start <= self._split_offsets):
      yield restriction
      return
    yield from restriction.split(self._split_offsets, self._split_offsets // 4)

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
    self._consumers = PartitionConsumers(self._config)
    if self._commit_offsets:
      self._committer = OffsetCommitter(self._config)

  def teardown(self):
    if self._consumers is not None:
      self._consumers.close()
    if self._committer is not None:
      self._committer.close()

  def _read(self, element: PartitionRange, tracker, watermark, finalizer):
    topic, partition = element.topic, element.partition
    start = tracker.current_restriction().start
    consumer = self._consumers.positioned(topic, partition, start)
    bundle_deadline = time.monotonic() + self._checkpoint_interval_s
    next_offset = start
    claimed_any = False
    try:
      while True:
        if element.deadline is not None and time.time() >= element.deadline:
          _finish_range(tracker)
          return
        messages = consumer.consume(num_messages=self._consume_batch,
                                    timeout=self._poll_timeout_s)
        batch = []
        caught_up = not messages
        range_done = False
        for message in messages:
          err = message.error()
          if err is not None:
            if err.code() == KafkaError._AUTO_OFFSET_RESET:
              self._out_of_range(consumer, topic, partition, next_offset, err)
              break
            if err.code() != KafkaError._PARTITION_EOF:
              raise KafkaException(err)
            caught_up = True
            if message.offset() >= tracker.current_restriction().stop:
              # Nothing left below the stop offset (it may lie past the last
              # record: transaction markers or compaction at the log end).
              _finish_range(tracker)
              range_done = True
              break
            continue
          offset = message.offset()
          if not tracker.try_claim(offset):
            # Past the stop offset or a split point: the rest is not ours.
            range_done = True
            break
          claimed_any = True
          next_offset = offset + 1
          batch.append(record_from_message(message))
        if range_done:
          # Records past the range may have been fetched: position unknown.
          self._consumers.invalidate(topic, partition)
        else:
          self._consumers.advanced(topic, partition, next_offset)
        if batch:
          self.batch_sizes.update(len(batch))
          self.bytes.inc(sum(len(r.value or b'') for r in batch))
        yield from self._flush(batch, watermark)
        if range_done:
          return
        watermark.record_activity(caught_up=caught_up, now=time.time())
        if caught_up and tracker.current_restriction().stop == (
            offsets_lib.UNBOUNDED) or time.monotonic() >= bundle_deadline:
          # Nothing to read now (or this bundle ran long enough): checkpoint
          # so the runner can commit output, finalize and schedule others.
          self.checkpoints.inc()
          tracker.defer_remainder(self._idle_resume if caught_up else None)
          return
    finally:
      if claimed_any and self._committer is not None:
        finalizer.register(
            functools.partial(self._committer.commit,
                              {(topic, partition): next_offset}))

  def _out_of_range(self, consumer, topic, partition, offset, err) -> None:
    offset = recover_out_of_range(consumer, topic, partition, offset, err,
                                  self.out_of_range, self.deleted_offsets)
    self._consumers.invalidate(topic, partition)
    self._consumers.positioned(topic, partition, offset)

  def _flush(self, batch: list, watermark):
    """Emits a consumed batch as elements with event-time timestamps."""
    if not batch:
      return
    self.records.inc(len(batch))
    ts_fn = self._timestamp_fn
    if self._max_batch_records <= 0:
      for record in batch:
        yield beam.window.TimestampedValue(
            record if self._with_metadata else (record.key, record.value),
            ts_fn(record))
      return
    for i in range(0, len(batch), self._max_batch_records):
      chunk = batch[i:i + self._max_batch_records]
      stamps = [ts_fn(r) for r in chunk]
      # The chunk carries its earliest time (never late relative to its own
      # records); the watermark still follows the latest one.
      watermark.observe_timestamp(max(stamps))
      if not self._with_metadata:
        chunk = [(r.key, r.value) for r in chunk]
      yield beam.window.TimestampedValue(chunk, min(stamps))


class _ReadUnboundedPartitionsFn(_ReadPartitionsFn):
  """The same reader, declared unbounded so runners treat its output as a stream."""

  @beam.DoFn.unbounded_per_element()
  def process(self,
              element: PartitionRange,
              # Beam fills the finalizer positionally: it must come before
              # the restriction and watermark parameters.
              finalizer=beam.DoFn.BundleFinalizerParam,
              tracker=beam.DoFn.RestrictionParam(),
              watermark=beam.DoFn.WatermarkEstimatorParam()):
    yield from self._read(element, tracker, watermark, finalizer)


class ReadFromKafka(beam.PTransform):
  """Reads Kafka topics as a (possibly unbounded) PCollection.

  Example::

    records = p | ReadFromKafka(
        {'bootstrap.servers': 'localhost:9092', 'group.id': 'scorer'},
        ['events'], start='committed', stop=None)

  Elements are ``KafkaRecord`` (``with_metadata=True``) or ``(key, value)``
  tuples; with ``max_batch_records > 0`` each element is a list of up to that
  many of them (one consumer poll), timestamped with the earliest record time:
  per-element overhead dominates Python pipelines, so batch early.

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
               consume_batch: int = 1000,
               checkpoint_interval_s: float = 1.0,
               poll_timeout_s: float = 0.1,
               idle_resume_s: float = 0.1,
               split_offsets: int = 1_000_000,
               metadata_timeout_s: float = 30.0):
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
        finalization. Default: True when a group.id is configured.
      timestamp_policy: 'create_time' (default), 'log_append_time',
        'processing_time', or a function KafkaRecord -> seconds/Timestamp.
      max_delay_s: out-of-orderness tolerated: the watermark trails the
        largest record time by this much.
      idle_timeout_s: after this long without new records a partition's
        watermark advances with the wall clock.
      max_batch_records: 0 for one element per record, else the size of
        the record lists emitted as elements.
      consume_batch: records fetched per consumer call.
      checkpoint_interval_s: longest time one call reads before a
        self-checkpoint (bounds bundle length and offset-commit lag).
      poll_timeout_s: how long one consumer call waits for records.
      idle_resume_s: delay before a caught-up unbounded read resumes.
      split_offsets: initial split size of bounded ranges, in offsets.
      metadata_timeout_s: time allowed for the cluster to answer at start.
    """
    super().__init__()
    if not consumer_config.get('bootstrap.servers'):
      raise ValueError("consumer_config needs 'bootstrap.servers'")
    self._topics = [topics] if isinstance(topics, str) else list(topics)
    if not self._topics:
      raise ValueError('topics must name at least one topic')
    if max_batch_records < 0:
      raise ValueError(f'max_batch_records must be >= 0, got {max_batch_records}')
    if consume_batch <= 0:
      raise ValueError(f'consume_batch must be > 0, got {consume_batch}')
    self._config = dict(consumer_config)
    self._start = offsets_lib.normalize_start(start)
    self._stop = offsets_lib.normalize_stop(stop)
    if commit_offsets is None:
      commit_offsets = bool(self._config.get('group.id'))
    if commit_offsets and not self._config.get('group.id'):
      raise ValueError("commit_offsets=True needs 'group.id' in consumer_config")
    if self._start == offsets_lib.START_COMMITTED and not self._config.get(
        'group.id'):
      raise ValueError(
          "start='committed' needs 'group.id' in consumer_config; "
          "or use start='earliest'/'latest'")
    self._timestamp_fn = resolve_timestamp_fn(timestamp_policy)
    self._metadata_timeout_s = metadata_timeout_s
    self._fn_kwargs = dict(
        timestamp_fn=self._timestamp_fn, with_metadata=with_metadata,
        commit_offsets=commit_offsets, max_batch_records=max_batch_records,
        consume_batch=consume_batch,
        checkpoint_interval_s=checkpoint_interval_s,
        poll_timeout_s=poll_timeout_s, idle_resume_s=idle_resume_s,
        split_offsets=split_offsets, max_delay_s=max_delay_s,
        idle_timeout_s=idle_timeout_s)

  # Read by the local streaming override (it reuses the same settings).
  @property
  def settings(self) -> dict:
    return dict(self._fn_kwargs, consumer_config=self._config,
                topics=self._topics, start=self._start, stop=self._stop,
                metadata_timeout_s=self._metadata_timeout_s)

  @property
  def is_bounded(self) -> bool:
    return self._stop.is_bounded

  def to_runner_api_parameter(self, context):
    # Serialized as itself (as Beam's ReadFromPubSub is) so the runner API
    # round trip keeps the type: the local streaming override matches on it.
    return self.to_runner_api_pickled(context)

  def expand(self, pbegin):
    ranges = (
        pbegin
        | 'Impulse' >> beam.Impulse()
        | 'ResolvePartitions' >> beam.ParDo(
            _ResolvePartitionsFn(self._config, self._topics, self._start,
                                 self._stop, self._metadata_timeout_s)))
    # Spread partitions over workers before the read (the SDF would
    # otherwise be fused with the single Impulse element's worker).
    ranges = ranges | 'DistributePartitions' >> beam.Reshuffle()
    fn_class = (_ReadPartitionsFn if self._stop.is_bounded else
                _ReadUnboundedPartitionsFn)
    return ranges | 'ReadPartitions' >> beam.ParDo(
        fn_class(self._config, **self._fn_kwargs))
