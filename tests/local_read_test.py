"""The local streaming read (transforms/kafka/local_read.py), no broker.

The reader is given its partitions and a fake consumer that hands out
prepared batches of messages (confluent_kafka.Message's constructor), so
the read loop, the commit bookkeeping and the data-loss checks run as they
do against a broker. tests/local_streaming_it_test.py runs it for real.
"""

import pytest
from apache_beam.utils.timestamp import Timestamp
from confluent_kafka import KafkaError, KafkaException, Message

from transforms.kafka import ReadFromKafka
from transforms.kafka.background_commits import BackgroundCommits
from transforms.kafka.local_read import (UNKNOWN_HORIZON, LocalKafkaReader,
                                         LocalReadTuning, _PartitionState)
from transforms.kafka.offsets import UNBOUNDED, PartitionRange

CONFIG = {'bootstrap.servers': 'unused.invalid:1', 'group.id': 'g'}
T0_MS = 1_700_000_000_000


def _msg(partition, offset, value=None, ts_ms=None):
  return Message(topic='t', partition=partition, offset=offset,
                 value=value if value is not None else b'v%d' % offset,
                 timestamp=(1, T0_MS + offset if ts_ms is None else ts_ms))


def _event(code, partition, offset):
  return Message(topic='t', partition=partition, offset=offset,
                 error=KafkaError(code))


class _FakeConsumer:
  """Hands out the prepared batches, one per consume() call."""

  def __init__(self, *batches, log=(0, 10**9)):
    self.batches = [list(b) for b in batches]
    self.assigned = []
    self.paused = []
    self.log = log

  def consume(self, num_messages, timeout):
    return self.batches.pop(0) if self.batches else []

  def poll(self, timeout):
    return None

  def assign(self, tps):
    self.assigned.append({(tp.topic, tp.partition): tp.offset for tp in tps})

  def pause(self, tps):
    self.paused.extend((tp.topic, tp.partition) for tp in tps)

  def get_watermark_offsets(self, tp, timeout, cached):
    return self.log


class _FakeCommitter:

  def __init__(self):
    self.commits = []

  def commit(self, offsets):
    self.commits.append(dict(offsets))


def _reader(consumer, ranges, *, horizon=None, tuning=LocalReadTuning(),
            **read_kwargs) -> LocalKafkaReader:
  """A reader positioned on ``ranges`` (partition -> (start, stop)) as if
  started against a broker."""
  read_kwargs.setdefault('max_batch_records', 2)
  settings = ReadFromKafka(CONFIG, 't', start='earliest', idle_timeout_s=60,
                           buffer_horizon=horizon, **read_kwargs).settings
  reader = LocalKafkaReader(settings, tuning)
  reader._consumer = consumer  # pylint: disable=protected-access
  reader._committer = _FakeCommitter()  # pylint: disable=protected-access
  reader._commits = BackgroundCommits(reader._committer)  # pylint: disable=protected-access
  for partition, (start, stop) in ranges.items():
    state = _PartitionState(PartitionRange('t', partition, start, stop),
                            settings.max_delay_s, settings.idle_timeout_s,
                            reader.log_truncations)
    reader._partitions[state.key] = state  # pylint: disable=protected-access
  reader._started = True  # pylint: disable=protected-access
  return reader


def _values(elements):
  return [[r.value for r in wv.value] for wv in elements]


def _state(reader, partition) -> _PartitionState:
  return reader._partitions[('t', partition)]  # pylint: disable=protected-access


def test_reads_chunks_per_partition_and_notes_them_for_commits():
  consumer = _FakeConsumer([
      _msg(0, 0), _msg(1, 0), _msg(0, 1), _msg(0, 2),
      _event(KafkaError._PARTITION_EOF, 1, 1)])
  reader = _reader(consumer, {0: (0, UNBOUNDED), 1: (0, UNBOUNDED)},
                   horizon=lambda t_us: t_us + 10)
  out = reader.read()
  assert _values(out) == [[b'v0', b'v1'], [b'v2'], [b'v0']]
  # Each chunk carries its earliest record time.
  assert [wv.timestamp for wv in out] == [
      Timestamp(micros=T0_MS * 1000), Timestamp(micros=(T0_MS + 2) * 1000),
      Timestamp(micros=T0_MS * 1000)]
  # (first offset, horizon of the chunk's latest record time) per chunk.
  assert list(_state(reader, 0).unsettled) == [
      (0, (T0_MS + 1) * 1000 + 10), (2, (T0_MS + 2) * 1000 + 10)]
  assert _state(reader, 1).caught_up and not _state(reader, 0).caught_up
  assert reader.watermark() == Timestamp(micros=T0_MS * 1000)


def test_commits_stop_at_the_first_element_a_sink_may_hold():
  consumer = _FakeConsumer([_msg(0, i) for i in range(5)])
  reader = _reader(consumer, {0: (0, UNBOUNDED)},
                   horizon=lambda t_us: t_us // 1000 - T0_MS)
  reader.read()
  # Chunks [0, 1], [2, 3], [4] with horizons 1, 3, 4.
  committed = reader._committer.commits  # pylint: disable=protected-access
  reader.commit(safe_us=0)
  assert committed == []  # nothing settled: nothing past offset 0
  reader.commit(safe_us=3)
  assert committed == [{('t', 0): 4}]
  reader.commit(safe_us=3)
  assert len(committed) == 1  # the same offset is not committed twice
  reader.commit()  # drained: everything read
  assert committed[-1] == {('t', 0): 5}


def test_without_a_horizon_only_a_drained_pipeline_commits():
  reader = _reader(_FakeConsumer([_msg(0, 0), _msg(0, 1), _msg(0, 2)]),
                   {0: (0, UNBOUNDED)})
  reader.read()
  assert {e[1] for e in _state(reader, 0).unsettled} == {UNKNOWN_HORIZON}
  reader.commit(safe_us=2**62)
  assert reader._committer.commits == []  # pylint: disable=protected-access
  reader.commit()
  assert reader._committer.commits == [{('t', 0): 3}]  # pylint: disable=protected-access


def test_records_below_the_position_or_past_the_stop_are_not_emitted():
  consumer = _FakeConsumer(
      [_msg(0, 3), _msg(0, 4), _msg(0, 5), _msg(0, 6), _msg(0, 7)])
  reader = _reader(consumer, {0: (4, 7)})
  out = reader.read()
  assert _values(out) == [[b'v4', b'v5'], [b'v6']]
  assert reader.finished and consumer.paused == [('t', 0)]
  # Finished: the watermark goes to the end, nothing more is read.
  assert reader.read() == []


def test_an_end_of_partition_at_the_stop_finishes_the_partition():
  consumer = _FakeConsumer([_msg(0, 0), _event(KafkaError._PARTITION_EOF, 0,
                                                 3)])
  # Offsets 1 and 2 are transaction markers: the log ends at 3.
  reader = _reader(consumer, {0: (0, 3)})
  assert _values(reader.read()) == [[b'v0']]
  assert reader.finished


def test_total_records_stop_is_exact_and_only_what_was_emitted_commits():
  consumer = _FakeConsumer([_msg(0, 0), _msg(1, 0), _msg(0, 1), _msg(1, 1),
                            _msg(0, 2)])
  reader = _reader(consumer, {0: (0, UNBOUNDED), 1: (0, UNBOUNDED)})
  reader._remaining = 3  # pylint: disable=protected-access
  out = reader.read()
  assert sum(len(wv.value) for wv in out) == 3
  assert reader.finished
  # Counted per partition's run of the fetch: partition 0 took all three.
  # Only what was emitted is committed (nothing of partition 1).
  reader.commit()
  assert reader._committer.commits == [{('t', 0): 3}]  # pylint: disable=protected-access
  assert _state(reader, 1).next_offset == 0


def test_a_fatal_consumer_error_fails_the_read():
  consumer = _FakeConsumer([_event(KafkaError.TOPIC_AUTHORIZATION_FAILED, 0,
                                   0)])
  reader = _reader(consumer, {0: (0, UNBOUNDED)})
  with pytest.raises(KafkaException):
    reader.read()


def test_a_broker_that_lost_records_is_read_again_without_loss_or_doubles():
  # Read offsets 0-3; the broker then loses 2 and 3 and gives offset 2 to
  # a new record ('new'): an out-of-range answer for offset 4.
  consumer = _FakeConsumer(
      [_msg(0, i) for i in range(4)],
      [_event(KafkaError._AUTO_OFFSET_RESET, 0, 4)],
      # The reader rewinds to its recent records and compares.
      [_msg(0, 0), _msg(0, 1), _msg(0, 2, value=b'new')], log=(0, 3))
  reader = _reader(consumer, {0: (0, UNBOUNDED)}, max_batch_records=0,
                   tuning=LocalReadTuning(call_budget_s=0))
  assert [wv.value.value for wv in reader.read()] == [b'v0', b'v1', b'v2',
                                                      b'v3']
  assert reader.read() == []
  assert consumer.assigned[-1] == {('t', 0): 0}  # rewound
  # 0 and 1 are the records read before: skipped. 2 is new: read.
  assert [wv.value.value for wv in reader.read()] == [b'new']
  assert _state(reader, 0).verify is None
  assert _state(reader, 0).next_offset == 3


def test_the_watermark_reported_advances_in_steps_and_never_back():
  batches = [[_msg(0, 0, ts_ms=T0_MS)], [_msg(0, 1, ts_ms=T0_MS + 50)],
             [_msg(0, 2, ts_ms=T0_MS + 150)], [_msg(0, 3, ts_ms=T0_MS + 20)],
             [_msg(0, 4, ts_ms=T0_MS + 260)]]
  marks = {}
  for step in (0.0, 0.1):
    consumer = _FakeConsumer()
    reader = _reader(consumer, {0: (0, UNBOUNDED)},
                     tuning=LocalReadTuning(watermark_step_s=step),
                     max_delay_s=0)
    marks[step] = []
    for batch in batches:
      consumer.batches.append(batch)  # one batch per read
      reader.read()
      marks[step].append(reader.watermark().micros // 1000 - T0_MS)
  # Every read's own watermark, then the same held back to steps of 100 ms.
  assert marks[0.0] == [0, 50, 150, 150, 260]
  assert marks[0.1] == [0, 0, 150, 150, 260]
  with pytest.raises(ValueError, match='watermark_step_s'):
    LocalReadTuning(watermark_step_s=-1)
