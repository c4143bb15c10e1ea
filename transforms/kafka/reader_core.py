"""What the two Kafka readers share: settings, fetching, consumer events,
records to timestamped elements, metrics and offset commits.

ReadFromKafka has two readers. The splittable DoFn (read.py) is the source on
Prism, Dataflow, Flink and the FnApiRunner; the local read (local_read.py)
replaces it on the local streaming runner (beam_jobs/local_runner.py). They
differ in how they are driven: restrictions, checkpoints and bundle
finalization for the one; one consumer over every partition, called by a
transform evaluator, committing when output is durable, for the other. They
do not differ in how they read, and that part lives here, once:

* ``ReadSettings``: the read's settings, resolved once by ReadFromKafka;
* ``ReaderCore.fetch``: what the consumer has queued, else the first record
  to arrive (never a full ``consume()`` timeout per call);
* ``split_at_events`` and ``ReaderCore.handle_event``: consumer events
  (end of partition, out of range, recoverable and fatal errors) among the
  records, and what each means;
* ``ReaderCore.convert`` and ``ReaderCore.take_elements``: records to
  element values and event times, then to elements of one record or chunks
  of ``max_batch_records`` (records.chunk_times), moving the watermark;
* the ``kafka_read`` metrics, ``reader_config`` and ``OffsetCommitter``.
"""

import dataclasses
import enum
import logging
import threading
import time
import uuid
from typing import (TYPE_CHECKING, Any, Callable, Mapping, Optional, Union)

from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import Timestamp
from confluent_kafka import (Consumer, KafkaError, KafkaException, Message,
                             TopicPartition)

from transforms.kafka import client_logs, config_refs
from transforms.kafka.errors import RecoverableErrorLog, is_recoverable
from transforms.kafka.offsets import StopAt
from transforms.kafka.records import (KafkaRecord, TimestampPolicy,
                                      chunk_times, micros_of,
                                      record_times_micros,
                                      records_from_messages)

if TYPE_CHECKING:
  from transforms.kafka.watermark import KafkaWatermarkEstimator
  from transforms.source_watermark import SourceWatermark

_LOGGER = logging.getLogger(__name__)

# Metric namespace of both readers.
NAMESPACE = 'kafka_read'

# How a reader computes element timestamps: from the records' broker
# timestamps, from the wall clock, or with the resolved timestamp function
# for each record (ReadSettings.timestamp_mode).
TS_RECORD_TIME = 'record_time'
TS_PROCESSING_TIME = 'processing_time'
TS_FUNCTION = 'function'
_TIMESTAMP_MODES = (TS_RECORD_TIME, TS_PROCESSING_TIME, TS_FUNCTION)


def timestamp_mode(policy) -> str:
  """How a reader computes the element timestamps of a (valid) policy."""
  if callable(policy) and not isinstance(policy, TimestampPolicy):
    return TS_FUNCTION
  if TimestampPolicy(policy) is TimestampPolicy.PROCESSING_TIME:
    return TS_PROCESSING_TIME
  # CREATE_TIME and LOG_APPEND_TIME both read the record's own timestamp
  # (the broker sets its type); see records.resolve_timestamp_fn.
  return TS_RECORD_TIME


@dataclasses.dataclass(frozen=True)
class ReadSettings:
  """One read's settings, resolved once by ReadFromKafka and read by name.

  ReadFromKafka.__init__ documents each; the ones it derives:

  Attributes:
    consumer_config: the user's librdkafka settings (references to secrets
      unresolved: they are read where consumers are built).
    topics: the topics to read.
    start: 'committed', 'earliest', 'latest' or a Timestamp.
    stop: when the read ends.
    timestamp_fn: record -> event Timestamp or None (resolved policy).
    timestamp_mode: one of TS_RECORD_TIME, TS_PROCESSING_TIME, TS_FUNCTION.
    source_watermark: local streaming runner only: where the read publishes
      its watermark (transforms/source_watermark.py).
    buffer_horizon: local streaming runner only: event time (micros) -> end
      (micros) of the last window a windowed sink may hold the record in.
  """
  consumer_config: Mapping[str, Any]
  topics: tuple[str, ...]
  start: Union[str, Timestamp]
  stop: StopAt
  timestamp_fn: Callable[[KafkaRecord], Optional[Timestamp]]
  timestamp_mode: str = TS_FUNCTION
  with_metadata: bool = True
  commit_offsets: bool = False
  max_batch_records: int = 0
  consume_batch: int = 500
  checkpoint_interval_s: float = 1.0
  poll_timeout_s: float = 0.1
  idle_resume_s: float = 0.1
  split_offsets: int = 1_000_000
  max_delay_s: float = 0.0
  idle_timeout_s: float = 5.0
  metadata_timeout_s: float = 30.0
  source_watermark: Optional['SourceWatermark'] = None
  buffer_horizon: Optional[Callable[[int], int]] = None

  def __post_init__(self):
    if self.timestamp_mode not in _TIMESTAMP_MODES:
      raise ValueError(f'unknown timestamp_mode {self.timestamp_mode!r}')
    if self.max_batch_records < 0:
      raise ValueError(
          f'max_batch_records must be >= 0, got {self.max_batch_records}')
    if self.consume_batch <= 0:
      raise ValueError(f'consume_batch must be > 0, got {self.consume_batch}')

  @property
  def is_bounded(self) -> bool:
    return self.stop.is_bounded


def reader_config(consumer_config: Mapping[str, Any]) -> dict:
  """The config of the readers' own consumers, derived from the user's.

  The readers assign partitions and commit explicitly, so auto-commit is off;
  partition EOF events tell them when a partition is caught up. librdkafka
  needs a group.id even for assign(); a throwaway one is used if none is
  given (nothing is committed then). Settings given by reference are read
  here (transforms.kafka.config_refs), where the consumers are built, and
  log lines are routed to Python logging (transforms.kafka.client_logs).
  """
  cfg = client_logs.route(config_refs.resolve(consumer_config))
  cfg['enable.auto.commit'] = False
  cfg['enable.auto.offset.store'] = False
  cfg['enable.partition.eof'] = True
  # Never jump silently: an out-of-range fetch surfaces as an event the
  # readers handle (ReaderCore.out_of_range).
  cfg['auto.offset.reset'] = 'error'
  cfg.setdefault('group.id', f'kbi-reader-{uuid.uuid4().hex[:12]}')
  return cfg


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
    self.committed = Metrics.counter(NAMESPACE, 'offset_commits')
    self.failed = Metrics.counter(NAMESPACE, 'offset_commit_failures')

  def commit(self, offsets: Mapping[tuple[str, int], int]) -> None:
    """Commits {(topic, partition): next offset to read}.

    An offset at or below one this committer already committed for the
    partition is skipped (never moves the group backwards).

    A failed commit is logged and counted, not raised: the records are
    already durable downstream, and a later commit covers the same
    partition. The cost of a lost commit is re-reading those records after
    a restart.
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


_message_error = Message.error


def split_at_events(messages: list) -> list[tuple[list, Optional[Message]]]:
  """(run, event) pairs: the runs of data messages between consumer events,
  each with the event that ended it (None after the last run).

  Events (end of partition, errors) are rare among the records: they are
  found once, and the records between them are handled as runs.
  """
  if not any(map(_message_error, messages)):
    return [(messages, None)]
  out = []
  begin = 0
  for i, message in enumerate(messages):
    if message.error() is not None:
      out.append((messages[begin:i], message))
      begin = i + 1
  out.append((messages[begin:], None))
  return out


class ConsumerEvent(enum.Enum):
  """What a consumer event asks of the reader (ReaderCore.handle_event)."""
  # The partition is caught up at the event's offset.
  PARTITION_EOF = 'partition_eof'
  # The fetch offset is outside the log: see ReaderCore.out_of_range.
  OUT_OF_RANGE = 'out_of_range'
  # librdkafka recovers by itself (counted and logged): carry on.
  RECOVERED = 'recovered'


class ReaderCore:
  """The reading steps both readers share, bound to one read's settings.

  Holds the ``kafka_read`` metrics (records, bytes, out-of-range fetches,
  offsets deleted before they were read, consume batch sizes, recoverable
  consumer errors). Picklable: the splittable DoFn carries one.
  """

  def __init__(self, settings: ReadSettings):
    self.settings = settings
    self.records = Metrics.counter(NAMESPACE, 'records')
    self.bytes = Metrics.counter(NAMESPACE, 'bytes')
    self.out_of_range_fetches = Metrics.counter(NAMESPACE,
                                                'out_of_range_fetches')
    self.deleted_offsets = Metrics.counter(NAMESPACE,
                                           'offsets_deleted_before_read')
    self.batch_sizes = Metrics.distribution(NAMESPACE, 'consume_batch_size')
    self.recoverable_errors = Metrics.counter(NAMESPACE,
                                              'recoverable_consumer_errors')
    self._error_log = RecoverableErrorLog()

  # Fetching and consumer events.

  def fetch(self, consumer: Consumer, *, wait: bool = True) -> list:
    """Up to ``consume_batch`` messages, as soon as any is available.

    ``consume(n, timeout)`` waits for n messages or the whole timeout, which
    at the end of a range or at modest rates would add the timeout to every
    call (and to every record's latency). Instead: take what is queued; only
    if nothing is (and ``wait``), wait up to ``poll_timeout_s`` for the first
    message (or event) and take what arrived with it.
    """
    batch = self.settings.consume_batch
    messages = consumer.consume(num_messages=batch, timeout=0)
    if not messages and wait:
      first = consumer.poll(self.settings.poll_timeout_s)
      if first is not None:
        messages = [first] + (consumer.consume(num_messages=batch - 1,
                                               timeout=0)
                              if batch > 1 else [])
    if messages:
      self.batch_sizes.update(len(messages))
    return messages

  def handle_event(self, event: Message) -> ConsumerEvent:
    """Classifies a consumer event; recoverable errors are counted and
    logged here.

    Raises:
      KafkaException: a fatal error, or one that does not heal by waiting
        (errors.is_recoverable): the read fails with it.
    """
    err = event.error()
    code = err.code()
    if code == KafkaError._PARTITION_EOF:
      return ConsumerEvent.PARTITION_EOF
    if code == KafkaError._AUTO_OFFSET_RESET:
      return ConsumerEvent.OUT_OF_RANGE
    if is_recoverable(err):
      # E.g. a broker restart: librdkafka reconnects by itself.
      self.note_recoverable(err)
      return ConsumerEvent.RECOVERED
    raise KafkaException(err)

  def note_recoverable(self, err: KafkaError) -> None:
    """Counts and logs (rate-limited) an error librdkafka recovers from."""
    self.recoverable_errors.inc()
    self._error_log.log(err)

  def out_of_range(self, consumer: Consumer, topic: str, partition: int,
                   offset: int, err: KafkaError) -> int:
    """Where to continue after the broker rejected a fetch as out of range.

    If the offset is still inside the log (some brokers answer out-of-range
    for a moment right after writes), reading retries at the same offset.
    If retention deleted it, reading continues at the log start, and the
    skipped offsets are counted and logged: they no longer exist anywhere.

    Returns:
      The offset to read next (never below ``offset``).
    """
    low, high = consumer.get_watermark_offsets(
        TopicPartition(topic, partition), timeout=10, cached=False)
    self.out_of_range_fetches.inc()
    if offset < low:
      self.deleted_offsets.inc(low - offset)
      _LOGGER.warning(
          '%s[%d]: offsets [%d, %d) were deleted by retention before they '
          'were read; continuing at %d', topic, partition, offset, low, low)
      return low
    _LOGGER.info('%s[%d]: broker answered out of range for offset %d '
                 '(log [%d, %d)): %s; retrying', topic, partition, offset,
                 low, high, err.str())
    time.sleep(0.05)
    return offset

  # Records to elements.

  def convert(self, run: list, topic: str, partition: int, items: list,
              stamps: list) -> None:
    """Appends a run of data messages of one partition to ``items`` (element
    values: KafkaRecords, or (key, value) without metadata) and their event
    times (epoch micros, None without a valid one) to ``stamps``; counts
    them in the ``records`` and ``bytes`` metrics.

    Per-record work is the reader's whole cost, so each timestamp mode takes
    its shortest path (no records built where only keys and values are
    emitted and the broker times are the event times).
    """
    s = self.settings
    mode = s.timestamp_mode
    if mode == TS_RECORD_TIME and not s.with_metadata:
      items.extend([(m.key(), m.value()) for m in run])
      stamps.extend([None if (t := m.timestamp()[1]) < 0 else t * 1000
                     for m in run])
    else:
      records = records_from_messages(run, topic, partition)
      if mode == TS_RECORD_TIME:
        stamps.extend(record_times_micros(records))
      elif mode == TS_FUNCTION:
        stamps.extend(micros_of(s.timestamp_fn, records))
      else:
        # Processing time: one clock reading per consumed run.
        stamps.extend([Timestamp.of(time.time()).micros] * len(records))
      items.extend(records if s.with_metadata else
                   [(r.key, r.value) for r in records])
    self.records.inc(len(run))
    self.bytes.inc(sum(map(len, run)))

  def take_elements(self, items: list, stamps: list,
                    estimator: 'KafkaWatermarkEstimator', *,
                    everything: bool = True
                    ) -> list[tuple[Any, int, int, Optional[int]]]:
    """Takes the pending values (and their event times) as elements.

    One element per record, or chunks of ``max_batch_records`` that carry
    their earliest valid event time (never late relative to their own
    records; records.chunk_times). Only valid times move the watermark
    ``estimator``; a record or chunk without any takes the estimator's
    watermark (neither late nor holding anything back). A partial last
    chunk stays pending unless ``everything``. What is taken is removed
    from ``items`` and ``stamps``.

    Returns:
      (value, element timestamp in micros, index in ``items`` of its first
      record, latest valid event time or None) per element.
    """
    size = self.settings.max_batch_records
    out = []
    if size <= 0:
      n = len(items)
      for i, (item, t) in enumerate(zip(items, stamps)):
        if t is None:
          out.append((item, estimator.current_watermark().micros, i, None))
        else:
          estimator.observe_timestamp(Timestamp(micros=t))
          out.append((item, t, i, t))
    else:
      n = len(items) if everything else len(items) - len(items) % size
      for i in range(0, n, size):
        low, high = chunk_times(stamps[i:i + size],
                                estimator.current_watermark().micros)
        if high is not None:
          estimator.observe_timestamp(Timestamp(micros=high))
        out.append((items[i:i + size], low, i, high))
    del items[:n]
    del stamps[:n]
    return out


__all__ = [
    'ConsumerEvent', 'NAMESPACE', 'OffsetCommitter', 'ReadSettings',
    'ReaderCore', 'TS_FUNCTION', 'TS_PROCESSING_TIME', 'TS_RECORD_TIME',
    'reader_config', 'split_at_events', 'timestamp_mode',
]
