"""Parsing and validation: every bad-input class gets its reason code."""

import io
import math
import struct
import warnings

import fastavro
import numpy as np
import orjson
import pytest

from models import susy
from transforms import dead_letters as dl
from transforms import schema as schema_lib
from transforms.events import RawRecord
from transforms.kafka.records import KafkaRecord
from transforms.parse import RecordParser

NOW = 1_800_000_000.0
SUSY = schema_lib.susy_schema()


def good_event(i=0, **overrides):
  event = {'event_id': f'e{i}', 'event_time': NOW - 10, 'detector': 'det-1',
           'label': 1}
  event.update({n: float(j) / 10 for j, n in enumerate(susy.FEATURE_NAMES)})
  event.update(overrides)
  return event


def parse(payloads, schema=SUSY, fmt='json', **kwargs):
  parser = RecordParser(schema, fmt, now_fn=lambda: NOW, **kwargs)
  records = [RawRecord('kafka:t/0', i, p, NOW - 5, b'k')
             for i, p in enumerate(payloads)]
  return parser.parse(records)


def reasons(dead):
  return [(d.position, d.reason) for d in dead]


def test_valid_json_events_become_one_columnar_batch():
  (batch,), dead = parse([orjson.dumps(good_event(i)) for i in range(3)])
  assert dead == []
  assert batch.ids == ['e0', 'e1', 'e2'] and batch.keys == ['det-1'] * 3
  assert batch.features.shape == (3, 18) and batch.features.dtype == np.float32
  np.testing.assert_allclose(batch.features[0, :3], [0.0, 0.1, 0.2],
                             rtol=1e-6)
  assert batch.window_values.shape == (3, 3)
  assert batch.event_time.tolist() == [NOW - 10] * 3
  assert batch.labels.tolist() == [1.0] * 3
  assert batch.positions.tolist() == [0, 1, 2]
  assert batch.raw[1] == orjson.dumps(good_event(1))


@pytest.mark.parametrize('payload, reason, stage', [
    (b'{"event_id": "e0", "event_ti', dl.MALFORMED, dl.PARSE),
    (b'\xff\xfe\x00garbage', dl.MALFORMED, dl.PARSE),
    (b'[1, 2, 3]', dl.NOT_AN_OBJECT, dl.PARSE),
    (b'', dl.EMPTY_VALUE, dl.PARSE),
    (None, dl.EMPTY_VALUE, dl.PARSE),
    (orjson.dumps({k: v for k, v in good_event().items() if k != 'MT2'}),
     dl.MISSING_FIELD, dl.VALIDATE),
    (orjson.dumps(good_event(extra=1)), dl.EXTRA_FIELD, dl.VALIDATE),
    (orjson.dumps(good_event(MT2='1.5')), dl.WRONG_TYPE, dl.VALIDATE),
    (orjson.dumps(good_event(MT2=True)), dl.WRONG_TYPE, dl.VALIDATE),
    (orjson.dumps(good_event(event_id='')), dl.EMPTY_VALUE, dl.VALIDATE),
    (orjson.dumps(good_event(detector='')), dl.EMPTY_VALUE, dl.VALIDATE),
    (orjson.dumps(good_event(event_id=['x'])), dl.WRONG_TYPE, dl.VALIDATE),
    (b'{"event_id": "e0", "MT2": NaN}', dl.MALFORMED, dl.PARSE),
    (orjson.dumps(good_event(MT2=1e300)), dl.NON_FINITE, dl.VALIDATE),
    (orjson.dumps(good_event(event_time='0001-01-01T00:00:00Z')),
     dl.TIME_OUT_OF_RANGE, dl.VALIDATE),
    (orjson.dumps(good_event(event_time='9999-12-31T23:59:59Z')),
     dl.TIME_IN_FUTURE, dl.VALIDATE),
    (orjson.dumps(good_event(event_time=253402300799000)),
     dl.TIME_IN_FUTURE, dl.VALIDATE),
    (orjson.dumps(good_event(event_time='yesterday')), dl.WRONG_TYPE,
     dl.VALIDATE),
    (b'{"a": ' * 10 + b'1' + b'}' * 10, dl.MISSING_FIELD, dl.VALIDATE),
    (b'x' * 2_000_000, dl.TOO_LARGE, dl.PARSE),
])
def test_each_bad_input_class_is_dead_lettered_with_its_reason(
    payload, reason, stage):
  batches, dead = parse([orjson.dumps(good_event(1)), payload])
  assert [len(b) for b in batches] == [1]
  assert reasons(dead) == [(1, reason)]
  letter = dead[0]
  assert letter.stage == stage and letter.payload == payload
  assert letter.source == 'kafka:t/0' and letter.record_key == b'k'
  assert letter.detail


@pytest.mark.parametrize('payloads, fmt, schema', [
    ([orjson.dumps(good_event(0)), orjson.dumps(good_event(1, MT2=1e300))],
     'json', SUSY),
    ([orjson.dumps(good_event(1, MT2=-1e300))], 'json', SUSY),
    ([','.join(['1'] + ['1e300'] + ['0.5'] * 17).encode()], 'csv',
     schema_lib.susy_csv_schema()),
])
def test_float32_overflow_is_a_dead_letter_not_a_numpy_warning(
    payloads, fmt, schema):
  # The cast to float32 is explicit about overflow: no RuntimeWarning leaks
  # to the job's stderr (as an error here, it would fail the parse).
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    batches, dead = parse(payloads, schema=schema, fmt=fmt)
  assert sum(len(b) for b in batches) == len(payloads) - 1
  assert [d.reason for d in dead] == [dl.NON_FINITE]


@pytest.mark.parametrize('spec, message', [
    ({'fields': ['a', {'name': 'b', 'required': False}],
      'features': ['a', 'b']}, "features field 'b' must be required"),
    ({'fields': ['a', {'name': 's', 'type': 'string'}],
      'features': ['a', 's']}, "features field 's' must be numeric"),
    ({'fields': ['a'], 'features': ['a'], 'key_field': 'k'},
     "key_field 'k' is not a field"),
    ({'fields': ['a'], 'features': ['a'], 'windows': ['a']},
     'unknown schema keys'),
])
def test_schema_errors_name_what_is_wrong(spec, message):
  with pytest.raises(ValueError, match=message):
    schema_lib.from_dict(spec)


def test_event_id_is_kept_on_dead_letters_when_readable():
  _, dead = parse([orjson.dumps(good_event(7, MT2='bad'))])
  assert dead[0].event_id == 'e7'


def test_times_in_ms_seconds_and_iso_are_read_alike():
  ms = orjson.dumps(good_event(0, event_time=int((NOW - 10) * 1000)))
  iso = orjson.dumps(good_event(1, event_time='2027-01-15T08:00:00+00:00'))
  (batch,), dead = parse([ms, iso])
  assert dead == []
  assert batch.event_time[0] == pytest.approx(NOW - 10)
  assert batch.event_time[1] == pytest.approx(1800000000.0)


def test_real_susy_csv_format_derives_id_time_and_key():
  schema = schema_lib.susy_csv_schema()
  values = ['1.000000000000000000e+00'] + ['%.18e' % (j / 10)
                                           for j in range(18)]
  row = ','.join(values)
  with_nan = ','.join(values[:3] + ['nan'] + values[4:])
  (batch,), dead = parse([row.encode(), b'1.0,2.0\n', b'0,' + b'x,' * 17 + b'1',
                          (row + ',9').encode(), with_nan.encode()],
                         schema=schema, fmt='csv')
  assert batch.ids == ['kafka:t/0@0'] and batch.keys == ['']
  assert batch.event_time.tolist() == [NOW - 5]  # the record timestamp
  assert batch.labels.tolist() == [1.0]
  assert reasons(dead) == [(1, dl.MISSING_FIELD), (2, dl.WRONG_TYPE),
                           (3, dl.EXTRA_FIELD), (4, dl.NON_FINITE)]


AVRO_SCHEMA = {
    'type': 'record', 'name': 'Reading',
    'fields': [{'name': 'id', 'type': 'string'},
               {'name': 'ts', 'type': 'double'},
               {'name': 'site', 'type': 'string'},
               {'name': 'x', 'type': 'float'},
               {'name': 'y', 'type': ['null', 'float'], 'default': None}],
}
CUSTOM = schema_lib.from_dict({
    'name': 'readings',
    'fields': [{'name': 'id', 'type': 'string'},
               {'name': 'ts', 'type': 'timestamp'},
               {'name': 'site', 'type': 'string'},
               {'name': 'x', 'type': 'float'},
               {'name': 'y', 'type': 'float', 'required': False}],
    'id_field': 'id', 'time_field': 'ts', 'key_field': 'site',
    'features': ['x'], 'window_features': ['x'], 'avro_schema': AVRO_SCHEMA,
})


def avro_bytes(record, schema_id=None):
  buf = io.BytesIO()
  if schema_id is not None:
    buf.write(b'\x00' + struct.pack('>I', schema_id))
  fastavro.schemaless_writer(buf, fastavro.parse_schema(AVRO_SCHEMA), record)
  return buf.getvalue()


def test_avro_with_confluent_wire_format_and_a_users_own_schema():
  good = avro_bytes({'id': 'r1', 'ts': NOW - 1, 'site': 's', 'x': 2.5,
                     'y': None}, schema_id=42)
  other_id = avro_bytes({'id': 'r2', 'ts': NOW - 1, 'site': 's', 'x': 1.0,
                         'y': 1.0}, schema_id=7)
  no_header = avro_bytes({'id': 'r3', 'ts': NOW - 1, 'site': 's', 'x': 1.0,
                          'y': 1.0})
  (batch,), dead = parse([good, other_id, no_header, b'\x00\x00\x00\x00\x2a'],
                         schema=CUSTOM, fmt='avro', confluent_wire_format=True,
                         expected_schema_id=42)
  assert batch.ids == ['r1'] and batch.features.tolist() == [[2.5]]
  assert reasons(dead) == [(1, dl.BAD_WIRE_FORMAT), (2, dl.BAD_WIRE_FORMAT),
                           (3, dl.MALFORMED)]


def test_schema_files_are_validated_with_clear_errors(tmp_path):
  bad = tmp_path / 'bad.json'
  bad.write_text(orjson.dumps({'fields': [{'name': 'a', 'type': 'float'}],
                               'features': ['b']}).decode())
  with pytest.raises(ValueError, match="features names unknown field 'b'"):
    schema_lib.load(str(bad))
  with pytest.raises(ValueError, match='cannot read schema file'):
    schema_lib.load(str(tmp_path / 'missing.json'))
  yaml_file = tmp_path / 's.yaml'
  yaml_file.write_text('fields: [{name: v, type: float}, '
                       '{name: t, type: timestamp}]\nfeatures: [v]\n'
                       'time_field: t\n')
  loaded = schema_lib.load(str(yaml_file))
  assert loaded.features == ('v',) and loaded.time_field == 't'


def test_event_time_of_is_none_for_every_record_that_will_be_dead_lettered():
  """Only records with a valid event time may feed the watermark: a bad
  time, a malformed payload or a time further ahead than max_future_s
  gives None (the readers then leave the watermark alone)."""
  parser = RecordParser(SUSY, now_fn=lambda: NOW)
  rec = lambda value: KafkaRecord('t', 0, 1, None, value,
                                  int((NOW - 3) * 1000), 1)
  assert parser.event_time_of(rec(orjson.dumps(good_event()))) == NOW - 10
  ahead = SUSY.max_future_s
  assert parser.event_time_of(rec(orjson.dumps(good_event(
      event_time=NOW + ahead - 1)))) == NOW + ahead - 1
  for bad in (b'garbage', b'{}', b'', None, b'{"event_time": 1.0',
              orjson.dumps(good_event(event_time=4e12 * 1000)),
              orjson.dumps(good_event(event_time=NOW + ahead + 1)),
              orjson.dumps(good_event(event_time='0001-01-01T00:00:00Z')),
              orjson.dumps(good_event(event_time='yesterday')),
              b'x' * (parser._max_payload + 1)):
    assert parser.event_time_of(rec(bad)) is None, bad[:40] if bad else bad
  # Without a time field: the record's timestamp, if it has a valid one.
  csv = RecordParser(schema_lib.susy_csv_schema(), 'csv', now_fn=lambda: NOW)
  line = b','.join([b'1'] + [b'0.5'] * 18)
  assert csv.event_time_of(rec(line)) == pytest.approx(NOW - 3)
  assert csv.event_time_of(KafkaRecord('t', 0, 1, None, line, -1, 0)) is None


def test_future_times_have_their_own_reason():
  parser = RecordParser(SUSY, now_fn=lambda: NOW)
  batches, dead = parser.parse([
      RawRecord('kafka:t/0', 0, orjson.dumps(good_event(
          0, event_time=NOW + 20 * 60)), NOW, None),
      RawRecord('kafka:t/0', 1, orjson.dumps(good_event(
          1, event_time=NOW + 4 * 60)), NOW, None)])
  assert [b.ids for b in batches] == [['e1']]
  assert [(d.reason, d.event_id) for d in dead] == [
      (dl.TIME_IN_FUTURE, None)] or [(d.reason, d.event_id) for d in dead
                                     ] == [(dl.TIME_IN_FUTURE, 'e0')]
  assert '1200 s ahead of the clock' in dead[0].detail


def test_kafka_records_parse_as_their_raw_records():
  """The read's KafkaRecords go to the parser as they are: the same
  batches and dead letters as the RawRecords they stand for."""
  payloads = [orjson.dumps(good_event(0)), b'{"event_id": "e1"',
              orjson.dumps(good_event(2, MT2='x')), None,
              orjson.dumps(good_event(4))]
  kafka = [KafkaRecord('t', 3, 10 + i, b'k', p, int((NOW - 5) * 1000), 1)
           for i, p in enumerate(payloads)]
  raw = [RawRecord('kafka:t/3', 10 + i, p, NOW - 5, b'k')
         for i, p in enumerate(payloads)]
  for schema in (SUSY, schema_lib.susy_csv_schema()):
    fmt = 'json' if schema is SUSY else 'csv'
    parser = RecordParser(schema, fmt, now_fn=lambda: NOW)
    (from_kafka, dead_kafka), (from_raw, dead_raw) = (
        parser.parse(kafka), parser.parse(raw))
    assert [(b.source, b.positions.tolist(), b.ids, b.event_time.tolist())
            for b in from_kafka] == [
                (b.source, b.positions.tolist(), b.ids, b.event_time.tolist())
                for b in from_raw]
    assert [(d.source, d.position, d.reason, d.payload, d.record_key)
            for d in dead_kafka] == [
                (d.source, d.position, d.reason, d.payload, d.record_key)
                for d in dead_raw]
  assert parser.event_times_of(kafka) == parser.event_times_of(raw)
