"""ReadFromKafka against real brokers (contract tests run on tansu and noida)."""

import time

import apache_beam as beam
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from kafka_helpers import produce, same_elements
from transforms.kafka import KafkaRecord, ReadFromKafka, StopAt, admin

pytestmark = pytest.mark.it

BASE_TS = 1_700_000_000_000


def _records(n, partitions=4, offset_base=0):
  """n records spread round-robin over partitions, with keys, headers, times."""
  out = []
  for i in range(offset_base, offset_base + n):
    out.append((i % partitions, f'k{i}'.encode(), f'v{i}'.encode(),
                [('h', f'{i}'.encode()), ('src', b'test')], BASE_TS + i * 10))
  return out


def _run(read: beam.PTransform, check):
  with beam.Pipeline(runner=FnApiRunner()) as p:
    got = (p | read
           | 'WithTs' >> beam.Map(
               lambda r, ts=beam.DoFn.TimestampParam: (r, ts.micros // 1000)))
    assert_that(got, check)


def _expected(records, topic, partitions=4):
  """Expected (KafkaRecord, element ts ms), offsets derived per partition."""
  next_offset = [0] * partitions
  out = []
  for p, k, v, h, ts in records:
    out.append((KafkaRecord(topic, p, next_offset[p], k, v, ts, 1, tuple(h)),
                ts))
    next_offset[p] += 1
  return out


@pytest.mark.contract
def test_bounded_read_returns_exactly_the_records(broker, make_topic):
  topic = make_topic(4)
  records = _records(400)
  produce(broker, topic, records)
  _run(ReadFromKafka(broker.client_config(), topic, start='earliest',
                     stop=StopAt.records_per_partition(100)),
       same_elements(_expected(records, topic)))


@pytest.mark.contract
def test_bounded_snapshot_stops_at_end_offsets_seen_at_start(
    broker, make_topic, known_broker_bug):
  known_broker_bug('tansu', 'high watermark is the base offset of the last '
                   'batch + 1, so the snapshot ends early (docs/brokers.md)')
  topic = make_topic(4)
  records = _records(203)
  produce(broker, topic, records)
  _run(ReadFromKafka(broker.client_config(), topic, start='earliest',
                     stop='end'),
       same_elements(_expected(records, topic)))


@pytest.mark.contract
def test_batched_elements_carry_every_record_once(broker, make_topic):
  topic = make_topic(4)
  records = _records(1000)
  produce(broker, topic, records)
  with beam.Pipeline(runner=FnApiRunner()) as p:
    batches = p | ReadFromKafka(
        broker.client_config(), topic, start='earliest',
        stop=StopAt.records_per_partition(250), max_batch_records=64)
    sizes = batches | 'Sizes' >> beam.Map(len)
    flat = (batches
            | 'WithTs' >> beam.Map(
                lambda b, ts=beam.DoFn.TimestampParam: (b, ts.micros // 1000))
            | 'Explode' >> beam.FlatMap(
                lambda bt: [(r.offset, r.partition, r.value,
                             bt[1] == min(x.timestamp_ms for x in bt[0]))
                            for r in bt[0]]))
    expected = [(rec[0].offset, rec[0].partition, rec[0].value, True)
                for rec in _expected(records, topic)]
    assert_that(flat, same_elements(expected), label='AllRecordsOnce')
    assert_that(sizes | beam.combiners.Count.Globally(),
                lambda c: c[0] >= 1000 // 64, label='Batched')
    assert_that(sizes, lambda s: max(s) <= 64, label='BatchBound')


@pytest.mark.contract
def test_key_value_batches_without_metadata(broker, make_topic):
  topic = make_topic(4)
  records = _records(600)
  produce(broker, topic, records)
  with beam.Pipeline(runner=FnApiRunner()) as p:
    batches = p | ReadFromKafka(
        broker.client_config(), topic, start='earliest',
        stop=StopAt.records_per_partition(150), with_metadata=False,
        max_batch_records=100)
    flat = (batches
            | 'WithTs' >> beam.FlatMap(
                lambda b, ts=beam.DoFn.TimestampParam: [
                    (k, v, ts.micros // 1000) for k, v in b]))
    # Per key, the batch time is at most the record's own time.
    expected = {k: ts for _, k, _, _, ts in records}
    assert_that(flat | 'Check' >> beam.Map(
        lambda kvt: (kvt[0], kvt[1], kvt[2] <= expected[kvt[0]])),
                same_elements([(k, v, True) for _, k, v, _, _ in records]))
    assert_that(batches | 'Sizes' >> beam.Map(len),
                lambda sizes: max(sizes) <= 100, label='BatchBound')


@pytest.mark.contract
def test_commit_on_finalize_then_resume_from_committed(broker, make_topic,
                                                       known_broker_bug):
  known_broker_bug('tansu', 'end offsets (high watermark) are wrong, so the '
                   'committed offsets cannot equal them (docs/brokers.md)')
  topic = make_topic(4)
  group = f'g-{topic}'
  config = broker.client_config(**{'group.id': group,
                                   'auto.offset.reset': 'earliest'})
  first = _records(120)
  produce(broker, topic, first)
  _run(ReadFromKafka(config, topic, start='committed', stop='end'),
       same_elements(_expected(first, topic)))
  ends = admin.end_offsets(config, topic)
  assert ends == {0: 30, 1: 30, 2: 30, 3: 30}
  assert admin.committed_offsets(config, group, topic) == ends

  second = _records(40, offset_base=120)
  produce(broker, topic, second)
  expected_second = [(r._replace(offset=r.offset + 30), ts)
                     for r, ts in _expected(second, topic)]
  _run(ReadFromKafka(config, topic, start='committed', stop='end'),
       same_elements(expected_second))
  assert admin.committed_offsets(config, group, topic) == {
      p: 40 for p in range(4)}


@pytest.mark.contract
def test_start_at_timestamp_reads_from_first_record_at_or_after(
    broker, make_topic, known_broker_bug):
  known_broker_bug('tansu', 'offsets_for_times always answers offset 0')
  topic = make_topic(2)
  records = _records(100, partitions=2)
  produce(broker, topic, records)
  # Times are BASE_TS + 10 ms * i; start between record 59 and 60.
  start = beam.utils.timestamp.Timestamp(micros=(BASE_TS + 595) * 1000)
  expected = [e for e in _expected(records, topic, 2) if e[1] >= BASE_TS + 600]
  assert len(expected) == 40
  _run(ReadFromKafka(broker.client_config(), topic, start=start,
                     stop=StopAt.records_per_partition(20)),
       same_elements(expected))


def test_unknown_topic_fails_fast_naming_it(broker):
  t0 = time.monotonic()
  with pytest.raises(Exception, match='unknown topic.*no-such-topic-xyz'):
    with beam.Pipeline(runner=FnApiRunner()) as p:
      _ = p | ReadFromKafka(broker.client_config(), 'no-such-topic-xyz',
                            start='earliest', stop='end')
  assert time.monotonic() - t0 < 30


def test_unreachable_cluster_fails_fast_with_address():
  with pytest.raises(Exception, match=r'127\.0\.0\.1:9.*did not answer'):
    with beam.Pipeline(runner=FnApiRunner()) as p:
      _ = p | ReadFromKafka({'bootstrap.servers': '127.0.0.1:9'}, 'events',
                            start='earliest', stop='end',
                            metadata_timeout_s=3)


def test_start_committed_without_group_is_rejected_at_construction():
  with pytest.raises(ValueError, match="start='committed' needs 'group.id'"):
    ReadFromKafka({'bootstrap.servers': 'x:1'}, 't')
  with pytest.raises(ValueError, match='start=.*yesterday'):
    ReadFromKafka({'bootstrap.servers': 'x:1'}, 't', start='yesterday')
