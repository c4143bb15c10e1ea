"""Unbounded Kafka reads on the local (bundle-based) DirectRunner.

Why this exists: in Beam 2.77 Python, an unbounded splittable DoFn does not
stream locally without Prism (docs/local_streaming.md has the measurements):
the FnApiRunner runs stage by stage, so windows downstream of an unbounded
read never fire, and the legacy BundleBasedDirectRunner cannot expand or run
a self-checkpointing SDF in streaming mode. Beam's own local Pub/Sub read
solves the same problem with a PTransform override plus a transform
evaluator (``_DirectReadFromPubSub`` / ``_PubSubReadEvaluator``). This module
does the same for ReadFromKafka, and only there: on Prism, Dataflow, Flink and
the FnApiRunner the splittable DoFn in read.py remains the source.

How the evaluator reads: one consumer is assigned all partitions of the read
(explicit offsets, no group rebalancing). Each evaluation consumes up to
``local_records_per_call`` records in ``consume_batch`` fetches, emits them as
one output bundle (chunks of ``max_batch_records`` records of one partition
when batching is on), and reports the watermark: the minimum over partitions
of the same per-partition estimator the SDF uses (record times minus
``max_delay``, advancing with the clock on idle partitions). It then hands
the runner an empty "unprocessed" bundle so it is called again.

When offsets are committed: the bundle-based runner schedules root work only
when no other work can run (see ``_ExecutorServiceParallelExecutor.
_MonitorTask._add_work_if_necessary``), so when the evaluator is called,
everything it emitted before has been processed by every step downstream,
sinks included. At that point it commits what it emitted, provided no step
buffers elements (no pending bundle, no watermark hold such as a GroupByKey
waiting for its window to close). A final commit happens when the pipeline
finishes successfully. A crash therefore re-reads at most what was in flight:
at-least-once, never commit-before-output. Caveat: a stateful DoFn that keeps
elements in user state across bundles without a watermark hold is invisible
to this check; the project's jobs do not buffer elements that way.
"""

import collections
import contextlib
import logging
import sys
import threading
import time
import types
import weakref
from typing import Optional

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.pipeline import PTransformOverride
from apache_beam.runners.direct import transform_evaluator as direct_evaluators
from apache_beam.transforms import core as beam_core
from apache_beam.transforms import userstate
from apache_beam.runners.direct import direct_runner
from apache_beam.runners.direct import executor as direct_executor
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.direct.transform_evaluator import (
    TransformEvaluatorRegistry, _TransformEvaluator)
from apache_beam.runners.direct.util import TransformResult
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.runners.worker import statesampler
from apache_beam.utils import counters
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from transforms.kafka import admin
from transforms.kafka.errors import RecoverableErrorLog, is_recoverable
from transforms.kafka import config_refs
from transforms.kafka import offsets as offsets_lib
from transforms.kafka.read import (TS_FUNCTION, TS_PROCESSING_TIME,
                                   OffsetCommitter, ReadFromKafka,
                                   reader_config, recover_out_of_range)
from transforms.kafka.records import (chunk_times, micros_of, record_micros,
                                      records_from_messages)
from transforms.kafka.watermark import KafkaWatermarkEstimator

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'kafka_read'

# Records one evaluation reads at most. Every bundle costs the legacy runner a
# DoFn pickle round trip plus setup/teardown per downstream step, so bundles
# should be large; this also bounds the latency one evaluation adds.
DEFAULT_RECORDS_PER_CALL = 20_000
# Longest one evaluation keeps fetching once it has records.
DEFAULT_CALL_BUDGET_S = 0.2
# Shortest interval between two offset commits.
DEFAULT_COMMIT_INTERVAL_S = 1.0
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


def _fingerprint(message) -> int:
  return hash((message.timestamp()[1], message.key(), message.value()))


class _PartitionState:
  """Where one partition's read stands."""

  __slots__ = ('topic', 'partition', 'next_offset', 'stop_offset', 'done',
               'caught_up', 'estimator', 'committed_next', 'recent',
               'verify', 'verify_until', 'unsettled')

  def __init__(self, r: offsets_lib.PartitionRange, max_delay_s: float,
               idle_timeout_s: float):
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
    # While re-reading after an out-of-range answer: fingerprints of what
    # was emitted below ``verify_until`` (see LocalKafkaReader._on_error).
    self.verify: Optional[dict] = None
    self.verify_until: Optional[int] = None

  @property
  def key(self) -> tuple[str, int]:
    return (self.topic, self.partition)


class LocalKafkaReader:
  """The state of one local Kafka read across evaluations (thread-safe).

  Created on the first evaluation; closed when the read ends, when the
  pipeline result is finalized, or when the transform is garbage collected.
  """

  def __init__(self, settings: dict, *, records_per_call: int,
               call_budget_s: float, commit_interval_s: float):
    self._s = settings
    self._records_per_call = records_per_call
    self._call_budget_s = call_budget_s
    self._commit_interval_s = commit_interval_s
    self._lock = threading.Lock()
    self._consumer: Optional[Consumer] = None
    self._committer: Optional[OffsetCommitter] = None
    self._partitions: dict[tuple[str, int], _PartitionState] = {}
    self._deadline: Optional[float] = None
    self._remaining: Optional[int] = None  # StopAt.total_records
    # The watermark last reported to the runner (micros), published for the
    # steps downstream before each read (transforms/source_watermark.py).
    self._reported_us = MIN_TIMESTAMP.micros
    self._source_watermark = settings.get('source_watermark')
    self._horizon = settings.get('buffer_horizon')
    self._started = False
    self._closed = False
    self._stop_requested = threading.Event()
    self._last_commit = 0.0
    # Wall time of the last "broker unreachable" report (0: none).
    self._unreachable_at = 0.0
    # Set by such a report: check the recent records once the brokers
    # answer again (see _verify_recent).
    self._reverify = False
    self.records = Metrics.counter(_NAMESPACE, 'records')
    self.bytes = Metrics.counter(_NAMESPACE, 'bytes')
    self.out_of_range = Metrics.counter(_NAMESPACE, 'out_of_range_fetches')
    self.deleted_offsets = Metrics.counter(_NAMESPACE,
                                           'offsets_deleted_before_read')
    self.log_truncations = Metrics.counter(_NAMESPACE, 'log_truncations')
    self.batch_sizes = Metrics.distribution(_NAMESPACE, 'consume_batch_size')
    self.recoverable_errors = Metrics.counter(_NAMESPACE,
                                              'recoverable_consumer_errors')
    self._error_log = RecoverableErrorLog()

  # Lifecycle.

  def _start(self) -> None:
    s = self._s
    config = config_refs.resolve(s['consumer_config'])
    partitions = admin.topic_partitions(config, s['topics'],
                                        s['metadata_timeout_s'])
    self._consumer = Consumer(dict(reader_config(config),
                                   error_cb=self._on_client_error))
    stop = s['stop']
    if stop.kind == 'total':
      # Counted here, across partitions, in arrival order.
      self._remaining = stop.value
      stop = offsets_lib.StopAt.never()
    ranges = offsets_lib.resolve_ranges(self._consumer, config, partitions,
                                        s['start'], stop,
                                        timeout_s=s['metadata_timeout_s'])
    for r in ranges:
      state = _PartitionState(r, s['max_delay_s'], s['idle_timeout_s'])
      self._partitions[state.key] = state
      if r.deadline is not None:
        self._deadline = r.deadline
      _LOGGER.info('local kafka read plan: %s[%d] offsets [%d, %s)', r.topic,
                   r.partition, r.start_offset,
                   'inf' if r.stop_offset == offsets_lib.UNBOUNDED else
                   r.stop_offset)
    self._consumer.assign([
        TopicPartition(p.topic, p.partition, p.next_offset)
        for p in self._partitions.values() if not p.done
    ])
    if s['commit_offsets']:
      self._committer = OffsetCommitter(config)
    self._started = True

  def request_stop(self) -> None:
    """Ends the read at the next evaluation; the pipeline then drains."""
    self._stop_requested.set()

  def close(self) -> None:
    with self._lock:
      if self._closed:
        return
      self._closed = True
      if self._source_watermark is not None:
        self._source_watermark.clear()
      for client in (self._consumer, self._committer):
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
    """
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
    if todo:
      self._committer.commit(todo)
      for key, offset in todo.items():
        self._partitions[key].committed_next = offset
    self._last_commit = time.monotonic()

  def maybe_commit(self, safe_us: Optional[int] = None) -> None:
    if time.monotonic() - self._last_commit >= self._commit_interval_s:
      self.commit(safe_us)

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
    self._reported_us = mark.micros
    return mark

  def read(self, wait: bool = True) -> list:
    """One evaluation's worth of elements (timestamped values).

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
      if self._source_watermark is not None:
        # What was declared before this read's elements: while they are in
        # flight, no step downstream can be further.
        self._source_watermark.publish(self._reported_us)
      if self._stop_requested.is_set() or (
          self._deadline is not None and time.time() >= self._deadline):
        for p in self._partitions.values():
          p.done = True
        return []
      return self._read_locked(wait)

  def _next_messages(self, wait: bool) -> list:
    """What is queued; if nothing and ``wait``, the first record to arrive
    within the poll timeout plus what came with it. (consume() with a
    timeout waits for a full batch or the whole timeout, which at modest
    rates would add the timeout to every record's latency.)"""
    batch = self._s['consume_batch']
    messages = self._consumer.consume(num_messages=batch, timeout=0)
    if messages or not wait:
      return messages
    first = self._consumer.poll(self._s['poll_timeout_s'])
    if first is None:
      return []
    return [first] + self._consumer.consume(num_messages=batch - 1, timeout=0)

  def _read_locked(self, wait: bool) -> list:
    out = []
    n = 0
    # Partitions that delivered records in this call: active, whatever
    # their EOF state at the end of the call.
    active = set()
    t_end = time.monotonic() + self._call_budget_s
    while n < self._records_per_call and not self.finished:
      if self._reverify:
        self._verify_recent()
      messages = self._next_messages(wait)
      if not messages:
        break
      self.batch_sizes.update(len(messages))
      # Runs of consecutive error-free messages of one partition.
      runs: dict[tuple[str, int], list] = {}
      for message in messages:
        key = (message.topic(), message.partition())
        p = self._partitions.get(key)
        if p is None or p.done:
          continue
        err = message.error()
        if err is not None:
          self._on_error(p, message, err)
          continue
        offset = message.offset()
        if offset < p.next_offset:
          continue  # fetched before a re-seek; already emitted
        fingerprint = _fingerprint(message)
        if p.verify is not None:
          if self._already_emitted(p, offset, fingerprint):
            p.next_offset = offset + 1
            continue
        if offset >= p.stop_offset:
          self._finish_partition(p)
          continue
        runs.setdefault(key, []).append(message)
        active.add(key)
        p.recent.append((offset, fingerprint))
        p.next_offset = offset + 1
        p.caught_up = False
        if p.next_offset >= p.stop_offset:
          self._finish_partition(p)
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
    now = time.time()
    # While the brokers are unreachable (and for an idle timeout after the
    # last report) no partition counts as idle: no records is no evidence
    # then, and a watermark moving on with the clock would make the records
    # that producers buffered during a broker restart late.
    reachable = now - self._unreachable_at >= self._s['idle_timeout_s']
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
    return out

  def _on_client_error(self, err) -> None:
    """librdkafka's client-level errors (served inside consume())."""
    if err.code() in _UNREACHABLE_CODES:
      self._unreachable_at = time.time()
      self._reverify = True
    if is_recoverable(err):
      self.recoverable_errors.inc()
      self._error_log.log(err)
    else:
      _LOGGER.error('Kafka consumer: %s', err.str())

  def _on_error(self, p: _PartitionState, message, err) -> None:
    code = err.code()
    if code == KafkaError._PARTITION_EOF:
      p.caught_up = True
      if message.offset() >= p.stop_offset:
        # Nothing left below the stop offset (it may lie past the last
        # record: transaction markers or compaction at the log end).
        self._finish_partition(p)
      return
    if code == KafkaError._AUTO_OFFSET_RESET:
      resume = recover_out_of_range(self._consumer, p.topic, p.partition,
                                    p.next_offset, err, self.out_of_range,
                                    self.deleted_offsets)
      if resume == p.next_offset and p.recent and p.verify is None:
        # The offset is still "in the log", but a broker that lost
        # acknowledged writes (a restart without durable storage, an
        # unclean leader election) hands out the lost offsets again to new
        # records.
        resume = self._start_verify(p)
      p.next_offset = resume
      # Not seek(): librdkafka refuses it (_STATE) for a partition whose
      # fetcher stopped on the error; a new assignment restarts it.
      self._reassign()
      return
    if is_recoverable(err):
      # E.g. a broker restart: librdkafka reconnects by itself.
      self.recoverable_errors.inc()
      self._error_log.log(err)
      return
    raise KafkaException(err)

  @staticmethod
  def _start_verify(p: _PartitionState) -> int:
    """Re-read what was read recently and compare: records that match are
    skipped, the first that differs and everything after it are read as
    new (nothing lost, nothing doubled). Returns the offset to read from."""
    p.verify = dict(p.recent)
    p.verify_until = p.next_offset
    return p.recent[0][0]

  def _verify_recent(self) -> None:
    """After the brokers were unreachable: a restarted broker that lost
    records may already have given their offsets to new records (producers
    send what they buffered during the outage), so no fetch ends out of
    range (_on_error) and a fetch position past those offsets would skip
    the new records. Every partition re-reads its recent records and
    compares."""
    self._reverify = False
    moved = False
    for p in self._partitions.values():
      if not p.done and p.recent and p.verify is None:
        p.next_offset = self._start_verify(p)
        moved = True
    if moved:
      self._reassign()

  def _already_emitted(self, p: _PartitionState, offset: int,
                       fingerprint: int) -> bool:
    """While verifying: True for a record emitted before (skip it)."""
    if offset >= p.verify_until:
      p.verify = p.verify_until = None
      return False
    if p.verify.get(offset) == fingerprint:
      return True
    _LOGGER.warning(
        '%s[%d]: the broker\'s record at offset %d is not the one read '
        'before: it lost records that were read and reused their offsets '
        '(e.g. a restart without durable writes). Offsets from %d on are '
        'read again as new records.', p.topic, p.partition, offset, offset)
    self.log_truncations.inc()
    while p.recent and p.recent[-1][0] >= offset:
      p.recent.pop()
    p.verify = p.verify_until = None
    return False

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
    """A run of messages of one partition as timestamped elements.

    Records without a valid event time (None) never move the watermark
    (records.chunk_times); each element's buffer horizon is noted for the
    offset commits.
    """
    s = self._s
    records = records_from_messages(run, p.topic, p.partition)
    mode = s['timestamp_mode']
    if mode == TS_FUNCTION:
      stamps = micros_of(s['timestamp_fn'], records)
    elif mode == TS_PROCESSING_TIME:
      stamps = [Timestamp.of(time.time()).micros] * len(records)
    else:
      stamps = [record_micros(r.timestamp_ms) for r in records]
    self.records.inc(len(records))
    self.bytes.inc(sum(len(r.value or b'') for r in records))
    offsets = [r.offset for r in records]
    if not s['with_metadata']:
      records = [(r.key, r.value) for r in records]
    size = s['max_batch_records']
    windowed = GlobalWindows.windowed_value
    out = []
    step = size if size > 0 else max(1, len(records))
    for i in range(0, len(records), step):
      # Records without a valid time take the partition's watermark: not
      # late, and holding nothing back.
      fallback = p.estimator.current_watermark().micros
      low, high = chunk_times(stamps[i:i + step], fallback)
      if high is not None:
        p.estimator.observe_timestamp(Timestamp(micros=high))
      p.unsettled.append(
          (offsets[i], UNKNOWN_HORIZON if self._horizon is None else
           self._horizon(low if high is None else high)))
      if size > 0:
        out.append(windowed(records[i:i + size],
                            timestamp=Timestamp(micros=low)))
      else:
        out.extend(windowed(r, timestamp=Timestamp(
            micros=fallback if t is None else t))
                   for r, t in zip(records, stamps))
    return out


class _DirectReadFromKafka(beam.PTransform):
  """Native stand-in for ReadFromKafka on the local streaming runner."""

  def __init__(self, settings: dict, *, records_per_call: int,
               call_budget_s: float, commit_interval_s: float):
    super().__init__()
    self.settings = settings
    self.reader = LocalKafkaReader(settings, records_per_call=records_per_call,
                                   call_budget_s=call_budget_s,
                                   commit_interval_s=commit_interval_s)
    weakref.finalize(self, self.reader.close)

  def get_windowing(self, unused_inputs):
    return beam.Windowing(GlobalWindows())

  def expand(self, pbegin):
    # Evaluated natively by _KafkaReadEvaluator.
    return pvalue.PCollection(self.pipeline,
                              is_bounded=self.settings['stop'].is_bounded)


# A hold at or above this (micros) belongs to an element in the GlobalWindow
# (hold = the window's max timestamp - 1 us): its records cannot be located
# in event time, so nothing is committed while one exists.
_GLOBAL_WINDOW_HOLD_US = GlobalWindow().max_timestamp().micros - 10


def _downstream_state(evaluation_context,
                      own_transform) -> tuple[bool, Optional[int]]:
  """What the steps after the read hold: (whether any has input pending or
  timers firing, the earliest watermark hold in micros or None if none).

  A GroupByKey holds its output watermark at each buffered element's output
  time (here the end of its window, minus a microsecond or two), so the
  earliest hold tells which windows may still have unwritten elements.
  Reads the bundle-based runner's watermark manager: pinned to its 2.77
  internals, covered by tests/local_streaming_test.py.
  """
  manager = evaluation_context._watermark_manager  # pylint: disable=protected-access
  earliest = None
  for transform, tw in manager._transform_to_watermarks.items():  # pylint: disable=protected-access
    if transform is own_transform:
      continue
    if tw._pending or tw._fired_timers:  # pylint: disable=protected-access
      return True, None
    for hold in tw._keyed_earliest_holds.values():  # pylint: disable=protected-access
      micros = hold.micros
      if earliest is None or micros < earliest:
        earliest = micros
  if earliest is not None and earliest >= _GLOBAL_WINDOW_HOLD_US:
    earliest = MIN_TIMESTAMP.micros
  return False, earliest


class _KafkaReadEvaluator(_TransformEvaluator):
  """Transform evaluator for _DirectReadFromKafka (cf. _PubSubReadEvaluator)."""

  def __init__(self, evaluation_context, applied_ptransform,
               input_committed_bundle, side_inputs):
    assert not side_inputs
    super().__init__(evaluation_context, applied_ptransform,
                     input_committed_bundle, side_inputs)
    self._reader: LocalKafkaReader = applied_ptransform.transform.reader

  def process_element(self, element):
    pass  # the input is the empty root bundle; all work is in finish_bundle

  def finish_bundle(self) -> TransformResult:
    reader = self._reader
    pending, earliest_hold = _downstream_state(self._evaluation_context,
                                               self._applied_ptransform)
    if not pending:
      # Everything emitted before has been processed by every step; what a
      # windowed sink still holds is above the earliest hold.
      reader.maybe_commit(None if earliest_hold is None else
                          earliest_hold + 1)
    elements = reader.read(wait=not pending)
    bundles = []
    if elements:
      bundle = self._evaluation_context.create_bundle(
          list(self._outputs)[0])
      for wv in elements:
        bundle.output(wv)
      bundles.append(bundle)
    if reader.finished:
      # No more input: the watermark goes to the end of time so every window
      # fires; the final commit happens when the pipeline has drained
      # (LocalStreamingResult.wait_until_finish).
      return TransformResult(self, bundles, [], None, {None: MAX_TIMESTAMP})
    unprocessed = self._evaluation_context.create_bundle(
        pvalue.PBegin(self._applied_ptransform.transform.pipeline))
    return TransformResult(self, bundles, [unprocessed], None,
                           {None: reader.watermark()})


TransformEvaluatorRegistry._test_evaluators_overrides[  # pylint: disable=protected-access
    _DirectReadFromKafka] = _KafkaReadEvaluator


class _ReadFromKafkaOverride(PTransformOverride):

  def __init__(self, **reader_kwargs):
    self._reader_kwargs = reader_kwargs
    self.replaced: list[_DirectReadFromKafka] = []

  def matches(self, applied_ptransform):
    return isinstance(applied_ptransform.transform, ReadFromKafka)

  def get_replacement_transform_for_applied_ptransform(self,
                                                       applied_ptransform):
    replacement = _DirectReadFromKafka(applied_ptransform.transform.settings,
                                       **self._reader_kwargs)
    self.replaced.append(replacement)
    return replacement


class LocalStreamingResult(PipelineResult):
  """The pipeline result, plus a clean stop and the final offset commit."""

  def __init__(self, inner: PipelineResult, reads: list[_DirectReadFromKafka]):
    super().__init__(inner.state)
    self._inner = inner
    self._reads = reads
    self._waiter: Optional[threading.Thread] = None
    self._finished = threading.Event()
    self._outcome: dict = {}

  @property
  def state(self):
    return self._inner.state

  def stop_reading(self) -> None:
    """Ends every Kafka read; windows fire, sinks flush, offsets commit."""
    for read in self._reads:
      read.reader.request_stop()

  def _wait_inner(self) -> None:
    try:
      self._outcome['state'] = self._inner.wait_until_finish()
    except:  # pylint: disable=bare-except
      # Bare: librdkafka can raise KafkaError objects (not exceptions).
      error = sys.exc_info()[1]
      self._outcome['error'] = (error if isinstance(error, BaseException)
                                else RuntimeError(str(error)))
    finally:
      self._finished.set()

  def wait_until_finish(self, duration=None):
    """Waits for the pipeline; on success commits what was read.

    The runner's own wait shuts its executor down when an exception such as
    KeyboardInterrupt reaches it, killing the pipeline mid-stream. It runs
    on a thread of its own here, so Ctrl-C or SIGTERM only interrupts the
    caller, who can call stop_reading() and wait again for a clean drain.
    """
    if self._waiter is None:
      self._waiter = threading.Thread(target=self._wait_inner,
                                      name='local-streaming-wait',
                                      daemon=True)
      self._waiter.start()
    deadline = None if duration is None else time.monotonic() + duration
    while not self._finished.wait(0.5):
      if deadline is not None and time.monotonic() >= deadline:
        return self.state
    if 'error' in self._outcome:
      self._close()
      raise self._outcome['error']
    state = self._outcome['state']
    if state == PipelineState.DONE:
      # Everything read has been processed by every step: commit it all.
      for read in self._reads:
        read.reader.commit()
    self._close()
    return state

  def _close(self):
    for read in self._reads:
      read.reader.close()

  def cancel(self):
    state = self._inner.cancel()
    self._close()
    return state

  def metrics(self):
    return self._inner.metrics()


class _PerTaskSamplerWorker(
    direct_executor._ExecutorService._ExecutorServiceWorker):  # pylint: disable=protected-access
  """An executor worker thread with a fresh state sampler per task.

  Works around a bug in Beam 2.77's bundle-based runner: its worker keeps one
  StateSampler, which caches a ScopedState per step name together with the
  MetricsContainer of the *first* bundle of that step. Later bundles update
  that stale container while the runner commits their own, empty, one: user
  metrics stop counting after a step's first bundle. A sampler per task binds
  each bundle's updates to the container the runner commits.
  """

  def run(self):
    while not self.shutdown_requested:
      task = self._get_task_or_none()
      if not task:
        continue
      try:
        if not self.shutdown_requested:
          sampler = statesampler.StateSampler('', counters.CounterFactory())
          statesampler.set_current_tracker(sampler)
          self._update_name(task)
          task.call(sampler)
          self._update_name()
      finally:
        self.queue.task_done()


_WORKER_SWAP_LOCK = threading.Lock()


def _install_signature_cache() -> None:
  """Memoizes Beam's DoFn method introspection (process-wide, idempotent).

  The bundle-based runner unpickles each step's DoFn for every bundle and
  then introspects it again: ``is_stateful_dofn`` / ``get_dofn_specs`` walk
  every method and build an ``inspect.signature`` for each, and so does the
  DoFnRunner. Measured at 1,000 events/s, that was ~45% of the job's CPU and
  most of the time a record waits between steps. The result depends only on
  the function, so it is cached per function object: methods of DoFn
  classes (unpickled by reference) hit the cache; functions recreated by
  each unpickle (lambdas) miss it and drop out with their DoFn (weak keys).
  """
  original = beam_core.get_function_args_defaults
  if getattr(original, '_kbi_cached', False):
    return
  cache: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
  lock = threading.Lock()

  def cached(f):
    func = getattr(f, '__func__', None)
    bound = func is not None and getattr(f, '__self__', None) is not None
    key = func if bound else f
    if not isinstance(key, types.FunctionType):
      return original(f)  # partials, callable objects: may carry state
    with lock:
      hit = cache.get(key)
    if hit is None or hit[0] != bound:
      args, defaults = original(f)
      hit = (bound, tuple(args), tuple(defaults))
      with lock:
        cache[key] = hit
    # Fresh lists: callers may modify what they get.
    return list(hit[1]), list(hit[2])

  cached._kbi_cached = True  # pylint: disable=protected-access
  beam_core.get_function_args_defaults = cached

  # get_dofn_specs also walks dir(dofn). Its result is fixed by the DoFn's
  # class unless the instance carries methods of its own (then: no cache).
  original_specs = userstate.get_dofn_specs
  specs_cache: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()

  def cached_specs(dofn):
    if any(isinstance(v, types.MethodType)
           for v in getattr(dofn, '__dict__', {}).values()):
      return original_specs(dofn)
    cls = type(dofn)
    with lock:
      hit = specs_cache.get(cls)
    if hit is None:
      hit = original_specs(dofn)
      with lock:
        specs_cache[cls] = hit
    return set(hit[0]), set(hit[1])

  userstate.get_dofn_specs = cached_specs
  direct_evaluators.get_dofn_specs = cached_specs


@contextlib.contextmanager
def _per_task_sampler_workers():
  """Makes executors built inside the block use _PerTaskSamplerWorker."""
  service = direct_executor._ExecutorService  # pylint: disable=protected-access
  with _WORKER_SWAP_LOCK:
    original = service._ExecutorServiceWorker  # pylint: disable=protected-access
    service._ExecutorServiceWorker = _PerTaskSamplerWorker  # pylint: disable=protected-access
    try:
      yield
    finally:
      service._ExecutorServiceWorker = original  # pylint: disable=protected-access


_STREAMING_GBK_OVERRIDES = ('StreamingGroupByKeyOverride',
                            'StreamingGroupAlsoByWindowOverride')


def _apply_overrides_in_working_order(pipeline, options) -> None:
  """Applies the bundle-based runner's own overrides, streaming ones last.

  Works around a Beam 2.77 bug: in streaming mode the runner applies its
  streaming GroupByKey overrides before overrides that add GroupByKeys of
  their own (CombinePerKey lifting in the global window, splittable DoFn
  expansion), and pipeline construction fails with "... _GroupByKeyOnly was
  not replaced as expected". Applied in this order first, the runner's own
  pass afterwards finds nothing left to replace.
  """
  overrides = direct_runner._get_transform_overrides(options)  # pylint: disable=protected-access
  last = [o for o in overrides
          if type(o).__name__ in _STREAMING_GBK_OVERRIDES]
  pipeline.replace_all([o for o in overrides if o not in last] + last)


class LocalStreamingRunner(BundleBasedDirectRunner):
  """Beam's bundle-based DirectRunner with ReadFromKafka read natively.

  The runner itself is Beam's; this adds one override and its evaluator, as
  Beam does for Pub/Sub. Use it for ``--streaming`` pipelines locally when
  Prism is not available (beam_jobs.runner_selection picks it).
  """

  def __init__(self, *, records_per_call: int = DEFAULT_RECORDS_PER_CALL,
               call_budget_s: float = DEFAULT_CALL_BUDGET_S,
               commit_interval_s: float = DEFAULT_COMMIT_INTERVAL_S):
    super().__init__()
    self._reader_kwargs = dict(records_per_call=records_per_call,
                               call_budget_s=call_budget_s,
                               commit_interval_s=commit_interval_s)

  def run_pipeline(self, pipeline, options):
    # The bundle-based runner only fires event-time windows in streaming mode.
    options.view_as(StandardOptions).streaming = True
    override = _ReadFromKafkaOverride(**self._reader_kwargs)
    pipeline.replace_all([override])
    _apply_overrides_in_working_order(pipeline, options)
    _install_signature_cache()
    with _per_task_sampler_workers():
      result = super().run_pipeline(pipeline, options)
    return LocalStreamingResult(result, override.replaced)


__all__ = ['LocalStreamingRunner', 'LocalStreamingResult']
