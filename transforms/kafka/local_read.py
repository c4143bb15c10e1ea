"""The local streaming read: one consumer over every partition of a read.

On the local streaming runner (beam_jobs/local_runner.py) ReadFromKafka is
replaced by a native read that a transform evaluator calls again and again,
as Beam's bundle-based runner calls its own local Pub/Sub read. This module
is that read, without anything of the runner: the evaluator asks it for
elements (``read``), for the watermark (``watermark``) and to commit what
nothing downstream holds any more (``commit``). How it fetches, handles
consumer events and builds elements is the splittable reader's
(transforms/kafka/reader_core.py); what is its own:

* one consumer assigned all partitions at explicit offsets, resolved as the
  splittable reader resolves them (start and stop specs, StopAt), and a
  watermark that is the slowest partition's (same estimator per partition);
* records counted across partitions for ``StopAt.total_records``;
* offset commits when output is durable: each emitted element is noted with
  its first offset and its buffer horizon (the end of the last window a
  windowed sink may hold it in); ``commit(safe_us)`` commits per partition
  the offsets below the first element a sink may still hold;
* broker data loss: fingerprints of the latest records read, re-verified
  after an out-of-range answer or after the brokers were unreachable, so a
  broker that lost acknowledged records and reused their offsets loses
  nothing and doubles nothing;
* the latency rules: a read returns on the first record, waits only when
  told nothing else is pending, and stops fetching after a time budget.
"""

import collections
import dataclasses
import logging
import threading
import time
from typing import Optional

from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp
from confluent_kafka import Consumer, KafkaError, TopicPartition

from transforms.kafka import admin
from transforms.kafka import config_refs
from transforms.kafka import offsets as offsets_lib
from transforms.kafka.background_commits import BackgroundCommits
from transforms.kafka.errors import is_recoverable
from transforms.kafka.reader_core import (NAMESPACE, ConsumerEvent,
                                          OffsetCommitter, ReaderCore,
                                          ReadSettings, reader_config,
                                          split_at_events)
from transforms.kafka.watermark import KafkaWatermarkEstimator

_LOGGER = logging.getLogger(__name__)

# Fingerprints kept per partition of the latest records read, to tell after
# an out-of-range answer whether the broker still holds what was read.
RECENT_FINGERPRINTS = 20_000
# Buffer horizon of an element when the read is given none: only a fully
# drained pipeline frees it (the commit behaviour of a read without one).
UNKNOWN_HORIZON = 2**63 - 1

# Client errors that mean "cannot reach the brokers right now".
_UNREACHABLE_CODES = frozenset(
    (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
     KafkaError._TIMED_OUT, KafkaError._RESOLVE))


@dataclasses.dataclass(frozen=True)
class LocalReadTuning:
  """How the local read paces itself (the runner's knobs, not the read's).

  Attributes:
    records_per_call: most records one evaluation reads. Every bundle costs
      the bundle-based runner a DoFn pickle round trip plus setup/teardown
      per downstream step, so bundles should be large; this also bounds the
      latency one evaluation adds.
    call_budget_s: longest one evaluation keeps fetching once it has
      records.
    commit_interval_s: shortest interval between two offset commits.
    watermark_step_s: smallest advance of the read's watermark reported to
      the runner (the end of input is always reported). Every advance makes
      the runner recompute the watermark of every step downstream, a cost
      per evaluation; windows fire at most this much later.
  """
  records_per_call: int = 20_000
  call_budget_s: float = 0.2
  commit_interval_s: float = 1.0
  watermark_step_s: float = 0.1

  def __post_init__(self):
    if self.records_per_call <= 0:
      raise ValueError(
          f'records_per_call must be > 0, got {self.records_per_call}')
    if self.watermark_step_s < 0:
      raise ValueError(
          f'watermark_step_s must be >= 0, got {self.watermark_step_s}')


def _fingerprint(message) -> int:
  return hash((message.timestamp()[1], message.key(), message.value()))


class _PartitionState:
  """Where one partition's read stands, and what was read recently."""

  __slots__ = ('topic', 'partition', 'next_offset', 'stop_offset', 'done',
               'caught_up', 'estimator', 'committed_next', 'recent',
               'verify', 'verify_until', 'unsettled', 'truncations')

  def __init__(self, r: offsets_lib.PartitionRange, max_delay_s: float,
               idle_timeout_s: float, truncations=None):
    self.topic = r.topic
    self.partition = r.partition
    self.next_offset = r.start_offset
    self.stop_offset = r.stop_offset
    self.done = r.start_offset >= r.stop_offset
    self.caught_up = False
    self.estimator = KafkaWatermarkEstimator(
        None, max_delay_s=max_delay_s, idle_timeout_s=idle_timeout_s)
    # Next offset already committed to the group (None: nothing yet).
    self.committed_next: Optional[int] = None
    # (first offset, buffer horizon in micros) of each emitted element whose
    # records may still be held by a windowed sink (see
    # LocalKafkaReader.commit), in emission order.
    self.unsettled: collections.deque = collections.deque()
    # (offset, fingerprint) of the latest records emitted.
    self.recent: collections.deque = collections.deque(
        maxlen=RECENT_FINGERPRINTS)
    # While re-reading after broker data loss: fingerprints of what was
    # emitted below ``verify_until`` (see start_verify).
    self.verify: Optional[dict] = None
    self.verify_until: Optional[int] = None
    # The log_truncations counter (None: not counted).
    self.truncations = truncations

  @property
  def key(self) -> tuple[str, int]:
    return (self.topic, self.partition)

  def start_verify(self) -> int:
    """Re-read what was read recently and compare: records that match are
    skipped, the first that differs and everything after it are read as
    new (nothing lost, nothing doubled). Returns the offset to read from."""
    self.verify = dict(self.recent)
    self.verify_until = self.next_offset
    return self.recent[0][0]

  def already_emitted(self, offset: int, fingerprint: int) -> bool:
    """While verifying: True for a record emitted before (skip it)."""
    if offset >= self.verify_until:
      self.verify = self.verify_until = None
      return False
    if self.verify.get(offset) == fingerprint:
      return True
    _LOGGER.warning(
        '%s[%d]: the broker\'s record at offset %d is not the one read '
        'before: it lost records that were read and reused their offsets '
        '(e.g. a restart without durable writes). Offsets from %d on are '
        'read again as new records.', self.topic, self.partition, offset,
        offset)
    if self.truncations is not None:
      self.truncations.inc()
    while self.recent and self.recent[-1][0] >= offset:
      self.recent.pop()
    self.verify = self.verify_until = None
    return False


class LocalKafkaReader:
  """The state of one local Kafka read across evaluations (thread-safe).

  Started by the first ``read``; closed when the read ends, when the
  pipeline result is finalized, or when its transform is garbage collected.
  """

  def __init__(self, settings: ReadSettings,
               tuning: LocalReadTuning = LocalReadTuning()):
    self._s = settings
    self._tuning = tuning
    self._core = ReaderCore(settings)
    self._lock = threading.Lock()
    self._consumer: Optional[Consumer] = None
    self._committer: Optional[OffsetCommitter] = None
    self._commits: Optional[BackgroundCommits] = None
    self._partitions: dict[tuple[str, int], _PartitionState] = {}
    self._deadline: Optional[float] = None
    self._remaining: Optional[int] = None  # StopAt.total_records
    # The watermark last reported to the runner (micros), published for the
    # steps downstream before each read (transforms/source_watermark.py).
    self._reported_us = MIN_TIMESTAMP.micros
    self._step_us = int(round(tuning.watermark_step_s * 1e6))
    self._started = False
    self._closed = False
    self._stop_requested = threading.Event()
    self._last_commit = 0.0
    # Wall time of the last "broker unreachable" report (0: none).
    self._unreachable_at = 0.0
    # Set by such a report: check the recent records once the brokers
    # answer again (see _verify_recent).
    self._reverify = False
    self.log_truncations = Metrics.counter(NAMESPACE, 'log_truncations')

  # Lifecycle.

  def _start(self) -> None:
    s = self._s
    config = config_refs.resolve(s.consumer_config)
    partitions = admin.topic_partitions(config, list(s.topics),
                                        s.metadata_timeout_s)
    self._consumer = Consumer(dict(reader_config(config),
                                   error_cb=self._on_client_error))
    stop = s.stop
    if stop.kind == 'total':
      # Counted here, across partitions, in arrival order.
      self._remaining = stop.value
      stop = offsets_lib.StopAt.never()
    ranges = offsets_lib.resolve_ranges(self._consumer, config, partitions,
                                        s.start, stop,
                                        timeout_s=s.metadata_timeout_s)
    for r in ranges:
      state = _PartitionState(r, s.max_delay_s, s.idle_timeout_s,
                              self.log_truncations)
      self._partitions[state.key] = state
      if r.deadline is not None:
        self._deadline = r.deadline
      _LOGGER.info('local kafka read plan: %s[%d] offsets [%d, %s)', r.topic,
                   r.partition, r.start_offset,
                   'inf' if r.stop_offset == offsets_lib.UNBOUNDED else
                   r.stop_offset)
    self._reassign()
    if s.commit_offsets:
      self._committer = OffsetCommitter(config)
      self._commits = BackgroundCommits(self._committer)
    self._started = True

  def request_stop(self) -> None:
    """Ends the read at the next evaluation; the pipeline then drains."""
    self._stop_requested.set()

  def close(self) -> None:
    with self._lock:
      if self._closed:
        return
      self._closed = True
      if self._s.source_watermark is not None:
        self._s.source_watermark.clear()
      committer = self._committer
      if self._commits is not None and not self._commits.close():
        # Closing a consumer in the middle of its commit is not safe.
        _LOGGER.warning('an offset commit still waits for the broker; its '
                        'consumer is left open')
        committer = None
      for client in (self._consumer, committer):
        if client is not None:
          try:
            client.close()
          except RuntimeError:
            pass  # already closed

  # Offsets.

  def commit(self, safe_us: Optional[int] = None) -> None:
    """Commits, per partition, the offsets below the first record whose
    output may still be held downstream.

    Args:
      safe_us: no step downstream holds an element of a window ending at
        or before this time (epoch micros; the earliest watermark hold of
        the steps after the read), and no step has input pending: then
        every emitted element whose buffer horizon (the end of the last
        window its records can be held in; windows.BufferHorizon) is at
        most ``safe_us`` has been written by every sink. None: the
        pipeline is drained (nothing pending, nothing held): everything
        emitted is durable.

    Returns when the commit is done (after any ``maybe_commit`` still
    being made).
    """
    self._commit(safe_us, in_background=False)

  def maybe_commit(self, safe_us: Optional[int] = None) -> None:
    """``commit(safe_us)`` if ``commit_interval_s`` passed since the last,
    made on a thread of its own (transforms/kafka/background_commits.py):
    returns at once."""
    if time.monotonic() - self._last_commit >= self._tuning.commit_interval_s:
      self._commit(safe_us, in_background=True)

  def _commit(self, safe_us: Optional[int], *, in_background: bool) -> None:
    if self._committer is None:
      return
    todo = {}
    for p in self._partitions.values():
      unsettled = p.unsettled
      if safe_us is None:
        unsettled.clear()
      elif unsettled:
        # Elements are settled in any order (a rewind after broker data
        # loss emits lower offsets again): keep the unsettled ones.
        p.unsettled = unsettled = collections.deque(
            e for e in unsettled if e[1] > safe_us)
      target = min(e[0] for e in unsettled) if unsettled else p.next_offset
      if p.committed_next != target and target > 0:
        todo[p.key] = target
    if in_background:
      if todo:
        self._commits.submit(todo)
    else:
      self._commits.commit_now(todo)
    for key, offset in todo.items():
      self._partitions[key].committed_next = offset
    self._last_commit = time.monotonic()

  # Reading.

  @property
  def finished(self) -> bool:
    return self._started and all(p.done for p in self._partitions.values())

  def watermark(self) -> Timestamp:
    """The read's output watermark: the slowest partition's (reported to
    the runner with each read's output)."""
    marks = [p.estimator.current_watermark()
             for p in self._partitions.values() if not p.done]
    mark = min(marks) if marks else MAX_TIMESTAMP
    if (mark != MAX_TIMESTAMP and self._reported_us != MIN_TIMESTAMP.micros
        and mark.micros - self._reported_us < self._step_us):
      # Held back (conservative): advanced by less than the step.
      return Timestamp(micros=self._reported_us)
    self._reported_us = max(mark.micros, self._reported_us)
    return Timestamp(micros=self._reported_us)

  def read(self, wait: bool = True) -> list:
    """One evaluation's worth of elements (WindowedValues in the global
    window).

    Args:
      wait: whether to wait up to the poll timeout for a first record.
        The runner executes one task at a time: while other steps have
        work queued, a waiting read would hold them up.
    """
    with self._lock:
      if self._closed:
        return []
      if not self._started:
        self._start()
      if self._s.source_watermark is not None:
        # What was declared before this read's elements: while they are in
        # flight, no step downstream can be further.
        self._s.source_watermark.publish(self._reported_us)
      if self._stop_requested.is_set() or (
          self._deadline is not None and time.time() >= self._deadline):
        for p in self._partitions.values():
          p.done = True
        return []
      return self._read_locked(wait)

  def _read_locked(self, wait: bool) -> list:
    out = []
    n = 0
    # Partitions that delivered records in this call: active, whatever
    # their EOF state at the end of the call.
    active = set()
    t_end = time.monotonic() + self._tuning.call_budget_s
    while n < self._tuning.records_per_call and not self.finished:
      if self._reverify:
        self._verify_recent()
      messages = self._core.fetch(self._consumer, wait=wait)
      if not messages:
        break
      # Runs of consecutive error-free messages of one partition.
      runs: dict[tuple[str, int], list] = {}
      for run, event in split_at_events(messages):
        for message in run:
          self._take(message, runs, active)
        if event is not None:
          p = self._partitions.get((event.topic(), event.partition()))
          if p is not None and not p.done:
            self._on_event(p, event)
      for key, run in runs.items():
        p = self._partitions[key]
        if self._remaining is not None:
          # Records past the total are not emitted, so not committed either.
          run = run[:self._remaining]
          if not run:
            p.next_offset = runs[key][0].offset()
            continue
          p.next_offset = run[-1].offset() + 1
          self._remaining -= len(run)
        n += len(run)
        out.extend(self._emit(p, run))
      if self._remaining == 0:
        for p in self._partitions.values():
          self._finish_partition(p)
      # Once records arrived, do not wait for more than the budget allows.
      if time.monotonic() >= t_end:
        break
      wait = False
    self._note_activity(active)
    return out

  def _take(self, message, runs: dict, active: set) -> None:
    """Adds a data message to its partition's run, unless it was emitted
    before or lies past the partition's stop."""
    key = (message.topic(), message.partition())
    p = self._partitions.get(key)
    if p is None or p.done:
      return
    offset = message.offset()
    if offset < p.next_offset:
      return  # fetched before a re-seek; already emitted
    fingerprint = _fingerprint(message)
    if p.verify is not None and p.already_emitted(offset, fingerprint):
      p.next_offset = offset + 1
      return
    if offset >= p.stop_offset:
      self._finish_partition(p)
      return
    runs.setdefault(key, []).append(message)
    active.add(key)
    p.recent.append((offset, fingerprint))
    p.next_offset = offset + 1
    p.caught_up = False
    if p.next_offset >= p.stop_offset:
      self._finish_partition(p)

  def _note_activity(self, active: set) -> None:
    """Tells each partition's watermark whether it is idle."""
    now = time.time()
    # While the brokers are unreachable (and for an idle timeout after the
    # last report) no partition counts as idle: no records is no evidence
    # then, and a watermark moving on with the clock would make the records
    # that producers buffered during a broker restart late.
    reachable = now - self._unreachable_at >= self._s.idle_timeout_s
    for key, p in self._partitions.items():
      if not p.done:
        # A partition that got records restarts its idle clock even if it
        # reached its end again within the call: at modest rates nearly
        # every fetch ends in an EOF, and counting only the EOF would call
        # a busy partition idle after idle_timeout_s. Its watermark would
        # then jump to the wall clock, ahead of records still in flight,
        # which would arrive too late.
        p.estimator.record_activity(
            caught_up=p.caught_up and reachable and key not in active,
            now=now)

  def _on_client_error(self, err) -> None:
    """librdkafka's client-level errors (served inside consume())."""
    if err.code() in _UNREACHABLE_CODES:
      self._unreachable_at = time.time()
      self._reverify = True
    if is_recoverable(err):
      self._core.note_recoverable(err)
    else:
      _LOGGER.error('Kafka consumer: %s', err.str())

  def _on_event(self, p: _PartitionState, message) -> None:
    kind = self._core.handle_event(message)
    if kind is ConsumerEvent.PARTITION_EOF:
      p.caught_up = True
      if message.offset() >= p.stop_offset:
        # Nothing left below the stop offset (it may lie past the last
        # record: transaction markers or compaction at the log end).
        self._finish_partition(p)
    elif kind is ConsumerEvent.OUT_OF_RANGE:
      resume = self._core.out_of_range(self._consumer, p.topic, p.partition,
                                       p.next_offset, message.error())
      if resume == p.next_offset and p.recent and p.verify is None:
        # The offset is still "in the log", but a broker that lost
        # acknowledged writes (a restart without durable storage, an
        # unclean leader election) hands out the lost offsets again to new
        # records.
        resume = p.start_verify()
      p.next_offset = resume
      # Not seek(): librdkafka refuses it (_STATE) for a partition whose
      # fetcher stopped on the error; a new assignment restarts it.
      self._reassign()

  def _verify_recent(self) -> None:
    """After the brokers were unreachable: a restarted broker that lost
    records may already have given their offsets to new records (producers
    send what they buffered during the outage), so no fetch ends out of
    range (_on_event) and a fetch position past those offsets would skip
    the new records. Every partition re-reads its recent records and
    compares."""
    self._reverify = False
    moved = False
    for p in self._partitions.values():
      if not p.done and p.recent and p.verify is None:
        p.next_offset = p.start_verify()
        moved = True
    if moved:
      self._reassign()

  def _reassign(self) -> None:
    """Assigns every unfinished partition at its next offset."""
    self._consumer.assign([
        TopicPartition(p.topic, p.partition, p.next_offset)
        for p in self._partitions.values() if not p.done
    ])

  def _finish_partition(self, p: _PartitionState) -> None:
    if p.done:
      return
    p.done = True
    self._consumer.pause([TopicPartition(p.topic, p.partition)])

  def _emit(self, p: _PartitionState, run: list) -> list:
    """A run of messages of one partition as elements in the global window,
    each noted with its first offset and buffer horizon for the commits."""
    items: list = []
    stamps: list = []
    self._core.convert(run, p.topic, p.partition, items, stamps)
    horizon = self._s.buffer_horizon
    windowed = GlobalWindows.windowed_value
    out = []
    for value, micros, first, high in self._core.take_elements(
        items, stamps, p.estimator):
      p.unsettled.append(
          (run[first].offset(), UNKNOWN_HORIZON if horizon is None else
           horizon(micros if high is None else high)))
      out.append(windowed(value, timestamp=Timestamp(micros=micros)))
    return out


__all__ = ['LocalKafkaReader', 'LocalReadTuning']
