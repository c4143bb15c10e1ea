"""The tail's skip-ahead when it falls behind (beam_jobs/status/tail.py),
with a stand-in consumer; the real consumer is in status_page_it_test."""

from confluent_kafka import TopicPartition

from beam_jobs.status import tail
from beam_jobs.status.aggregate import Aggregates


class _Consumer:

  def __init__(self, positions, high):
    self.positions = dict(positions)
    self.high = high
    self.seeks = []

  def assignment(self):
    return [TopicPartition(t, p) for t, p in self.positions]

  def position(self, tps):
    return [TopicPartition(tp.topic, tp.partition,
                           self.positions[(tp.topic, tp.partition)])
            for tp in tps]

  def get_watermark_offsets(self, tp, cached=True):
    del cached
    return 0, self.high

  def seek(self, tp):
    self.seeks.append((tp.topic, tp.partition, tp.offset))
    self.positions[(tp.topic, tp.partition)] = tp.offset


def _tail(consumer, backfill, max_behind):
  t = tail.TopicTail({}, output_topics=['out'], dead_letter_topics=[],
                     control_topic='ctl', aggregates=Aggregates(
                         buckets=2, bucket_s=1.0),
                     deployments=tail.Deployments(),
                     backfill_records=backfill, history_s=60,
                     max_behind=max_behind)
  t._consumer = consumer  # pylint: disable=protected-access
  return t


def test_a_partition_too_far_behind_skips_forward_and_counts_it():
  consumer = _Consumer({('out', 0): 100, ('out', 1): 990_000,
                        ('ctl', 0): 5}, high=1_000_000)
  t = _tail(consumer, backfill=10_000, max_behind=200_000)
  t._check_behind()  # pylint: disable=protected-access
  # Only out/0 (999,900 behind); the control topic is never skipped.
  assert consumer.seeks == [('out', 0, 990_000)]
  assert t.skipped == 990_000 - 100
  assert t.behind == 10_000 + 10_000 + (1_000_000 - 5)


def test_a_backfill_larger_than_max_behind_never_seeks_backwards():
  consumer = _Consumer({('out', 0): 100}, high=1_000_000)
  t = _tail(consumer, backfill=5_000_000, max_behind=200_000)
  t._check_behind()  # pylint: disable=protected-access
  assert consumer.seeks == [('out', 0, 900_000)]
  assert t.skipped == 899_900
