"""What both Kafka readers share (transforms/kafka/reader_core.py), no broker.

Messages are built with confluent_kafka.Message's constructor; consumers are
fakes that hand out prepared batches.
"""

import dataclasses
import logging

import pytest
from apache_beam.utils.timestamp import Timestamp
from confluent_kafka import KafkaError, KafkaException, Message

from transforms.kafka import KafkaRecord, ReadFromKafka, StopAt
from transforms.kafka.reader_core import (ConsumerEvent, ReaderCore,
                                          ReadSettings, split_at_events)
from transforms.kafka.watermark import KafkaWatermarkEstimator

UNUSED = {'bootstrap.servers': 'unused.invalid:1'}


def _settings(**read_kwargs) -> ReadSettings:
  return ReadFromKafka(UNUSED, 't', start='earliest', stop='end',
                       **read_kwargs).settings


def _msg(offset, value=b'v', ts_ms=1_000, partition=0, key=None,
         headers=None):
  return Message(topic='t', partition=partition, offset=offset, key=key,
                 value=value, timestamp=(1, ts_ms), headers=headers)


def _event(code, offset=0, partition=0):
  return Message(topic='t', partition=partition, offset=offset,
                 error=KafkaError(code))


def _estimator(max_delay_s=0.0):
  return KafkaWatermarkEstimator(None, max_delay_s=max_delay_s,
                                 idle_timeout_s=5.0)


# Settings.


def test_settings_are_frozen_and_read_by_name():
  s = _settings(max_batch_records=10, consume_batch=7)
  assert isinstance(s, ReadSettings)
  assert (s.topics, s.max_batch_records, s.consume_batch) == (('t',), 10, 7)
  assert s.stop == StopAt.end_offsets() and s.is_bounded
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.consume_batch = 1  # type: ignore[misc]


@pytest.mark.parametrize('kwargs, message', [
    ({'max_batch_records': -1}, 'max_batch_records must be >= 0'),
    ({'consume_batch': 0}, 'consume_batch must be > 0'),
])
def test_settings_reject_bad_values(kwargs, message):
  with pytest.raises(ValueError, match=message):
    _settings(**kwargs)
  with pytest.raises(ValueError, match='unknown timestamp_mode'):
    dataclasses.replace(_settings(), timestamp_mode='wall')


# Fetching.


class _FakeConsumer:
  """consume() hands out the next prepared batch (up to num_messages of it,
  the rest stays queued); poll() the first message of the next batch."""

  def __init__(self, *batches):
    self.batches = [list(b) for b in batches]
    self.polls = []

  def consume(self, num_messages, timeout):
    assert timeout == 0
    if not self.batches or not self.batches[0]:
      if self.batches:
        self.batches.pop(0)
      return []
    batch = self.batches[0]
    out, self.batches[0] = batch[:num_messages], batch[num_messages:]
    return out

  def poll(self, timeout):
    self.polls.append(timeout)
    while self.batches and not self.batches[0]:
      self.batches.pop(0)
    return self.batches[0].pop(0) if self.batches else None


def test_fetch_takes_what_is_queued_without_waiting():
  core = ReaderCore(_settings(consume_batch=3, poll_timeout_s=9))
  consumer = _FakeConsumer([_msg(i) for i in range(5)])
  assert [m.offset() for m in core.fetch(consumer)] == [0, 1, 2]
  assert [m.offset() for m in core.fetch(consumer)] == [3, 4]
  assert consumer.polls == []


def test_fetch_waits_for_the_first_record_then_takes_what_came_with_it():
  core = ReaderCore(_settings(consume_batch=3, poll_timeout_s=9))
  consumer = _FakeConsumer([], [_msg(i) for i in range(5)])
  assert [m.offset() for m in core.fetch(consumer)] == [0, 1, 2]
  assert consumer.polls == [9]
  # Without wait: nothing queued, nothing returned, no poll.
  assert core.fetch(_FakeConsumer([]), wait=False) == []
  # A batch of one takes only the polled message.
  single = ReaderCore(_settings(consume_batch=1, poll_timeout_s=9))
  assert len(single.fetch(_FakeConsumer([], [_msg(0), _msg(1)]))) == 1
  assert single.fetch(_FakeConsumer([])) == []


# Consumer events.


def test_runs_are_split_at_events():
  records = [_msg(i) for i in range(4)]
  assert split_at_events(records) == [(records, None)]
  assert split_at_events([]) == [([], None)]
  eof = _event(KafkaError._PARTITION_EOF, 2)
  oor = _event(KafkaError._AUTO_OFFSET_RESET)
  split = split_at_events(records[:2] + [eof, oor] + records[2:])
  assert split == [(records[:2], eof), ([], oor), (records[2:], None)]
  assert split_at_events(records + [eof]) == [(records, eof), ([], None)]


def test_events_are_classified_recoverable_ones_logged_fatal_ones_raised(
    caplog):
  core = ReaderCore(_settings())
  assert core.handle_event(_event(KafkaError._PARTITION_EOF)) is (
      ConsumerEvent.PARTITION_EOF)
  assert core.handle_event(_event(KafkaError._AUTO_OFFSET_RESET)) is (
      ConsumerEvent.OUT_OF_RANGE)
  with caplog.at_level(logging.WARNING):
    assert core.handle_event(_event(KafkaError._TRANSPORT)) is (
        ConsumerEvent.RECOVERED)
  assert 'librdkafka retries' in caplog.text
  with pytest.raises(KafkaException):
    core.handle_event(_event(KafkaError.TOPIC_AUTHORIZATION_FAILED))


# Records to values and event times.


@pytest.mark.parametrize('with_metadata', [True, False])
@pytest.mark.parametrize('policy', ['create_time', 'processing_time',
                                    'function'])
def test_convert_gives_values_and_event_times_for_every_policy(
    with_metadata, policy):
  fn = lambda r: None if r.offset == 1 else 50.0 + r.offset  # pylint: disable=unnecessary-lambda-assignment
  core = ReaderCore(_settings(
      with_metadata=with_metadata,
      timestamp_policy=fn if policy == 'function' else policy))
  run = [_msg(0, ts_ms=5_000, key=b'k', headers=[('h', b'1')]),
         _msg(1, ts_ms=-1), _msg(2, value=None, ts_ms=7_000)]
  items, stamps = ['pending'], [None]
  before = Timestamp.now().micros
  core.convert(run, 't', 0, items, stamps)
  records = [KafkaRecord('t', 0, 0, b'k', b'v', 5_000, 1, (('h', b'1'),)),
             KafkaRecord('t', 0, 1, None, b'v', -1, 1),
             KafkaRecord('t', 0, 2, None, None, 7_000, 1)]
  assert items == ['pending'] + (
      records if with_metadata else [(r.key, r.value) for r in records])
  assert stamps[0] is None
  if policy == 'create_time':
    assert stamps[1:] == [5_000_000, None, 7_000_000]
  elif policy == 'function':
    assert stamps[1:] == [50_000_000, None, 52_000_000]
  else:
    assert len(set(stamps[1:])) == 1
    assert before <= stamps[1] <= Timestamp.now().micros


# Values to elements (the watermark moves with valid event times only).


@pytest.mark.parametrize('max_batch_records', [0, 2])
def test_records_without_event_time_never_move_the_watermark(
    max_batch_records):
  core = ReaderCore(_settings(max_batch_records=max_batch_records))
  items = ['a', 'b', 'c']
  est = _estimator()
  out = core.take_elements(list(items), [5_000_000, None, 7_000_000], est)
  if max_batch_records:
    # Chunks carry their earliest valid time; the timeless record adds none.
    assert out == [(['a', 'b'], 5_000_000, 0, 5_000_000),
                   (['c'], 7_000_000, 2, 7_000_000)]
  else:
    # A timeless record takes the watermark: neither late nor ahead.
    assert out == [('a', 5_000_000, 0, 5_000_000), ('b', 5_000_000, 1, None),
                   ('c', 7_000_000, 2, 7_000_000)]
  assert est.current_watermark() == Timestamp.of(7)


def test_a_chunk_without_any_event_time_takes_the_watermark():
  core = ReaderCore(_settings(max_batch_records=2))
  est = _estimator()
  est.observe_timestamp(Timestamp.of(3))
  assert core.take_elements(['a', 'b'], [None, None], est) == [
      (['a', 'b'], 3_000_000, 0, None)]
  assert est.current_watermark() == Timestamp.of(3)


def test_future_event_times_never_move_the_watermark_past_the_clock():
  core = ReaderCore(_settings(max_batch_records=2))
  now = Timestamp.now()
  future = now.micros + 20 * 60 * 10**6  # 20 minutes ahead
  est = _estimator()
  core.take_elements(['a', 'b'], [5_000_000, future], est)
  assert now <= est.current_watermark() <= Timestamp.now()


def test_partial_chunk_waits_unless_everything_is_taken():
  core = ReaderCore(_settings(max_batch_records=2))
  items, stamps = ['a', 'b', 'c'], [1_000, 2_000, 3_000]
  est = _estimator()
  out = core.take_elements(items, stamps, est, everything=False)
  assert [o[0] for o in out] == [['a', 'b']]
  assert (items, stamps) == (['c'], [3_000])
  out = core.take_elements(items, stamps, est, everything=True)
  assert [o[0] for o in out] == [['c']] and items == [] and stamps == []
