"""Tails the topics the jobs write: predictions, dead letters, control.

One consumer, assigned (never subscribed: it joins no group and commits
nothing) to every partition of the output, dead-letter and control topics.
It starts from a bounded recent window: on each output and dead-letter
partition at ``max(end - backfill_records, first offset at or after now -
history_s)``, so a 1M-record topic costs at most ``backfill_records`` per
partition at start, never a whole reread; the control topic (compacted,
one record per deployment) is read from its start. From then on it reads
what is appended. When it falls more than ``max_behind`` records behind
on a partition it skips ahead to ``end - min(backfill_records,
max_behind / 2)`` and counts
what it skipped: the charts become a sample, the throughput figures (from
offsets, offsets.py) stay exact.

Its fetch queue is capped (``queued.max.messages.kbytes``) so a burst on
the topics does not grow the page's memory.
"""

import logging
import threading
import time
from typing import Optional, Sequence

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError,
                             TopicPartition)

from beam_jobs.status import decode
from beam_jobs.status.aggregate import Aggregates
from transforms.kafka import client_logs, config_refs

_LOGGER = logging.getLogger(__name__)

# librdkafka's prefetch per consumer, in KB (its default is 64 MB).
QUEUE_KBYTES = 16384
# One fetch response at most (a broker that ignores it, like noida, sends
# ~100 MB answers: docs/brokers.md).
FETCH_MAX_BYTES = 8 << 20
BATCH = 1000
_BEHIND_CHECK_S = 5.0
MAX_DEPLOYMENTS = 1000


class Deployments:
  """The latest control record per key (thread-safe, at most
  ``MAX_DEPLOYMENTS`` keys)."""

  def __init__(self):
    self._latest: dict = {}
    self._lock = threading.Lock()

  def put(self, key: str, record, when: float) -> None:
    with self._lock:
      if record is None:
        self._latest.pop(key, None)  # a tombstone: the deployment is gone
      elif key in self._latest or len(self._latest) < MAX_DEPLOYMENTS:
        self._latest[key] = {'record': record, 'time': when}

  def latest(self) -> dict:
    with self._lock:
      return dict(self._latest)


class TopicTail:
  """Reads the job topics into ``aggregates`` and ``deployments``.

  ``poll()`` reads one batch; ``run_forever()`` loops until ``stop()``;
  ``caught_up()`` tells whether every partition reached the end it had
  when the tail started (for ``--once``).
  """

  def __init__(self, client_config: dict, *, output_topics: Sequence[str],
               dead_letter_topics: Sequence[str],
               control_topic: Optional[str], aggregates: Aggregates,
               deployments: Deployments, backfill_records: int,
               history_s: float, max_behind: int, timeout_s: float = 30.0):
    self._config = client_config
    self._outputs = set(output_topics)
    self._dead = set(dead_letter_topics)
    self._control = control_topic
    self._aggregates = aggregates
    self._deployments = deployments
    self._backfill = backfill_records
    self._history_s = history_s
    self._max_behind = max_behind
    self._timeout_s = timeout_s
    self._stop = threading.Event()
    self._consumer = None
    self._start_ends: dict = {}   # (topic, partition) -> end at start
    self._last_check = 0.0
    self.read = 0
    self.unreadable = 0
    self.skipped = 0
    self.behind = 0

  def _consumer_config(self) -> dict:
    cfg = client_logs.route(config_refs.resolve(self._config))
    cfg.update({'group.id': 'kbi-status-tail', 'enable.auto.commit': False,
                'enable.auto.offset.store': False,
                'queued.max.messages.kbytes': QUEUE_KBYTES,
                'fetch.max.bytes': FETCH_MAX_BYTES,
                'max.partition.fetch.bytes': FETCH_MAX_BYTES // 4})
    return cfg

  def open(self) -> None:
    """Creates the consumer and assigns the start offsets."""
    consumer = Consumer(self._consumer_config())
    topics = sorted(self._outputs | self._dead) + (
        [self._control] if self._control else [])
    meta = consumer.list_topics(timeout=self._timeout_s)
    missing = [t for t in topics if t not in meta.topics
               or meta.topics[t].error is not None]
    if missing:
      consumer.close()
      raise LookupError(f'unknown topic(s) {", ".join(missing)}')
    since_ms = int((time.time() - self._history_s) * 1000)
    assign = []
    for topic in topics:
      tps = [TopicPartition(topic, p) for p in
             sorted(meta.topics[topic].partitions)]
      if topic == self._control:
        assign += [TopicPartition(topic, tp.partition, OFFSET_BEGINNING)
                   for tp in tps]
        continue
      by_time = consumer.offsets_for_times(
          [TopicPartition(topic, tp.partition, since_ms) for tp in tps],
          timeout=self._timeout_s)
      for tp, timed in zip(tps, by_time):
        low, high = consumer.get_watermark_offsets(
            tp, timeout=self._timeout_s, cached=False)
        # No record since then: offsets_for_times says -1 (the end).
        since = high if timed.offset < 0 else timed.offset
        start = max(low, high - self._backfill, min(since, high))
        if start < high:
          self._start_ends[(topic, tp.partition)] = high
        assign.append(TopicPartition(topic, tp.partition, start))
    consumer.assign(assign)
    self._consumer = consumer
    _LOGGER.info('tailing %s', ', '.join(
        f'{tp.topic}/{tp.partition}@{tp.offset}' for tp in assign))

  def poll(self, timeout_s: float = 0.5) -> int:
    """Reads and counts one batch; returns its size."""
    messages = self._consumer.consume(num_messages=BATCH, timeout=timeout_s)
    now = time.time()
    outputs, letters = [], []
    for m in messages:
      err = m.error()
      if err is not None:
        if err.code() != KafkaError._PARTITION_EOF:  # pylint: disable=protected-access
          _LOGGER.warning('reading %s: %s', m.topic(), err)
        continue
      topic = m.topic()
      if topic in self._outputs:
        outputs.append(m.value())
      elif topic in self._dead:
        letters.append(decode.dead_letter(m, now))
      else:
        key = decode.text(m.key(), 200) if m.key() is not None else ''
        self._deployments.put(key, decode.control_record(m.value()), now)
      where = (topic, m.partition())
      if m.offset() + 1 >= self._start_ends.get(where, m.offset() + 2):
        del self._start_ends[where]
    if outputs:
      columns, bad = decode.predictions(outputs)
      self.unreadable += bad
      self._aggregates.add_predictions(columns)
    self._aggregates.add_dead_letters(letters)
    self.read += len(messages)
    if now - self._last_check >= _BEHIND_CHECK_S:
      self._last_check = now
      self._check_behind()
    return len(messages)

  def _check_behind(self) -> None:
    """Skips ahead on partitions too far behind (module docstring)."""
    behind = 0
    assignment = self._consumer.assignment()
    for tp in self._consumer.position(assignment):
      if tp.offset < 0:
        continue
      _, high = self._consumer.get_watermark_offsets(tp, cached=True)
      gap = high - tp.offset
      if tp.topic != self._control and gap > self._max_behind:
        # Forward only, and to well within --max_behind of the end.
        target = high - min(self._backfill, self._max_behind // 2)
        self.skipped += target - tp.offset
        _LOGGER.info('%s/%d: %d records behind; skipping %d', tp.topic,
                     tp.partition, gap, target - tp.offset)
        self._consumer.seek(TopicPartition(tp.topic, tp.partition, target))
        self._start_ends.pop((tp.topic, tp.partition), None)
        gap = high - target
      behind += max(0, gap)
    self.behind = behind

  def caught_up(self) -> bool:
    """Every partition has reached the end it had at ``open()``."""
    if self._start_ends:
      # Partitions that were empty past their start need no record.
      for tp in self._consumer.position(
          [TopicPartition(t, p) for t, p in self._start_ends]):
        if tp.offset >= self._start_ends.get((tp.topic, tp.partition), 0):
          self._start_ends.pop((tp.topic, tp.partition), None)
    return not self._start_ends

  def run_forever(self) -> None:
    while not self._stop.is_set():
      try:
        self.poll()
      except Exception:  # pylint: disable=broad-except
        # The page stays up through a broker hiccup; the log says why.
        _LOGGER.exception('tailing the job topics failed; retrying')
        self._stop.wait(2.0)

  def stop(self) -> None:
    self._stop.set()

  def close(self) -> None:
    if self._consumer is not None:
      self._consumer.close()
      self._consumer = None

  def stats(self) -> dict:
    return {'records_read': self.read, 'unreadable': self.unreadable,
            'skipped': self.skipped, 'behind': self.behind}
