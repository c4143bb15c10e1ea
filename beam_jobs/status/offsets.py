"""Offset samples: log ends per topic and the job's committed offsets.

Throughput and lag come from offsets, not from reading records: a sample
is one end-offset request per partition and one committed-offsets request
for the group, whatever the topics hold. Records in over time is the input
topic's end moving; records the job consumed, its committed offsets moving;
out, the output and dead-letter topics' ends.
"""

import time
from typing import Sequence

from confluent_kafka import Consumer, TopicPartition

from beam_jobs import lag as lag_lib
from beam_jobs.status.aggregate import OffsetSample
from transforms.kafka import admin, client_logs, config_refs


def discover_input_topics(client_config: dict, group: str,
                          timeout_s: float) -> list[str]:
  """The topics ``group`` has committed offsets for (beam_jobs.lag's)."""
  return lag_lib.group_topics(client_config, group, timeout_s)


class OffsetSampler:
  """Takes OffsetSamples with one long-lived consumer of ``group`` that
  never subscribes nor commits (it only reads the group's offsets)."""

  def __init__(self, client_config: dict, *, group: str,
               input_topics: Sequence[str], other_topics: Sequence[str],
               timeout_s: float = 10.0):
    self._inputs = list(input_topics)
    self._topics = list(dict.fromkeys(list(input_topics) +
                                      list(other_topics)))
    cfg = client_logs.route(config_refs.resolve(client_config))
    cfg.update({'group.id': group, 'enable.auto.commit': False})
    self._consumer = Consumer(cfg)
    self._timeout_s = timeout_s
    self._partitions = self._list_partitions()

  def _list_partitions(self) -> dict:
    meta = self._consumer.list_topics(timeout=self._timeout_s)
    missing = [t for t in self._topics if t not in meta.topics
               or meta.topics[t].error is not None]
    if missing:
      raise admin.TopicNotFoundError(f'unknown topic(s) {", ".join(missing)}')
    return {t: sorted(meta.topics[t].partitions) for t in self._topics}

  def sample(self) -> OffsetSample:
    """Log ends of every topic, committed offsets on the input topics."""
    now = time.time()
    ends = {}
    for topic, parts in self._partitions.items():
      ends[topic] = {
          p: self._consumer.get_watermark_offsets(
              TopicPartition(topic, p), timeout=self._timeout_s,
              cached=False)[1] for p in parts}
    committed = {}
    if self._inputs:
      tps = [TopicPartition(t, p) for t in self._inputs
             for p in self._partitions[t]]
      for tp in self._consumer.committed(tps, timeout=self._timeout_s):
        committed.setdefault(tp.topic, {})[tp.partition] = (
            tp.offset if tp.offset >= 0 else None)
    return OffsetSample(time=now, ends=ends, committed=committed)

  def close(self) -> None:
    self._consumer.close()
