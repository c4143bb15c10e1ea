"""The --kafka_io=xlang mapping, offline: payloads of the constructed Java
KafkaIO transforms and the adapters. Nothing is expanded (that needs Java and
the expansion-service jar); these tests need neither a broker nor Java."""

import argparse

import apache_beam as beam
import pytest
from apache_beam.coders import RowCoder
from apache_beam.portability.api import external_transforms_pb2
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import WindowedValue

from transforms.kafka import (CREATE_TIME, LOG_APPEND_TIME, KafkaRecord,
                              ReadFromKafka, StopAt, WriteToKafka, choose,
                              xlang)

BOOT = {'bootstrap.servers': 'kafka-1:9092,kafka-2:9092'}
READ_META = 'beam:transform:org.apache.beam:kafka_read_with_metadata:v1'
READ_KV = 'beam:transform:org.apache.beam:kafka_read_without_metadata:v1'
WRITE_KV = 'beam:transform:org.apache.beam:kafka_write:v1'
WRITE_HEADERS = 'beam:transform:org.apache.beam:kafka_write_with_headers:v1'


def _payload(external):
  """The configuration row an ExternalTransform would send for expansion."""
  config = external_transforms_pb2.ExternalConfigurationPayload.FromString(
      external._payload)  # pylint: disable=protected-access
  return RowCoder(config.schema).decode(config.payload)


def _read(**kwargs):
  config = kwargs.pop('config', BOOT)
  transform = choose.build_read('xlang', config, kwargs.pop('topics', 'events'),
                               **kwargs)
  assert isinstance(transform, xlang.XlangReadFromKafka)
  return transform, _payload(transform.external)


# Choosing the implementation.


def test_python_choice_returns_our_transforms():
  read = choose.build_read('python', BOOT, 'events', start='earliest')
  assert type(read) is ReadFromKafka  # pylint: disable=unidiomatic-typecheck
  write = choose.build_write('python', BOOT, 'scores', batched=True)
  assert type(write) is WriteToKafka  # pylint: disable=unidiomatic-typecheck


def test_unknown_kafka_io_and_misplaced_expansion_service_are_rejected():
  with pytest.raises(ValueError, match="--kafka_io='java'.*python, xlang"):
    choose.build_read('java', BOOT, 'events')
  with pytest.raises(ValueError, match='--kafka_io='):
    choose.build_write('', BOOT, 'scores')
  with pytest.raises(ValueError, match='expansion_service is for'):
    choose.build_read('python', BOOT, 'events', start='earliest',
                     expansion_service='localhost:8097')


def test_kafka_io_flag():
  from beam_jobs import options as opts  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser()
  opts.KafkaOptions._add_argparse_args(parser)  # pylint: disable=protected-access
  assert parser.parse_args([]).kafka_io == 'python'
  assert parser.parse_args(['--kafka_io=xlang']).kafka_io == 'xlang'
  with pytest.raises(SystemExit):
    parser.parse_args(['--kafka_io=java'])


# Read: the configuration sent to Java.


def test_committed_start_with_group_commits_in_finalize():
  transform, row = _read(
      config={**BOOT, 'group.id': 'scorer', 'auto.offset.reset': 'smallest',
              'receive.message.max.bytes': 1_000_000_000,
              'session.timeout.ms': 6000, 'enable.auto.commit': True},
      topics=['events', 'more'], start='committed')
  assert transform.external._urn == READ_META  # pylint: disable=protected-access
  assert row.consumer_config == {
      'bootstrap.servers': 'kafka-1:9092,kafka-2:9092',
      'group.id': 'scorer',
      'auto.offset.reset': 'earliest',  # librdkafka 'smallest'
      'session.timeout.ms': '6000',  # Java wants strings
      'enable.auto.commit': 'false',  # commits only on finalize
  }  # receive.message.max.bytes: librdkafka-only, dropped
  assert row.topics == ['events', 'more']
  assert row.commit_offset_in_finalize is True
  assert row.key_deserializer == xlang.BYTE_ARRAY_DESERIALIZER
  assert row.value_deserializer == xlang.BYTE_ARRAY_DESERIALIZER
  assert row.timestamp_policy == 'CreateTime'  # our default policy
  assert row.start_read_time is None
  assert row.max_num_records is None and row.max_read_time is None


def test_committed_start_falls_back_to_latest_like_ours():
  _, row = _read(config={**BOOT, 'group.id': 'g'}, start='committed',
                 commit_offsets=False)
  assert row.consumer_config['auto.offset.reset'] == 'latest'
  assert row.commit_offset_in_finalize is False
  _, row = _read(config={**BOOT, 'group.id': 'g',
                         'auto.offset.reset': 'error'}, start='committed')
  assert row.consumer_config['auto.offset.reset'] == 'none'


@pytest.mark.parametrize('start', ['earliest', 'latest'])
def test_earliest_and_latest_become_auto_offset_reset(start):
  _, row = _read(start=start)
  assert row.consumer_config['auto.offset.reset'] == start
  assert 'group.id' not in row.consumer_config
  assert row.commit_offset_in_finalize is False


def test_start_time_becomes_start_read_time_in_ms():
  _, row = _read(start='2026-11-22T07:00:00Z')
  assert row.start_read_time == 1_795_330_800_000
  _, row = _read(start=Timestamp(micros=1_700_000_000_123_456))
  assert row.start_read_time == 1_700_000_000_123


def test_read_time_stop_becomes_max_read_time_in_whole_seconds():
  _, row = _read(start='earliest', stop=StopAt.read_time(2.5))
  assert row.max_read_time == 3
  _, row = _read(start='earliest', stop=None)
  assert row.max_read_time is None and row.max_num_records is None


@pytest.mark.parametrize('policy, java', [
    ('create_time', 'CreateTime'),
    ('log_append_time', 'LogAppendTime'),
    ('processing_time', 'ProcessingTime'),
])
def test_timestamp_policies(policy, java):
  _, row = _read(start='earliest', timestamp_policy=policy)
  assert row.timestamp_policy == java


def test_without_metadata_uses_the_kv_urn():
  transform, _ = _read(start='earliest', with_metadata=False)
  assert transform.external._urn == READ_KV  # pylint: disable=protected-access


def test_sasl_and_ssl_settings_are_translated():
  _, row = _read(config={
      **BOOT, 'security.protocol': 'sasl_ssl', 'sasl.mechanisms': 'PLAIN',
      'sasl.username': 'svc', 'sasl.password': 'p"w', 'ssl.ca.location':
      '/etc/ca.pem'}, start='earliest')
  config = row.consumer_config
  assert config['security.protocol'] == 'SASL_SSL'
  assert config['sasl.mechanism'] == 'PLAIN'
  assert config['sasl.jaas.config'] == (
      'org.apache.kafka.common.security.plain.PlainLoginModule required '
      'username="svc" password="p\\"w";')
  assert 'sasl.username' not in config and 'sasl.password' not in config
  assert config['ssl.truststore.type'] == 'PEM'
  assert config['ssl.truststore.location'] == '/etc/ca.pem'


# Read: what Java KafkaIO cannot express.


@pytest.mark.parametrize('stop, what', [
    ('end', "stop='end'"),
    (StopAt.records_per_partition(10), 'records_per_partition'),
    (StopAt.timestamp('2026-01-01T00:00:00Z'), 'StopAt.timestamp'),
    (StopAt.offsets({('events', 0): 5}), 'StopAt.offsets'),
])
def test_unsupported_stops_raise_naming_them(stop, what):
  with pytest.raises(ValueError, match=f'xlang: .*{what}.*cannot be expressed'):
    choose.build_read('xlang', BOOT, 'events', start='earliest', stop=stop)


def test_earliest_with_a_group_raises_because_java_resumes_committed():
  with pytest.raises(ValueError,
                     match="start='earliest' with group.id 'g'.*committed"):
    choose.build_read('xlang', {**BOOT, 'group.id': 'g'}, 'events',
                     start='earliest')


def test_other_unsupported_read_settings_raise():
  with pytest.raises(ValueError, match='timestamp_policy as a Python function'):
    choose.build_read('xlang', BOOT, 'events', start='earliest',
                     timestamp_policy=lambda r: r.timestamp_ms / 1000)
  with pytest.raises(ValueError, match='max_delay_s=5.*no delay'):
    choose.build_read('xlang', BOOT, 'events', start='earliest',
                     max_delay_s=5)
  with pytest.raises(ValueError, match="'error_cb' is a Python callable"):
    choose.build_read('xlang', {**BOOT, 'error_cb': print}, 'events',
                     start='earliest')
  with pytest.raises(ValueError, match='ssl.certificate.location.*keystore'):
    choose.build_read('xlang', {**BOOT, 'ssl.certificate.location': '/c.pem'},
                     'events', start='earliest')
  with pytest.raises(ValueError, match='GSSAPI: give the Java client '
                     'sasl.jaas.config'):
    choose.build_read('xlang', {**BOOT, 'sasl.username': 'u'}, 'events',
                     start='earliest')


def test_read_spec_is_validated_like_ours():
  with pytest.raises(ValueError, match='start=.*yesterday'):
    choose.build_read('xlang', BOOT, 'events', start='yesterday')
  with pytest.raises(ValueError, match="start='committed' needs 'group.id'"):
    choose.build_read('xlang', BOOT, 'events')
  with pytest.raises(TypeError):
    choose.build_read('xlang', BOOT, 'events', start='earliest', stopp='end')


# Read: the adapter from Java rows to our elements.


def _row(offset, partition=0, ts=1_700_000_000_000, type_name='CreateTime',
         type_id=0, headers=None):
  return beam.Row(topic='events', partition=partition, offset=offset,
                  timestamp=ts, key=b'k%d' % offset, value=b'v%d' % offset,
                  headers=headers, timestampTypeId=type_id,
                  timestampTypeName=type_name)


def test_record_from_row():
  row = _row(7, partition=3, headers=[beam.Row(key='trace', value=b't'),
                                      beam.Row(key='empty', value=None)])
  assert xlang.record_from_row(row) == KafkaRecord(
      'events', 3, 7, b'k7', b'v7', 1_700_000_000_000, CREATE_TIME,
      (('trace', b't'), ('empty', None)))
  # Java numbers timestamp types -1/0/1, confluent-kafka 0/1/2.
  assert xlang.record_from_row(
      _row(1, type_name='LogAppendTime', type_id=1)).timestamp_type == (
          LOG_APPEND_TIME)
  assert xlang.record_from_row(
      _row(1, ts=-1, type_name='NoTimestampType',
           type_id=-1)).timestamp_type == 0
  assert xlang.record_from_row(_row(1)).headers == ()


def _adapt(fn, elements):
  """Runs the adapter DoFn over (element, timestamp seconds) like a bundle."""
  fn.start_bundle()
  out = []
  for element, seconds in elements:
    for o in fn.process(element, timestamp=Timestamp.of(seconds),
                        window=GlobalWindow()):
      out.append(o)
  out.extend(fn.finish_bundle() or [])
  return out


def test_adapter_one_record_per_element():
  fn = xlang._RowsToElements(with_metadata=True, max_batch_records=0)  # pylint: disable=protected-access
  out = _adapt(fn, [(_row(0), 10), (_row(1), 11)])
  assert out == [xlang.record_from_row(_row(0)),
                 xlang.record_from_row(_row(1))]
  fn = xlang._RowsToElements(with_metadata=False, max_batch_records=0)  # pylint: disable=protected-access
  assert _adapt(fn, [((b'k', b'v'), 1)]) == [(b'k', b'v')]


def test_adapter_batches_per_partition_with_earliest_time():
  fn = xlang._RowsToElements(with_metadata=True, max_batch_records=3)  # pylint: disable=protected-access
  rows = [(_row(i, partition=i % 2), 100 - i) for i in range(8)]
  out = _adapt(fn, rows)
  full = [o for o in out if isinstance(o, beam.window.TimestampedValue)]
  rest = [o for o in out if isinstance(o, WindowedValue)]
  # Partition 0 gets offsets 0,2,4,6 and partition 1 gets 1,3,5,7: one full
  # list each, the remainders at bundle end.
  assert [[r.offset for r in o.value] for o in full] == [[0, 2, 4], [1, 3, 5]]
  assert [o.timestamp for o in full] == [Timestamp.of(96), Timestamp.of(95)]
  assert sorted([r.offset for r in o.value] for o in rest) == [[6], [7]]
  assert {o.timestamp for o in rest} == {Timestamp.of(94), Timestamp.of(93)}
  assert all(o.windows == [GlobalWindow()] for o in rest)
  assert sorted(r.offset for o in out for r in o.value) == list(range(8))


# Write.


def _write(topic='scores', config=None, **kwargs):
  transform = choose.build_write('xlang', config or BOOT, topic, **kwargs)
  assert isinstance(transform, xlang.XlangWriteToKafka)
  return transform, _payload(transform.external)


def test_write_maps_our_producer_defaults_to_java():
  transform, row = _write()
  assert transform.external._urn == WRITE_KV  # pylint: disable=protected-access
  assert row.topic == 'scores'
  assert row.producer_config == {
      'bootstrap.servers': 'kafka-1:9092,kafka-2:9092',
      'enable.idempotence': 'true', 'acks': 'all', 'linger.ms': '5',
      'compression.type': 'lz4', 'delivery.timeout.ms': '60000'}
  assert row.key_serializer == xlang.BYTE_ARRAY_SERIALIZER
  assert row.value_serializer == xlang.BYTE_ARRAY_SERIALIZER


def test_write_short_delivery_timeout_stays_valid_for_java():
  _, row = _write(config={**BOOT, 'message.timeout.ms': 3000},
                  idempotent=False)
  config = row.producer_config
  assert config['delivery.timeout.ms'] == '3000'
  assert config['request.timeout.ms'] == '2995'  # >= linger + request
  assert 'enable.idempotence' not in config


def test_write_with_headers_or_topic_function_uses_rows():
  transform, row = _write(headers=lambda r: [('h', b'1')])
  assert transform.external._urn == WRITE_HEADERS  # pylint: disable=protected-access
  assert row.topic == 'scores'
  transform, row = _write(topic=lambda r: 'a' if r[0] else 'b')
  assert transform.external._urn == WRITE_HEADERS  # pylint: disable=protected-access
  assert row.topic == '<per-record topic>'


def _to_java(settings_kwargs, elements, topic='scores'):
  ours = WriteToKafka(BOOT, topic, **settings_kwargs)
  transform = xlang.XlangWriteToKafka(ours.settings)
  fn = xlang._ToJavaRecords(ours.settings, transform.with_headers)  # pylint: disable=protected-access
  return [o for e in elements for o in fn.process(e)]


def test_write_adapter_applies_functions_and_flattens_batches():
  records = [{'id': 1, 'v': 'é'}, {'id': 2, 'v': None}]
  out = _to_java(dict(batched=True, key=lambda r: str(r['id']),
                      value=lambda r: r['v']), [records, records[:1]])
  assert out == [(b'1', 'é'.encode()), (b'2', None), (b'1', 'é'.encode())]
  # Defaults: (key, value) pairs as they are; anything else is the value.
  assert _to_java({}, [(b'k', b'v'), b'only']) == [(b'k', b'v'),
                                                     (None, b'only')]
  with pytest.raises(TypeError, match='bytes, str or None, got int'):
    _to_java({}, [(b'k', 5)])


def test_write_adapter_rows_carry_headers_and_topics():
  out = _to_java(dict(headers=lambda e: [('trace', e[1])]),
                 [(b'k', b'v'), (None, b'w')])
  assert out == [
      xlang.XlangKafkaRecord(b'k', b'v', [xlang.XlangKafkaHeader(
          'trace', b'v')], None),
      xlang.XlangKafkaRecord(None, b'w', [xlang.XlangKafkaHeader(
          'trace', b'w')], None),
  ]
  out = _to_java({}, [(b'k', b'v')], topic=lambda e: 'dead-letters')
  assert out == [xlang.XlangKafkaRecord(b'k', b'v', None, 'dead-letters')]
  # The rows encode with the schema coder the xlang input uses.
  coder = beam.coders.registry.get_coder(xlang.XlangKafkaRecord)
  assert coder.decode(coder.encode(out[0])) == out[0]
