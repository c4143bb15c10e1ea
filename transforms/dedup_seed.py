"""The restart seed of effectively-once output: what the job already wrote
within the horizon, read back from its topics (transforms/dedup.py).

Both topics are read up to the end offsets seen when the seed starts:

* the prediction topic from the first record written within the horizon
  (the broker's time index: a prediction's timestamp is when it was
  written); its keys are the event ids;
* the dead-letter topic backwards from its end, in chunks four times
  larger each round, until records dead-lettered before the horizon (the
  ``dlq.time`` header) are reached. A dead letter keeps its original
  record's timestamp, which says nothing about when it was written, so the
  time index cannot find the horizon there. Dead letters may reach the
  topic later than their ``dlq.time`` (a write retried through an outage),
  so the scan goes ``write_delay_s`` further back.

The seed covers the whole horizon or raises SeedIncompleteError: a job that
started on part of it would write again what it did not read. Its timeout
is derived from the records to read (``SEED_BASE_S`` plus one second per
``SEED_MIN_RATE`` records, a tenth of the slowest rate measured in
bench/dedup_bench.py) unless set.
"""

import logging
import time
from typing import Callable, Mapping, NamedTuple, Optional

import numpy as np
from confluent_kafka import Consumer, KafkaError, TopicPartition

from transforms import dead_letters as dl
from transforms.kafka import admin, client_logs, config_refs

_LOGGER = logging.getLogger(__name__)

SEED_BASE_S = 60.0        # connecting, metadata and the first fetches
SEED_MIN_RATE = 10_000.0  # records/s assumed when deriving the timeout
_CONSUME_BATCH = 10_000
_FIRST_CHUNK = 1024       # records per partition, first backward round
# Seed ids are handed over in chunks of this many (bounded temporaries).
_HAND_OVER = 1_000_000

# fingerprints (int64), times (epoch s, float64) -> None
Sink = Callable[[np.ndarray, np.ndarray], None]


class SeedIncompleteError(RuntimeError):
  """The horizon could not be read back in time: the job must not start."""

  def __init__(self, topic: str, read: int, planned: Optional[int],
               timeout_s: float, flag: str):
    of = f'{read:,} of {planned:,}' if planned is not None else f'{read:,}'
    super().__init__(
        f'dedup seed incomplete: read {of} records of {topic!r} within the '
        f'{timeout_s:g} s timeout; the job does not start on part of its '
        f'horizon (it would write duplicates). Raise {flag} (default: '
        f'{SEED_BASE_S:.0f} s + 1 s per {SEED_MIN_RATE:,.0f} records to read) '
        f'or shorten --dedup_horizon_s')
    self.topic, self.read, self.planned = topic, read, planned


class Span(NamedTuple):
  """Offsets [start, end) of one partition to read."""
  partition: int
  start: int
  end: int


class SeedStats(NamedTuple):
  predictions: int   # prediction records read
  dead_letters: int  # dead-letter records read
  seconds: float
  timeout_s: float


def derived_timeout_s(records: int) -> float:
  """The seed's timeout when not set: enough for ``records``, with room."""
  return SEED_BASE_S + records / SEED_MIN_RATE


def _consumer(config: Mapping, topic: str) -> Consumer:
  cfg = client_logs.route(config_refs.resolve(config))
  cfg.update({'group.id': f'kbi-dedup-seed-{topic}',
              'enable.auto.commit': False, 'enable.partition.eof': True})
  return Consumer(cfg)


def _watermarks(consumer: Consumer, config: Mapping, topic: str,
                timeout_s: float) -> dict:
  """{partition: (low, high)}."""
  out = {}
  for _, p in admin.topic_partitions(config, [topic], timeout_s):
    out[p] = consumer.get_watermark_offsets(TopicPartition(topic, p),
                                            timeout=timeout_s, cached=False)
  return out


def _spans_since(consumer: Consumer, topic: str, marks: dict, since_s: float,
                 timeout_s: float) -> list[Span]:
  """Per partition, from the first record at or after ``since_s`` to the
  end (a broker without timestamp lookups answers 0: all is read)."""
  found = consumer.offsets_for_times(
      [TopicPartition(topic, p, int(since_s * 1000)) for p in marks],
      timeout=timeout_s)
  spans = []
  for tp in found:
    low, high = marks[tp.partition]
    start = high if tp.offset < 0 else max(tp.offset, low)
    if start < high:
      spans.append(Span(tp.partition, start, high))
  return spans


def _read_spans(consumer: Consumer, topic: str, spans: list[Span],
                deadline: float, on_messages: Callable[[list], None]) -> int:
  """Reads every record of ``spans``, handing them over a consumed batch
  at a time; returns how many. Raises TimeoutError(read) at ``deadline``."""
  ends = {s.partition: s.end for s in spans if s.end > s.start}
  starts = {s.partition: s.start for s in spans}
  if not ends:
    return 0
  consumer.assign([TopicPartition(topic, s.partition, s.start)
                   for s in spans if s.end > s.start])
  read = 0
  while ends:
    left = deadline - time.monotonic()
    if left <= 0:
      raise TimeoutError(read)
    batch = []
    for m in consumer.consume(num_messages=_CONSUME_BATCH,
                              timeout=min(0.5, left)):
      err = m.error()
      if err is not None:
        if err.code() == KafkaError._PARTITION_EOF:
          ends.pop(m.partition(), None)
        elif err.fatal():
          raise RuntimeError(f'dedup seed: reading {topic}: {err}')
        # Other errors are transient (the client retries); the deadline
        # bounds them.
        continue
      p, offset = m.partition(), m.offset()
      end = ends.get(p)
      if end is None or offset < starts[p]:
        continue   # a partition already done (prefetched records)
      if offset < end:
        batch.append(m)
      if offset + 1 >= end:
        del ends[p]
    if batch:
      on_messages(batch)
      read += len(batch)
  return read


class _Collector:
  """Identities and times within the horizon, handed to ``sink`` as
  arrays in chunks (a list of Python ints costs ~40 bytes per id)."""

  def __init__(self, sink: Sink, since_s: float):
    self._sink, self._since_s = sink, since_s
    self._fps: list[np.ndarray] = []
    self._times: list[np.ndarray] = []
    self._held = 0

  def add(self, identities: list, times: list) -> None:
    t = np.asarray(times, dtype=np.float64)
    keep = t >= self._since_s
    fps = np.fromiter(map(hash, identities), dtype=np.int64,
                      count=len(identities))
    self._fps.append(fps[keep])
    self._times.append(t[keep])
    self._held += len(fps)
    if self._held >= _HAND_OVER:
      self.flush()

  def flush(self) -> None:
    if self._held:
      self._sink(np.concatenate(self._fps), np.concatenate(self._times))
      self._fps, self._times, self._held = [], [], 0


def _record_time(message) -> float:
  """A record's timestamp in epoch seconds (now when it has none)."""
  kind, ms = message.timestamp()
  return ms / 1000 if kind and ms >= 0 else time.time()


def prediction_ids(messages: list) -> tuple[list, list]:
  """(event ids, times written) of prediction records with a key."""
  messages = [m for m in messages if m.key() is not None]
  return ([m.key().decode('utf-8', 'replace') for m in messages],
          [_record_time(m) for m in messages])


def dead_letter_record_identity(message) -> tuple:
  """(identity, time dead-lettered) of a dead-letter record, from its
  ``dlq.*`` headers (transforms.dead_letters.DeadLetter.kafka_headers)."""
  dlq = {name: value for name, value in message.headers() or ()
         if name.startswith('dlq.')}
  text = lambda name: (None if dlq.get(name) is None else
                       dlq[name].decode('utf-8', 'replace'))
  sha = text(dl.SHA256_HEADER)
  if text(dl.TRUNCATED_HEADER) != 'true' or sha is None:
    sha = dl.sha256_hex(message.value())
  identity = dl.identity(
      source=text('dlq.source') or '', position=int(text('dlq.position') or -1),
      payload_sha256=sha, stage=text('dlq.stage'), reason=text('dlq.reason'),
      event_id=text('dlq.event_id'))
  at = text('dlq.time')
  return identity, _record_time(message) if at is None else float(at)


def read_back(config: Mapping, *, output_topic: str,
              dead_letter_topic: Optional[str], since_s: float,
              predictions: Sink, dead_letters: Sink,
              timeout_s: Optional[float] = None,
              write_delay_s: float = 0.0,
              timeout_flag: str = '--dedup_seed_timeout_s') -> SeedStats:
  """Reads back the predictions and dead letters written since
  ``since_s`` (module docstring), into the two sinks.

  Args:
    config: librdkafka client settings.
    output_topic: the prediction topic (keys: event ids).
    dead_letter_topic: the dead-letter topic, or None.
    since_s: the start of the horizon, epoch seconds.
    predictions, dead_letters: receive (fingerprints, times) in chunks.
    timeout_s: the whole seed's timeout; None: derived_timeout_s of the
      records it may have to read.
    write_delay_s: how much later than its ``dlq.time`` a dead letter may
      have been written.
    timeout_flag: the flag to name when the timeout is too short.

  Raises:
    SeedIncompleteError: the horizon was not read within the timeout.
  """
  started = time.monotonic()
  meta_s = 30.0 if timeout_s is None else max(1.0, min(30.0, timeout_s))
  consumer = _consumer(config, output_topic)
  try:
    marks = _watermarks(consumer, config, output_topic, meta_s)
    spans = _spans_since(consumer, output_topic, marks, since_s, meta_s)
    planned = sum(s.end - s.start for s in spans)
    dlq_marks = ({} if not dead_letter_topic else
                 _watermarks(consumer, config, dead_letter_topic, meta_s))
    dlq_at_most = sum(high - low for low, high in dlq_marks.values())
    if timeout_s is None:
      timeout_s = derived_timeout_s(planned + dlq_at_most)
    deadline = started + timeout_s

    collect = _Collector(predictions, since_s)
    try:
      read = _read_spans(consumer, output_topic, spans, deadline,
                         lambda batch: collect.add(*prediction_ids(batch)))
    except TimeoutError as e:
      raise SeedIncompleteError(output_topic, e.args[0], planned, timeout_s,
                                timeout_flag) from None
    collect.flush()
    dead = 0
    if dead_letter_topic:
      dead = _read_dead_letters_back(
          consumer, dead_letter_topic, dlq_marks, since_s - write_delay_s,
          deadline, _Collector(dead_letters, since_s),
          lambda n: SeedIncompleteError(dead_letter_topic, n, None, timeout_s,
                                        timeout_flag))
  finally:
    consumer.close()
  return SeedStats(read, dead, time.monotonic() - started, timeout_s)


def _read_dead_letters_back(consumer: Consumer, topic: str, marks: dict,
                            stop_before_s: float, deadline: float,
                            collect: _Collector, too_slow) -> int:
  """Reads a dead-letter topic backwards from its end (module docstring)
  until every partition reached a record dead-lettered before
  ``stop_before_s``, or its start."""
  pos = {p: high for p, (low, high) in marks.items() if high > low}
  chunk = _FIRST_CHUNK
  read = 0
  while pos:
    spans = [Span(p, max(marks[p][0], end - chunk), end)
             for p, end in pos.items()]
    oldest: dict = {}

    def letters(batch: list) -> None:
      identities, times = zip(*map(dead_letter_record_identity, batch))
      collect.add(list(identities), list(times))
      for m, t in zip(batch, times):
        oldest[m.partition()] = min(oldest.get(m.partition(), np.inf), t)

    try:
      read += _read_spans(consumer, topic, spans, deadline, letters)
    except TimeoutError as e:
      raise too_slow(read + e.args[0]) from None
    collect.flush()
    for span in spans:
      if (span.start <= marks[span.partition][0] or
          oldest.get(span.partition, np.inf) < stop_before_s):
        pos.pop(span.partition)
      else:
        pos[span.partition] = span.start
    chunk *= 4
  return read
