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
(transforms/kafka/local_streaming.py); on every other runner this SDF is the
source.
"""

import functools
import logging
import threading
import time
import uuid
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
from confluent_kafka import (Consumer, KafkaError, KafkaException, Message,
                             TopicPartition)

from transforms.kafka import admin, client_logs
from transforms.kafka.errors import RecoverableErrorLog, is_recoverable
from transforms.kafka import config_refs
from transforms.kafka import offsets as offsets_lib
from transforms.kafka.offsets import PartitionRange, StopAt
from transforms.kafka.records import (KafkaRecord, TimestampPolicy,
                                      chunk_times, micros_of, record_micros,
                                      records_from_messages,
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


def reader_config(consumer_config: Mapping[str, Any]) -> dict:
  """The config of the reader's own consumers, derived from the user's.

  The reader assigns partitions and commits explicitly, so auto-commit is off;
  partition EOF events tell it when a partition is caught up. librdkafka
  needs a group.id even for assign(); a throwaway one is used if none is given
  (nothing is committed then). Settings given by reference are read here
  (transforms.kafka.config_refs), where the consumers are built, and log
  lines are routed to Python logging (transforms.kafka.client_logs).
  """
  cfg = client_logs.route(config_refs.resolve(consumer_config))
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
    # Highest offset committed per partition by this committer: bundle
    # finalizations may arrive out of order (a later checkpoint's before an
    # earlier one's), and committing the older, smaller offset afterwards
    # would move the group backwards (re-reads after a restart).
    self._highest: dict[tuple[str, int], int] = {}
    self.committed = Metrics.counter(_NAMESPACE, 'offset_commits')
    self.failed = Metrics.counter(_NAMESPACE, 'offset_commit_failures')

  def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
    """Commits {(topic, partition): next offset to read}.

    An offset at or below one this committer already committed for the
    partition is skipped (never moves the group backwards).

    A failed commit is logged and counted, not raised: the records are already
    durable downstream, and a later commit covers the same partition. The
    cost of a lost commit is re-reading those records after a restart.
    """
    with self._lock:
      todo = {key: o for key, o in offsets.items()
              if o > self._highest.get(key, -1)}
      if not todo:
        return
      tps = [TopicPartition(t, p, o) for (t, p), o in todo.items()]
      try:
        result = self._consumer.commit(offsets=tps, asynchronous=False)
      except KafkaException as e:
        self.failed.inc()
        _LOGGER.warning('offset commit for group %s failed: %s', self._group,
                        e)
        return
      bad = [tp for tp in result or [] if tp.error is not None]
      for tp in result or []:
        if tp.error is None:
          key = (tp.topic, tp.partition)
          self._highest[key] = max(self._highest.get(key, -1), tp.offset)
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
    self._resolved = None

  def setup(self):
    # Referenced settings (secrets) are read on the worker, never pickled.
    self._resolved = config_refs.resolve(self._config)
    self._consumer = Consumer(reader_config(self._resolved))

  def process(self, unused_impulse) -> Iterable[PartitionRange]:
    partitions = admin.topic_partitions(self._resolved, self._topics,
                                        self._timeout_s)
    ranges = offsets_lib.resolve_ranges(
        self._consumer, self._resolved, partitions, self._start, self._stop,
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


# How the reader computes element timestamps (see ReadFromKafka.__init__):
# from the records' broker timestamps, from the wall clock, or with the
# resolved timestamp function for each record.
TS_RECORD_TIME = 'record_time'
TS_PROCESSING_TIME = 'processing_time'
TS_FUNCTION = 'function'

_message_error = Message.error


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

  def __init__(self, consumer_config: Mapping[str, Any], *, timestamp_fn,
               with_metadata: bool, commit_offsets: bool,
               max_batch_records: int, consume_batch: int,
               checkpoint_interval_s: float, poll_timeout_s: float,
               idle_resume_s: float, split_offsets: int, max_delay_s: float,
               idle_timeout_s: float, timestamp_mode: str = TS_FUNCTION):
    beam.DoFn.__init__(self)
    KafkaWatermarkEstimatorProvider.__init__(
        self, max_delay_s=max_delay_s, idle_timeout_s=idle_timeout_s)
    if timestamp_mode not in (TS_RECORD_TIME, TS_PROCESSING_TIME,
                              TS_FUNCTION):
      raise ValueError(f'unknown timestamp_mode {timestamp_mode!r}')
    self._config = dict(consumer_config)
    self._timestamp_fn = timestamp_fn
    self._timestamp_mode = timestamp_mode
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
    self.recoverable_errors = Metrics.counter(_NAMESPACE,
                                              'recoverable_consumer_errors')
    self._error_log = RecoverableErrorLog()

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
    # Committed offsets must only ever cover a prefix of what was output:
    # with a split, the second half could be finalized (and committed) while
    # the first is still being read, and a crash then would skip the rest of
    # the first half. So a committing read accepts checkpoints only.
    return KafkaOffsetTracker(restriction,
                              dynamic_splits=not self._commit_offsets)

  def split(self, element: PartitionRange, restriction: OffsetRange):
    # Not for a committing read either (see create_tracker): parallelism then
    # comes from partitions, not from ranges within one.
    if (restriction.stop == offsets_lib.UNBOUNDED or self._split_offsets <= 0
        or self._commit_offsets
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
    # Referenced settings (secrets) are read on the worker, never pickled.
    config = config_refs.resolve(self._config)
    self._consumers = PartitionConsumers(config)
    if self._commit_offsets:
      self._committer = OffsetCommitter(config)

  def teardown(self):
    if self._consumers is not None:
      self._consumers.close()
    if self._committer is not None:
      self._committer.close()

  def _read(self, element: PartitionRange, tracker, watermark, finalizer):
    topic, partition = element.topic, element.partition
    restriction = tracker.current_restriction()
    start = restriction.start
    if start >= restriction.stop:
      return  # an empty range: nothing to claim, the tracker is done
    consumer = self._consumers.positioned(topic, partition, start)
    bundle_deadline = time.monotonic() + self._checkpoint_interval_s
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
        messages = self._fetch(consumer)
        caught_up = not messages
        range_done = repositioned = exact_end = False
        # Consumer events (end of partition, errors) are rare messages among
        # the records: find them once, handle the runs of records between.
        if any(map(_message_error, messages)):
          events = [i for i, m in enumerate(messages)
                    if m.error() is not None]
          events.append(len(messages))
        else:
          events = [len(messages)]
        begin = 0
        for end in events:
          run = messages if not begin and end == len(messages) else (
              messages[begin:end])
          if run and run[0].offset() < next_offset:
            # Never re-emit: skip anything fetched before a re-position.
            run = [m for m in run if m.offset() >= next_offset]
          if run:
            run, range_done = _claim_run(run, tracker)
            if run:
              next_offset = run[-1].offset() + 1
              self._convert(run, topic, partition, items, stamps)
              self.records.inc(len(run))
              self.bytes.inc(sum(map(len, run)))
            if not range_done and (
                next_offset >= tracker.current_restriction().stop):
              # The last offset of the range was read: done now, rather than
              # waiting for the end-of-partition event (the broker may hold
              # that fetch for fetch.wait.max.ms).
              _finish_range(tracker)
              range_done = True
              # Nothing past the stop was taken from the consumer's queue.
              exact_end = end == len(messages)
          if range_done or end == len(messages):
            break
          event = messages[end]
          err = event.error()
          code = err.code()
          if code == KafkaError._PARTITION_EOF:
            caught_up = True
            if event.offset() >= tracker.current_restriction().stop:
              # Nothing left below the stop offset (it may lie past the last
              # record: transaction markers or compaction at the log end).
              _finish_range(tracker)
              range_done = True
              break
          elif code == KafkaError._AUTO_OFFSET_RESET:
            self._out_of_range(consumer, topic, partition, next_offset, err)
            repositioned = True
            break
          elif is_recoverable(err):
            # E.g. a broker restart: librdkafka reconnects by itself.
            self.recoverable_errors.inc()
            self._error_log.log(err)
          else:
            raise KafkaException(err)
          begin = end + 1
        if range_done and not exact_end:
          # Records past the range may have been fetched: position unknown.
          self._consumers.invalidate(topic, partition)
        elif not repositioned:
          # (After an exact end too: the consumer stands at the stop offset,
          # where the next range of this partition, if any, starts.)
          self._consumers.advanced(topic, partition, next_offset)
        if messages:
          self.batch_sizes.update(len(messages))
        batch = self._max_batch_records
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

  def _fetch(self, consumer) -> list:
    """Up to ``consume_batch`` queued messages, as soon as any is available.

    ``consume(n, timeout)`` waits for n messages or the whole timeout, so at
    the end of a range or of the log every call would cost the full poll
    timeout. Instead: take what is queued; only if nothing is, wait for the
    first message (or event) and take what arrived with it.
    """
    batch = self._consume_batch
    messages = consumer.consume(num_messages=batch, timeout=0)
    if messages:
      return messages
    first = consumer.poll(self._poll_timeout_s)
    if first is None:
      return []
    return [first] + (consumer.consume(num_messages=batch - 1, timeout=0)
                      if batch > 1 else [])

  def _out_of_range(self, consumer, topic, partition, offset, err) -> None:
    offset = recover_out_of_range(consumer, topic, partition, offset, err,
                                  self.out_of_range, self.deleted_offsets)
    self._consumers.invalidate(topic, partition)
    self._consumers.positioned(topic, partition, offset)

  def _convert(self, run: list, topic: str, partition: int, items: list,
               stamps: list) -> None:
    """Appends a run of messages to the pending elements, and their element
    timestamps to ``stamps`` (not for records with their broker timestamps:
    those are read from the records when emitted)."""
    mode = self._timestamp_mode
    if mode == TS_RECORD_TIME and self._with_metadata:
      items.extend(records_from_messages(run, topic, partition))
      return
    if mode == TS_FUNCTION:
      records = records_from_messages(run, topic, partition)
      stamps.extend(micros_of(self._timestamp_fn, records))
      items.extend(records if self._with_metadata else
                   [(r[3], r[4]) for r in records])
      return
    if mode == TS_RECORD_TIME:
      items.extend([(m.key(), m.value()) for m in run])
      stamps.extend([record_micros(m.timestamp()[1]) for m in run])
      return
    # Processing time: one clock reading per consumed run.
    now_micros = Timestamp.of(time.time()).micros
    items.extend(records_from_messages(run, topic, partition) if self._with_metadata
                 else [(m.key(), m.value()) for m in run])
    stamps.extend([now_micros] * len(run))

  def _emit(self, items: list, stamps: list, watermark, *, everything: bool):
    """Emits pending records as timestamped elements (and empties the lists).

    One element per record, or chunks of ``max_batch_records`` that carry
    their earliest valid record time (never late relative to their own
    records; records.chunk_times); the watermark follows the latest valid
    one. A partial last chunk is kept unless ``everything``.
    """
    if not items:
      return
    if self._timestamp_mode == TS_RECORD_TIME and self._with_metadata:
      stamps[:] = [record_micros(r[5]) for r in items]
    size = self._max_batch_records
    if size <= 0:
      for item, ts in zip(items, stamps):
        if ts is None:
          # No valid event time: the partition's watermark (not late, and
          # holding nothing back); it must not move the watermark.
          ts = watermark.current_watermark().micros
        else:
          watermark.observe_timestamp(Timestamp(micros=ts))
        yield beam.window.TimestampedValue(item, Timestamp(micros=ts))
      items.clear()
      del stamps[:]
      return
    n = len(items) if everything else len(items) - len(items) % size
    for i in range(0, n, size):
      low, high = chunk_times(stamps[i:i + size],
                              watermark.current_watermark().micros)
      if high is not None:
        watermark.observe_timestamp(Timestamp(micros=high))
      yield beam.window.TimestampedValue(items[i:i + size],
                                         Timestamp(micros=low))
    del items[:n]
    del stamps[:n]


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


def _timestamp_mode(policy) -> str:
  """How the reader computes the element timestamps of a (valid) policy."""
  if callable(policy) and not isinstance(policy, TimestampPolicy):
    return TS_FUNCTION
  if TimestampPolicy(policy) is TimestampPolicy.PROCESSING_TIME:
    return TS_PROCESSING_TIME
  # CREATE_TIME and LOG_APPEND_TIME both read the record's own timestamp
  # (the broker sets its type); see records.resolve_timestamp_fn.
  return TS_RECORD_TIME


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
    self._timestamp_mode = _timestamp_mode(timestamp_policy)
    self._metadata_timeout_s = metadata_timeout_s
    self._local_hints = dict(source_watermark=source_watermark,
                             buffer_horizon=buffer_horizon)
    self._fn_kwargs = dict(
        timestamp_fn=self._timestamp_fn, with_metadata=with_metadata,
        commit_offsets=commit_offsets, max_batch_records=max_batch_records,
        consume_batch=consume_batch,
        checkpoint_interval_s=checkpoint_interval_s,
        poll_timeout_s=poll_timeout_s, idle_resume_s=idle_resume_s,
        split_offsets=split_offsets, max_delay_s=max_delay_s,
        idle_timeout_s=idle_timeout_s, timestamp_mode=self._timestamp_mode)

  # Read by the local streaming override (it reuses the same settings).
  @property
  def settings(self) -> dict:
    return dict(self._fn_kwargs, consumer_config=self._config,
                topics=self._topics, start=self._start, stop=self._stop,
                metadata_timeout_s=self._metadata_timeout_s,
                **self._local_hints)

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
        fn_class(self._config, **self._fn_kwargs)).with_output_types(
            self._element_type())

  def _element_type(self):
    """The output element type: it picks the coder of the output (without
    it, records would be pickled one by one wherever they are encoded)."""
    kv = typehints.Tuple[typehints.Optional[bytes], typehints.Optional[bytes]]
    item = KafkaRecord if self._fn_kwargs['with_metadata'] else kv
    if self._fn_kwargs['max_batch_records'] > 0:
      return typehints.List[item]
    return item
