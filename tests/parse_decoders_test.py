"""Decoders by input format: the table, and a format added in a test.

Every format in ``DECODERS`` reads the same event to the same row; a new
format is one Decoder subclass plus its table entry, and then parses,
validates, times and dead-letters like the shipped ones.
"""

import io
import pickle
import struct
import time

import apache_beam as beam
import fastavro
import numpy as np
import orjson
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from transforms import dead_letters as dl
from transforms import parse
from transforms import schema as schema_lib
from transforms import sources
from transforms.events import RawRecord
from transforms.kafka import KafkaRecord

NOW = 1_800_000_000.0

# name, schema type, Avro type; 'n' is optional (Avro: a union with null).
FIELDS = [('id', 'string', 'string'), ('ts', 'timestamp', 'double'),
          ('site', 'string', 'string'), ('x', 'float', 'float'),
          ('n', 'int', 'long')]
AVRO_SCHEMA = {'type': 'record', 'name': 'Reading', 'fields': [
    {'name': n, 'type': ['null', a], 'default': None} if n == 'n' else
    {'name': n, 'type': a} for n, _, a in FIELDS]}
SCHEMA = schema_lib.from_dict({
    'name': 'readings',
    'fields': [{'name': n, 'type': t, 'required': n != 'n'}
               for n, t, _ in FIELDS],
    'id_field': 'id', 'time_field': 'ts', 'key_field': 'site',
    'features': ['x'], 'window_features': ['x'], 'avro_schema': AVRO_SCHEMA,
})


def _now():
  return NOW


def _avro(event: dict) -> bytes:
  buf = io.BytesIO()
  fastavro.schemaless_writer(buf, fastavro.parse_schema(AVRO_SCHEMA),
                             {'n': None, **event})
  return buf.getvalue()


def _csv(event: dict) -> bytes:
  return ','.join(str(event.get(c, '')) for c in SCHEMA.columns).encode()


# How each shipped format writes an event: a format added to DECODERS gets
# its writer here (test_every_format_has_a_writer_here).
WRITERS = {'json': orjson.dumps, 'csv': _csv, 'avro': _avro}


def test_every_format_has_a_writer_here():
  assert set(WRITERS) == set(parse.DECODERS) == set(parse.INPUT_FORMATS)
  assert all(issubclass(d, parse.Decoder) for d in parse.DECODERS.values())


@pytest.mark.parametrize('fmt', sorted(WRITERS))
def test_every_format_reads_the_same_event_to_the_same_row(fmt):
  events = [{'id': f'r{i}', 'ts': NOW - 60 + i, 'site': 's', 'x': 0.5 * i,
             'n': i} for i in range(3)]
  events[1].pop('n')  # an optional field absent
  records = [RawRecord('kafka:t/0', i, WRITERS[fmt](e))
             for i, e in enumerate(events)]
  parser = parse.RecordParser(SCHEMA, fmt, now_fn=_now)
  (batch,), dead = parser.parse(records)
  assert dead == []
  assert batch.ids == ['r0', 'r1', 'r2'] and batch.keys == ['s'] * 3
  assert batch.event_time.tolist() == [NOW - 60, NOW - 59, NOW - 58]
  assert batch.features.tolist() == [[0.0], [0.5], [1.0]]
  assert parser.event_times_of(records) == [NOW - 60, NOW - 59, NOW - 58]


def test_an_unknown_format_names_the_table():
  with pytest.raises(ValueError, match=r"input_format 'kv': use one of "
                     r"\('json', 'csv', 'avro'\)"):
    parse.RecordParser(SCHEMA, 'kv')


# --- a format added in a test: key=value pairs --------------------------------


class KeyValueDecoder(parse.Decoder):
  """``id=r1,ts=1800000000,x=0.5``: a value per field, by the schema's
  field kinds; the whole of a new format."""

  line_based = True  # one record per line: line files can hold it

  def __init__(self, schema, options):
    super().__init__(schema, options)
    kinds = {'float': float, 'int': int, 'timestamp': float}
    self._convert = {f.name: kinds.get(f.type, str) for f in schema.fields}

  def decode(self, payload: bytes) -> dict:
    try:
      pairs = [item.split('=', 1) for item in payload.decode().split(',')]
      return {k: self._convert.get(k, str)(v) for k, v in pairs}
    except ValueError as e:  # no '=', not UTF-8, not a number
      raise parse.Invalid(dl.MALFORMED, f'not key=value pairs: {e}',
                          stage=dl.PARSE) from None


@pytest.fixture
def kv_format(monkeypatch):
  monkeypatch.setitem(parse.DECODERS, 'kv', KeyValueDecoder)


def kv_records(now=NOW):
  """Key=value records, their times a minute before ``now``."""
  t = int(now) - 60
  return [RawRecord('kafka:t/0', i, line.encode(), now - 5)
          for i, line in enumerate([
              f'id=r0,ts={t},site=s,x=0.5',
              f'id=r1,ts={t}.5,site=s,x=1.5,n=3',
              f'id=r2,ts={t},site=s',             # no x: validation
              'id r3 ts 1799999943',              # not pairs: the decoder
              f'id=r4,ts={t},site=s,x=1e300',     # float32 overflow
              'id=r5,ts=9999999999,site=s,x=1',   # in the future
              '',                                 # empty
              f'id=r7,ts={t},site=,x=2',          # empty key
          ])]


@pytest.mark.usefixtures('kv_format')
def test_a_new_format_is_one_decoder_in_the_table():
  parser = parse.RecordParser(SCHEMA, 'kv', now_fn=_now)
  (batch,), dead = parser.parse(kv_records())
  assert batch.ids == ['r0', 'r1']
  assert batch.features.tolist() == [[0.5], [1.5]]
  assert batch.event_time.tolist() == [NOW - 60, NOW - 59.5]
  assert [(d.position, d.stage, d.reason, d.event_id) for d in dead] == [
      (2, dl.VALIDATE, dl.MISSING_FIELD, 'r2'),
      (3, dl.PARSE, dl.MALFORMED, None),
      (5, dl.VALIDATE, dl.TIME_IN_FUTURE, 'r5'),
      (6, dl.PARSE, dl.EMPTY_VALUE, None),
      (7, dl.VALIDATE, dl.EMPTY_VALUE, 'r7'),
      (4, dl.VALIDATE, dl.NON_FINITE, 'r4')]
  assert dead[1].payload == b'id r3 ts 1799999943'
  # Event times for the readers come from the same decoder.
  assert parser.event_times_of(kv_records()) == [
      NOW - 60, NOW - 59.5, NOW - 60, None, NOW - 60, None, None, NOW - 60]
  # Pickled into a DoFn, it parses the same.
  again = pickle.loads(pickle.dumps(parser))
  assert np.array_equal(again.parse(kv_records())[0][0].features,
                        batch.features)


# The bad records of kv_records: (index, reason).
KV_DEAD = [(2, dl.MISSING_FIELD), (3, dl.MALFORMED), (4, dl.NON_FINITE),
           (5, dl.TIME_IN_FUTURE), (6, dl.EMPTY_VALUE), (7, dl.EMPTY_VALUE)]


@pytest.mark.usefixtures('kv_format')
def test_a_new_format_through_the_beam_stage(tmp_path):
  """Kafka records and a line file of the new format, through ParseEvents:
  the good records become rows, every bad one a dead letter with the whole
  original record and its reason."""
  now = time.time()
  lines = [r.payload for r in kv_records(now)]
  kafka = [KafkaRecord('t', 0, i, b'k%d' % i, line, int(now * 1000) - 5000,
                       1, (('trace', b'%d' % i),))
           for i, line in enumerate(lines)]
  path = tmp_path / 'events.kv'
  path.write_bytes(b'\n'.join(lines) + b'\n')
  # Line files take the format because its decoder is line_based.
  file_format = sources.resolve_file_format(str(path), 'auto', 'kv')
  assert tuple(file_format) == (sources.LINES, 'kv')
  with beam.Pipeline(runner=FnApiRunner()) as p:
    from_kafka = (p | beam.Create([kafka])
                  | 'ParseKafka' >> parse.ParseEvents(SCHEMA, 'kv'))
    from_file = (p | sources.ReadFileChunks(str(path), file_format.kind)
                 | 'ParseFile' >> parse.ParseEvents(SCHEMA, 'kv'))
    for name, parsed in (('Kafka', from_kafka), ('File', from_file)):
      assert_that(parsed.events | f'{name}Ids' >> beam.FlatMap(
          lambda b: b.ids), equal_to(['r0', 'r1']), label=f'{name}Rows')
    assert_that(
        from_kafka.dead_letters | beam.Map(lambda d: (
            d.position, d.reason, d.payload, d.record_key, d.record_headers,
            d.record_timestamp_ms)),
        equal_to([(i, reason, lines[i], b'k%d' % i, (('trace', b'%d' % i),),
                   int(now * 1000) - 5000) for i, reason in KV_DEAD]),
        label='KafkaDeadLetters')
    # Line numbers from 1; the blank line (the empty record) is skipped by
    # the reader, not dead-lettered.
    assert_that(
        from_file.dead_letters | beam.Map(lambda d: (
            d.source, d.position, d.reason, d.payload)),
        equal_to([(f'file:{path}', i + 1, reason, lines[i])
                  for i, reason in KV_DEAD if lines[i]]),
        label='FileDeadLetters')


def test_confluent_options_reach_the_avro_decoder():
  header = b'\x00' + struct.pack('>I', 7)
  body = _avro({'id': 'r0', 'ts': NOW - 1, 'site': 's', 'x': 1.0})
  parser = parse.RecordParser(SCHEMA, 'avro', confluent_wire_format=True,
                              expected_schema_id=42, now_fn=_now)
  _, dead = parser.parse([RawRecord('kafka:t/0', 0, header + body)])
  assert [(d.reason, d.detail) for d in dead] == [
      (dl.BAD_WIRE_FORMAT, 'schema id 7, expected 42')]
