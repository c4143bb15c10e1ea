"""Effectively-once output: skip events whose id was already scored.

The scoring job is at-least-once: after a crash it re-reads from the last
committed offsets, so events whose predictions were written but whose
offsets were not yet committed are scored again. ``DropScoredEvents`` removes
them before scoring:

* across restarts, the truth is the output topic itself: predictions are
  keyed by event id, so at start-up each worker process reads the keys of
  the predictions written in the last ``horizon_s`` seconds (via
  offsets_for_times, else from the beginning) and skips those ids;
* within a run, the ids it lets through are remembered for ``horizon_s``.

An id is only skipped if its prediction was durably written (read back from
the output topic) or passed this step earlier in the same process; a crash
between the two forgets the latter, so nothing is lost. Duplicates older
than the horizon are not caught: choose a horizon longer than the longest
restart plus the commit interval. Skipped events are counted
(``dedup/duplicates_skipped``), not dead-lettered: they were scored.
"""

import logging
import threading
import time
from typing import Iterable, Mapping, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from confluent_kafka import Consumer, KafkaError, TopicPartition

from transforms.events import EventBatch
from transforms.kafka import admin
from transforms.kafka import client_logs, config_refs

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'dedup'


class SeenIds:
  """Event ids with the time they were seen, forgetting after a horizon."""

  def __init__(self, horizon_s: float):
    self._horizon_s = horizon_s
    self._seen: dict[str, float] = {}
    self._lock = threading.Lock()
    self._next_expiry = 0.0

  def __len__(self) -> int:
    return len(self._seen)

  def add_all(self, ids: Iterable[str], now: float) -> None:
    with self._lock:
      for event_id in ids:
        self._seen.setdefault(event_id, now)

  def keep_new(self, ids: list, now: float) -> np.ndarray:
    """A mask of the ids not seen before (first occurrence in ``ids``
    included); remembers them."""
    with self._lock:
      self._expire(now)
      seen = self._seen
      mask = np.ones(len(ids), dtype=bool)
      for i, event_id in enumerate(ids):
        if event_id in seen:
          mask[i] = False
        else:
          seen[event_id] = now
      return mask

  def _expire(self, now: float) -> None:
    if now < self._next_expiry:
      return
    cutoff = now - self._horizon_s
    self._seen = {k: t for k, t in self._seen.items() if t >= cutoff}
    # Expire at most every tenth of the horizon: a full scan is O(n).
    self._next_expiry = now + max(1.0, self._horizon_s / 10)


def read_recent_keys(consumer_config: Mapping, topic: str, since_s: float,
                     *, timeout_s: float = 60.0) -> set[str]:
  """Keys of the records of ``topic`` written at or after ``since_s``
  (epoch seconds), read up to the end offsets seen at the start."""
  consumer_config = config_refs.resolve(consumer_config)
  cfg = client_logs.route(consumer_config)
  cfg.update({'group.id': f'kbi-dedup-seed-{topic}',
              'enable.auto.commit': False, 'enable.partition.eof': True})
  partitions = admin.topic_partitions(consumer_config, [topic], timeout_s)
  consumer = Consumer(cfg)
  keys: set[str] = set()
  try:
    tps = [TopicPartition(t, p, int(since_s * 1000)) for t, p in partitions]
    starts = consumer.offsets_for_times(tps, timeout=timeout_s)
    ends = {}
    assign = []
    for tp in starts:
      low, high = consumer.get_watermark_offsets(
          TopicPartition(tp.topic, tp.partition), timeout=timeout_s,
          cached=False)
      # -1: nothing at or after the time; a broker without timestamp
      # lookups answers 0: then everything is read (more work, same result).
      start = tp.offset if tp.offset >= 0 else high
      if start < high:
        ends[tp.partition] = high
        assign.append(TopicPartition(topic, tp.partition, max(start, low)))
    if not assign:
      return keys
    consumer.assign(assign)
    deadline = time.monotonic() + timeout_s
    while ends and time.monotonic() < deadline:
      for m in consumer.consume(num_messages=1000, timeout=0.5):
        err = m.error()
        if err is not None:
          if err.code() == KafkaError._PARTITION_EOF:
            ends.pop(m.partition(), None)
          continue
        if m.key() is not None:
          keys.add(m.key().decode('utf-8', 'replace'))
        if m.offset() + 1 >= ends.get(m.partition(), 0):
          ends.pop(m.partition(), None)
  finally:
    consumer.close()
  return keys


_REGISTRY: dict = {}
_REGISTRY_LOCK = threading.Lock()


def seen_ids_for(consumer_config: Mapping, topic: str,
                 horizon_s: float) -> SeenIds:
  """The process-wide SeenIds of an output topic, seeded once from it."""
  key = (consumer_config.get('bootstrap.servers'), topic, horizon_s)
  with _REGISTRY_LOCK:
    seen = _REGISTRY.get(key)
    if seen is None:
      now = time.time()
      seen = SeenIds(horizon_s)
      seed = read_recent_keys(consumer_config, topic, now - horizon_s)
      seen.add_all(seed, now)
      _LOGGER.info('dedup: %d event ids already scored in %s within %.0fs',
                   len(seed), topic, horizon_s)
      _REGISTRY[key] = seen
    return seen


class _DropScoredEventsFn(beam.DoFn):

  def __init__(self, consumer_config: Mapping, output_topic: str,
               horizon_s: float):
    self._config = dict(consumer_config)
    self._topic = output_topic
    self._horizon_s = horizon_s
    self._seen: Optional[SeenIds] = None
    self.skipped = Metrics.counter(_NAMESPACE, 'duplicates_skipped')

  def setup(self):
    self._seen = seen_ids_for(self._config, self._topic, self._horizon_s)

  def process(self, batch: EventBatch):
    mask = self._seen.keep_new(batch.ids, time.time())
    if mask.all():
      yield batch
      return
    self.skipped.inc(int((~mask).sum()))
    if mask.any():
      yield beam.window.TimestampedValue(batch.take(mask),
                                         batch.take(mask).min_time())


class DropScoredEvents(beam.PTransform):
  """EventBatch -> EventBatch without events already scored (see module)."""

  def __init__(self, consumer_config: Mapping, output_topic: str,
               horizon_s: float):
    super().__init__()
    if horizon_s <= 0:
      raise ValueError(f'dedup horizon must be > 0 s, got {horizon_s}')
    self._fn = _DropScoredEventsFn(consumer_config, output_topic, horizon_s)

  def expand(self, pcoll):
    return pcoll | 'DropScoredEvents' >> beam.ParDo(
        self._fn).with_output_types(EventBatch)
