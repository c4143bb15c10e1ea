"""Where a read starts and stops, resolved to offsets per topic-partition.

Resolution needs the cluster (committed offsets, watermarks, offsets_for_times),
so it runs once at pipeline start in ReadFromKafka's first step and hands each
partition's range to the splittable reader as a ``PartitionRange``.
"""

import dataclasses
import datetime
import logging
import sys
import time
from typing import Iterable, Mapping, NamedTuple, Optional, Union

from apache_beam.utils.timestamp import Timestamp
from confluent_kafka import Consumer, KafkaException, TopicPartition

_LOGGER = logging.getLogger(__name__)

# The stop offset of an unbounded range: larger than any Kafka offset.
UNBOUNDED = sys.maxsize

START_COMMITTED = 'committed'
START_EARLIEST = 'earliest'
START_LATEST = 'latest'

StartSpec = Union[str, Timestamp, datetime.datetime]


class PartitionRange(NamedTuple):
  """The offsets of one partition a read covers.

  Attributes:
    topic: topic name.
    partition: partition number.
    start_offset: first offset to read.
    stop_offset: exclusive end offset, or UNBOUNDED.
    deadline: wall-clock epoch seconds after which reading stops, or None.
  """
  topic: str
  partition: int
  start_offset: int
  stop_offset: int = UNBOUNDED
  deadline: Optional[float] = None

  @property
  def is_bounded(self) -> bool:
    return self.stop_offset != UNBOUNDED or self.deadline is not None


@dataclasses.dataclass(frozen=True)
class StopAt:
  """When a read ends. Build with the class methods; ``None`` means never."""
  kind: str
  value: object = None

  @classmethod
  def never(cls) -> 'StopAt':
    """Unbounded: a streaming read."""
    return cls('never')

  @classmethod
  def end_offsets(cls) -> 'StopAt':
    """The end offsets observed at start: a bounded snapshot."""
    return cls('end')

  @classmethod
  def records_per_partition(cls, n: int) -> 'StopAt':
    """``n`` offsets from the start offset of each partition (waits for them)."""
    if n < 0:
      raise ValueError(f'records_per_partition must be >= 0, got {n}')
    return cls('records', int(n))

  @classmethod
  def total_records(cls, n: int) -> 'StopAt':
    """``n`` records in total over all partitions.

    The local streaming read counts exactly, in arrival order. The
    splittable read resolves it at start: the records already present are
    taken partition by partition (ascending) up to ``n``; if fewer than ``n``
    are present, the rest is waited for, split evenly over the partitions.
    """
    if n < 1:
      raise ValueError(f'total_records must be >= 1, got {n}')
    return cls('total', int(n))

  @classmethod
  def read_time(cls, seconds: float) -> 'StopAt':
    """Reading stops ``seconds`` after the read starts (wall clock)."""
    if seconds <= 0:
      raise ValueError(f'read_time must be > 0 seconds, got {seconds}')
    return cls('read_time', float(seconds))

  @classmethod
  def timestamp(cls, ts: StartSpec) -> 'StopAt':
    """Before the first record with a timestamp at or after ``ts``."""
    return cls('timestamp', to_timestamp(ts))

  @classmethod
  def offsets(cls, stops: Mapping[tuple[str, int], int]) -> 'StopAt':
    """Explicit exclusive end offsets per (topic, partition)."""
    return cls('offsets', dict(stops))

  @property
  def is_bounded(self) -> bool:
    return self.kind != 'never'


def to_timestamp(value: StartSpec) -> Timestamp:
  """An ISO-8601 string, datetime or Timestamp as a Beam Timestamp.

  Naive datetimes and ISO strings without an offset are taken as UTC.
  """
  if isinstance(value, Timestamp):
    return value
  if isinstance(value, str):
    try:
      value = datetime.datetime.fromisoformat(value.replace('Z', '+00:00'))
    except ValueError:
      raise ValueError(
          f'not an ISO-8601 time: {value!r} (e.g. 2026-11-22T07:00:00Z)'
      ) from None
  if isinstance(value, datetime.datetime):
    if value.tzinfo is None:
      value = value.replace(tzinfo=datetime.timezone.utc)
    return Timestamp.from_utc_datetime(value.astimezone(datetime.timezone.utc))
  raise ValueError(f'cannot read {value!r} as a time')


def normalize_start(start: StartSpec) -> Union[str, Timestamp]:
  """Validates a start spec: committed, earliest, latest, or a time."""
  if isinstance(start, str) and start in (START_COMMITTED, START_EARLIEST,
                                          START_LATEST):
    return start
  try:
    return to_timestamp(start)
  except ValueError:
    raise ValueError(
        f'start={start!r}: use committed, earliest, latest or an ISO-8601 '
        f'time') from None


def normalize_stop(stop: Union[None, str, StopAt]) -> StopAt:
  if stop is None:
    return StopAt.never()
  if isinstance(stop, StopAt):
    return stop
  if stop == 'end':
    return StopAt.end_offsets()
  if stop == 'never':
    return StopAt.never()
  raise ValueError(f'stop={stop!r}: use None, "end" or a StopAt')


def _reset_policy(consumer_config: Mapping[str, object]) -> str:
  reset = str(consumer_config.get('auto.offset.reset', 'latest')).lower()
  if reset in ('earliest', 'smallest', 'beginning'):
    return START_EARLIEST
  if reset in ('latest', 'largest', 'end'):
    return START_LATEST
  return 'error'


def resolve_ranges(consumer: Consumer,
                   consumer_config: Mapping[str, object],
                   partitions: Iterable[tuple[str, int]],
                   start: Union[str, Timestamp],
                   stop: StopAt,
                   *,
                   now: Optional[float] = None,
                   timeout_s: float = 30.0) -> list[PartitionRange]:
  """Resolves start and stop specs to one PartitionRange per partition.

  Args:
    consumer: a consumer on the cluster (with ``group.id`` for 'committed').
    consumer_config: its configuration (for ``auto.offset.reset``).
    partitions: (topic, partition) pairs to read.
    start: normalized start spec.
    stop: when to stop.
    now: wall-clock time of the read start (for ``StopAt.read_time``).
    timeout_s: per request.

  Raises:
    ValueError: 'committed' without a group.id, or no committed offset with
      ``auto.offset.reset=error``.
    KafkaException: a broker error.
  """
  now = time.time() if now is None else now
  tps = [TopicPartition(t, p) for t, p in partitions]
  watermarks = {}
  for tp in tps:
    watermarks[(tp.topic, tp.partition)] = consumer.get_watermark_offsets(
        tp, timeout=timeout_s, cached=False)

  def low(tp):
    return watermarks[(tp.topic, tp.partition)][0]

  def high(tp):
    return watermarks[(tp.topic, tp.partition)][1]

  starts: dict[tuple[str, int], int] = {}
  if start == START_COMMITTED:
    if not consumer_config.get('group.id'):
      raise ValueError("start='committed' needs 'group.id' in consumer_config")
    fallback = _reset_policy(consumer_config)
    for tp in consumer.committed(tps, timeout=timeout_s):
      key = (tp.topic, tp.partition)
      if tp.error is not None:
        raise KafkaException(tp.error)
      if tp.offset >= 0:
        starts[key] = tp.offset
      elif fallback == START_EARLIEST:
        starts[key] = low(tp)
      elif fallback == START_LATEST:
        starts[key] = high(tp)
      else:
        raise ValueError(
            f'no committed offset for group {consumer_config["group.id"]!r} '
            f'on {tp.topic}[{tp.partition}] and auto.offset.reset=error')
  elif start == START_EARLIEST:
    starts = {(tp.topic, tp.partition): low(tp) for tp in tps}
  elif start == START_LATEST:
    starts = {(tp.topic, tp.partition): high(tp) for tp in tps}
  else:
    starts = _offsets_for_time(consumer, tps, start, high, timeout_s)

  for tp in tps:
    key = (tp.topic, tp.partition)
    if starts[key] < low(tp):
      _LOGGER.warning(
          '%s[%d]: start offset %d was deleted by retention; starting at the '
          'earliest offset %d', tp.topic, tp.partition, starts[key], low(tp))
      starts[key] = low(tp)

  if stop.kind == 'end':
    stops = {(tp.topic, tp.partition): high(tp) for tp in tps}
  elif stop.kind == 'timestamp':
    stops = _offsets_for_time(consumer, tps, stop.value, high, timeout_s)
  elif stop.kind == 'offsets':
    stops = {key: stop.value.get(key, UNBOUNDED) for key in starts}
  elif stop.kind == 'records':
    stops = {key: s + stop.value for key, s in starts.items()}
  elif stop.kind == 'total':
    stops = _allocate_total(starts, {(tp.topic, tp.partition): high(tp)
                                     for tp in tps}, stop.value)
  else:
    stops = {key: UNBOUNDED for key in starts}
  deadline = now + stop.value if stop.kind == 'read_time' else None

  return [
      PartitionRange(t, p, starts[(t, p)],
                     max(starts[(t, p)], stops[(t, p)]), deadline)
      for t, p in sorted(starts)
  ]


def _allocate_total(starts: Mapping[tuple[str, int], int],
                    highs: Mapping[tuple[str, int], int],
                    total: int) -> dict[tuple[str, int], int]:
  """Per-partition stop offsets reading ``total`` records (see StopAt)."""
  stops = {}
  remaining = total
  for key in sorted(starts):
    take = min(max(0, highs[key] - starts[key]), remaining)
    stops[key] = starts[key] + take
    remaining -= take
  keys = sorted(starts)
  for i, key in enumerate(keys):
    # Not enough records yet: wait for the rest, spread evenly.
    stops[key] += remaining // len(keys) + (1 if i < remaining % len(keys)
                                            else 0)
  return stops


def _offsets_for_time(consumer, tps, ts: Timestamp, high, timeout_s):
  ms = ts.micros // 1000
  query = [TopicPartition(tp.topic, tp.partition, ms) for tp in tps]
  out = {}
  for tp, asked in zip(consumer.offsets_for_times(query, timeout=timeout_s),
                       tps):
    if tp.error is not None:
      raise KafkaException(tp.error)
    # -1: no record at or after the time: start at the end of the log.
    out[(tp.topic, tp.partition)] = tp.offset if tp.offset >= 0 else high(asked)
  return out
