"""Parse and validate raw payloads into EventBatches, with dead letters.

Formats: JSON (orjson), CSV (one line per record, columns in the schema's
``csv_columns`` order) and Avro (fastavro, with the schema's writer schema;
optionally the Confluent wire format: magic byte 0 and a 4-byte schema id
before the Avro body). Every record either becomes a row of an EventBatch or
a DeadLetter with a reason code (transforms/dead_letters.py): malformed
bytes, not an object, missing/extra fields, wrong types, empty ids/keys,
NaN/infinity, event times out of range. Nothing raises, nothing is dropped.

Retry policy: none needed; parsing is deterministic, so a bad record is bad
forever and goes to the dead-letter output at once.
"""

import csv
import datetime
import io
import logging
import math
import struct
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import apache_beam as beam
import numpy as np
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms import dead_letters as dl
from transforms.events import EventBatch, RawRecord
from transforms.kafka.records import KafkaRecord
from transforms.schema import EventSchema

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'parse'

INPUT_FORMATS = ('json', 'csv', 'avro')
# Larger payloads are dead-lettered unparsed: a 100 MB "event" is an attack
# or a bug, and parsing it would stall the worker.
DEFAULT_MAX_PAYLOAD_BYTES = 1_000_000


class _Invalid(Exception):
  """A record failed validation: carries the reason code and detail."""

  def __init__(self, reason: str, detail: str, stage: str = dl.VALIDATE,
               event_id: Optional[str] = None):
    super().__init__(detail)
    self.reason = reason
    self.detail = detail
    self.stage = stage
    self.event_id = event_id


def _to_raw(record) -> RawRecord:
  if isinstance(record, RawRecord):
    return record
  if isinstance(record, KafkaRecord):
    return RawRecord(f'kafka:{record.topic}/{record.partition}',
                     record.offset, record.value,
                     record.timestamp_ms / 1000.0
                     if record.timestamp_ms >= 0 else None, record.key)
  raise TypeError(f'cannot parse elements of type {type(record).__name__}; '
                  f'expected KafkaRecord or RawRecord (or lists of them)')


class _TimeReader:
  """Reads an event-time value as epoch seconds, per the schema's unit."""

  # Numbers above this are taken as milliseconds in 'auto' mode: 1e11 s is
  # the year 5138, 1e11 ms is 1973.
  _MS_THRESHOLD = 1e11

  def __init__(self, unit: str):
    self._unit = unit

  def __call__(self, value) -> float:
    t = type(value)
    if t is float or t is int:
      v = float(value)
      if not math.isfinite(v):
        raise _Invalid(dl.NON_FINITE, f'event time is {value}')
      if self._unit == 'ms' or (self._unit == 'auto' and
                                abs(v) > self._MS_THRESHOLD):
        return v / 1000.0
      if self._unit == 'iso':
        raise _Invalid(dl.WRONG_TYPE, 'event time must be an ISO-8601 string')
      return v
    if t is str:
      if self._unit in ('s', 'ms'):
        raise _Invalid(dl.WRONG_TYPE, f'event time must be a number '
                       f'({self._unit}), got a string')
      try:
        dt = datetime.datetime.fromisoformat(value.replace('Z', '+00:00'))
      except ValueError:
        raise _Invalid(dl.WRONG_TYPE,
                       f'event time {value[:40]!r} is not ISO-8601') from None
      if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
      try:
        return dt.timestamp()
      except (OverflowError, ValueError, OSError):
        raise _Invalid(dl.TIME_OUT_OF_RANGE,
                       f'event time {value[:40]!r} out of range') from None
    raise _Invalid(dl.WRONG_TYPE,
                   f'event time has type {t.__name__}, expected a time')


class RecordParser:
  """Turns raw records into validated rows; pure Python, no Beam.

  Used by the ParseEvents DoFn, by the backfill readers and by tests. See the
  module docstring for what is validated.
  """

  def __init__(self, schema: EventSchema, input_format: str = 'json', *,
               confluent_wire_format: bool = False,
               expected_schema_id: Optional[int] = None,
               max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
               now_fn: Callable[[], float] = time.time):
    if input_format not in INPUT_FORMATS:
      raise ValueError(f'input_format {input_format!r}: use one of '
                       f'{INPUT_FORMATS}')
    if input_format == 'avro' and not schema.avro_schema:
      raise ValueError(f'input_format avro needs an "avro_schema" in schema '
                       f'{schema.name!r}')
    self.schema = schema
    self.input_format = input_format
    self._confluent = confluent_wire_format
    self._expected_schema_id = expected_schema_id
    self._max_payload = max_payload_bytes
    self._now_fn = now_fn
    self._all_names = frozenset(schema.field_names)
    self._required = schema.required_names
    self._types = {f.name: f.type for f in schema.fields}
    self._features = schema.features
    self._window_features = schema.window_features
    self._time = _TimeReader(schema.time_unit)
    self._avro = None
    if input_format == 'avro':
      import fastavro
      self._avro = fastavro.parse_schema(dict(schema.avro_schema))
    self._csv_columns = schema.columns

  # Decoding: bytes -> dict of field values.

  def _decode(self, payload: bytes) -> dict:
    if self.input_format == 'json':
      try:
        doc = orjson.loads(payload)
      except orjson.JSONDecodeError as e:
        raise _Invalid(dl.MALFORMED, f'not valid JSON: {e}',
                       stage=dl.PARSE) from None
      if type(doc) is not dict:
        raise _Invalid(dl.NOT_AN_OBJECT,
                       f'JSON {type(doc).__name__}, expected an object',
                       stage=dl.PARSE)
      return doc
    if self.input_format == 'csv':
      return self._decode_csv(payload)
    return self._decode_avro(payload)

  def _decode_csv(self, payload: bytes) -> dict:
    try:
      line = payload.decode('utf-8')
    except UnicodeDecodeError as e:
      raise _Invalid(dl.MALFORMED, f'not UTF-8: {e}', stage=dl.PARSE) from None
    try:
      rows = list(csv.reader([line.rstrip('\r\n')]))
    except csv.Error as e:
      raise _Invalid(dl.MALFORMED, f'bad CSV: {e}', stage=dl.PARSE) from None
    if len(rows) != 1:
      raise _Invalid(dl.MALFORMED, 'not exactly one CSV line', stage=dl.PARSE)
    values = rows[0]
    if len(values) != len(self._csv_columns):
      raise _Invalid(dl.MALFORMED if len(values) < 2 else
                     (dl.MISSING_FIELD if len(values) < len(self._csv_columns)
                      else dl.EXTRA_FIELD),
                     f'{len(values)} CSV columns, expected '
                     f'{len(self._csv_columns)}', stage=dl.PARSE)
    doc = {}
    for name, text in zip(self._csv_columns, values):
      if text == '' and name not in self._required:
        continue
      doc[name] = self._from_text(name, text)
    return doc

  def _from_text(self, name: str, text: str):
    kind = self._types[name]
    try:
      if kind == 'float':
        return float(text)
      if kind == 'int':
        return int(text)
      if kind == 'bool':
        if text.lower() in ('true', '1'):
          return True
        if text.lower() in ('false', '0'):
          return False
        raise ValueError(text)
      if kind == 'timestamp':
        try:
          return float(text)
        except ValueError:
          return text
      return text
    except ValueError:
      raise _Invalid(dl.WRONG_TYPE, f'field {name!r}: {text[:40]!r} is not '
                     f'a {kind}') from None

  def _decode_avro(self, payload: bytes) -> dict:
    import fastavro
    body = payload
    if self._confluent:
      if len(payload) < 5 or payload[0] != 0:
        raise _Invalid(dl.BAD_WIRE_FORMAT,
                       'no Confluent wire-format header (magic byte 0)',
                       stage=dl.PARSE)
      schema_id = struct.unpack('>I', payload[1:5])[0]
      if (self._expected_schema_id is not None and
          schema_id != self._expected_schema_id):
        raise _Invalid(dl.BAD_WIRE_FORMAT,
                       f'schema id {schema_id}, expected '
                       f'{self._expected_schema_id}', stage=dl.PARSE)
      body = payload[5:]
    try:
      buf = io.BytesIO(body)
      doc = fastavro.schemaless_reader(buf, self._avro)
      if buf.tell() != len(body):
        raise ValueError(f'{len(body) - buf.tell()} trailing bytes')
    except Exception as e:  # pylint: disable=broad-except
      # fastavro raises many types on garbage (EOFError, ValueError, ...).
      raise _Invalid(dl.MALFORMED, f'not Avro for the writer schema: '
                     f'{type(e).__name__}: {e}', stage=dl.PARSE) from None
    if type(doc) is not dict:
      raise _Invalid(dl.NOT_AN_OBJECT, 'Avro datum is not a record',
                     stage=dl.PARSE)
    # Avro optional fields decode as None: treat them as absent.
    return {k: v for k, v in doc.items() if v is not None}

  # Validation: dict -> one row.

  def _check_fields(self, doc: dict) -> None:
    keys = doc.keys()
    if keys == self._all_names:
      return
    missing = self._required - keys
    if missing:
      raise _Invalid(dl.MISSING_FIELD,
                     f'missing field(s): {", ".join(sorted(missing)[:5])}')
    extra = keys - self._all_names
    if extra and self.schema.extra_fields == 'reject':
      names = ', '.join(sorted(str(k)[:40] for k in extra)[:5])
      raise _Invalid(dl.EXTRA_FIELD, f'unexpected field(s): {names}')

  def _check_types(self, doc: dict) -> None:
    types = self._types
    for name, value in doc.items():
      kind = types.get(name)
      if kind is None:
        continue  # an ignored extra field
      t = type(value)
      if kind == 'float':
        ok = t is float or t is int
      elif kind == 'int':
        ok = t is int or (t is float and value.is_integer())
      elif kind == 'string':
        ok = t is str
      elif kind == 'bool':
        ok = t is bool
      else:  # timestamp: checked when read
        ok = t in (int, float, str)
      if not ok:
        raise _Invalid(dl.WRONG_TYPE, f'field {name!r} has type '
                       f'{t.__name__}, expected {kind}')
      if t is float and not math.isfinite(value):
        raise _Invalid(dl.NON_FINITE, f'field {name!r} is {value}')

  def _identity(self, doc: dict, raw: RawRecord) -> tuple[str, str]:
    s = self.schema
    if s.id_field:
      event_id = doc[s.id_field] if s.id_field in doc else None
      if event_id is None:
        raise _Invalid(dl.MISSING_FIELD, f'missing id field {s.id_field!r}')
      event_id = str(event_id)
      if not event_id:
        raise _Invalid(dl.EMPTY_VALUE, f'empty id field {s.id_field!r}')
    else:
      event_id = f'{raw.source}@{raw.position}'
    if s.key_field:
      key = doc.get(s.key_field)
      key = '' if key is None else str(key)
      if not key:
        raise _Invalid(dl.EMPTY_VALUE, f'empty key field {s.key_field!r}',
                       event_id=event_id)
    else:
      key = ''
    return event_id, key

  def _event_time(self, doc: dict, raw: RawRecord, now: float,
                  default_time: Optional[float]) -> float:
    s = self.schema
    if s.time_field:
      if s.time_field not in doc:
        raise _Invalid(dl.MISSING_FIELD,
                       f'missing time field {s.time_field!r}')
      t = self._time(doc[s.time_field])
    elif raw.timestamp is not None:
      t = raw.timestamp
    elif default_time is not None:
      t = default_time
    else:
      t = now
    if not s.min_event_time <= t <= now + s.max_future_s:
      raise _Invalid(
          dl.TIME_OUT_OF_RANGE,
          f'event time {t:.3f} outside [{s.min_event_time:.0f}, now + '
          f'{s.max_future_s:.0f}s]')
    return t

  def event_time_of(self, record) -> float:
    """The event time of a raw record for the read's timestamps/watermark.

    Never raises: a record whose payload gives no valid time (it will be a
    dead letter at parse) gets its Kafka timestamp, else the wall clock, so
    one bad record cannot move the watermark (e.g. to the year 9999).
    """
    raw = _to_raw(record)
    now = self._now_fn()
    fallback = raw.timestamp if raw.timestamp is not None else now
    field = self.schema.time_field
    if not field or not raw.payload or len(raw.payload) > self._max_payload:
      return fallback
    try:
      t = self._time(self._decode(raw.payload)[field])
    except Exception:  # pylint: disable=broad-except
      return fallback
    if not self.schema.min_event_time <= t <= now + self.schema.max_future_s:
      return fallback
    return t

  def parse(self, records: Iterable, *,
            default_time: Optional[float] = None
           ) -> tuple[list[EventBatch], list[dl.DeadLetter]]:
    """Parses records into one EventBatch per source and dead letters.

    Args:
      records: KafkaRecord or RawRecord items.
      default_time: event time for records without one (no time field and
        no record timestamp); the wall clock when None.
    """
    now = self._now_fn()
    s = self.schema
    has_label = s.label_field is not None
    rows: dict[str, tuple] = {}
    dead = []
    for record in records:
      raw = _to_raw(record)
      payload = raw.payload
      event_id = None
      try:
        if not payload:
          raise _Invalid(dl.EMPTY_VALUE, 'empty payload or tombstone',
                         stage=dl.PARSE)
        if len(payload) > self._max_payload:
          raise _Invalid(dl.TOO_LARGE, f'payload of {len(payload)} bytes, '
                         f'limit {self._max_payload}', stage=dl.PARSE)
        doc = self._decode(payload)
        if s.id_field and type(doc.get(s.id_field)) in (str, int):
          event_id = str(doc[s.id_field])
        self._check_fields(doc)
        self._check_types(doc)
        event_id, key = self._identity(doc, raw)
        t = self._event_time(doc, raw, now, default_time)
        feats = [doc[n] for n in self._features]
        wvals = [doc[n] for n in self._window_features]
        label = doc.get(s.label_field, math.nan) if has_label else math.nan
      except _Invalid as e:
        dead.append(dl.DeadLetter(
            stage=e.stage, reason=e.reason, detail=e.detail, payload=payload,
            source=raw.source, position=raw.position,
            event_id=e.event_id or event_id, record_key=raw.key, time=now))
        continue
      except Exception as e:  # pylint: disable=broad-except
        # A parser bug must not stop the job: dead-letter and count it.
        dead.append(dl.DeadLetter(
            stage=dl.PARSE, reason=dl.MALFORMED,
            detail=f'unexpected {type(e).__name__}: {e}'[:500],
            payload=payload, source=raw.source, position=raw.position,
            event_id=event_id, record_key=raw.key, time=now))
        continue
      cols = rows.get(raw.source)
      if cols is None:
        cols = rows[raw.source] = ([], [], [], [], [], [], [], [], [])
      cols[0].append(raw.position)
      cols[1].append(payload)
      cols[2].append(event_id)
      cols[3].append(key)
      cols[4].append(t)
      cols[5].append(feats)
      cols[6].append(wvals)
      cols[7].append(label)
      cols[8].append(raw.key)
    batches = []
    n_features = len(self._features)
    n_window = len(self._window_features)
    for source, (pos, raw_payloads, ids, keys, times, feats, wvals,
                 labels, record_keys) in rows.items():
      n = len(ids)
      features = np.asarray(feats, dtype=np.float32).reshape(n, n_features)
      window_values = np.asarray(wvals, dtype=np.float32).reshape(n, n_window)
      # Finite as doubles can still overflow float32 (e.g. 1e300).
      bad = ~np.isfinite(features).all(axis=1)
      if n_window:
        bad |= ~np.isfinite(window_values).all(axis=1)
      if bad.any():
        for i in np.flatnonzero(bad):
          dead.append(dl.DeadLetter(
              stage=dl.VALIDATE, reason=dl.NON_FINITE,
              detail='a numeric field overflows float32',
              payload=raw_payloads[i], source=source, position=pos[i],
              event_id=ids[i], record_key=record_keys[i], time=now))
        keep = np.flatnonzero(~bad)
        if not len(keep):
          continue
      else:
        keep = None
      batch = EventBatch(
          source=source, positions=np.asarray(pos, dtype=np.int64),
          raw=raw_payloads, ids=ids, keys=keys,
          event_time=np.asarray(times, dtype=np.float64), features=features,
          window_values=window_values,
          labels=np.asarray(labels, dtype=np.float64) if has_label else None,
          read_time=np.full(n, now, dtype=np.float64))
      batches.append(batch if keep is None else batch.take(keep))
    return batches, dead


class _ParseFn(beam.DoFn):
  """Chunks of raw records -> EventBatches (main) + DeadLetters (tagged)."""

  def __init__(self, parser: RecordParser):
    self._parser = parser
    self.parsed = Metrics.counter(_NAMESPACE, 'events_parsed')
    self.dead = Metrics.counter(_NAMESPACE, 'events_dead_lettered')
    self.chunk_sizes = Metrics.distribution(_NAMESPACE, 'chunk_size')
    self._by_reason: dict[str, Any] = {}

  def _reason_counter(self, reason: str):
    counter = self._by_reason.get(reason)
    if counter is None:
      counter = self._by_reason[reason] = Metrics.counter(
          _NAMESPACE, f'dead_letter_{reason}')
    return counter

  def process(self, element, timestamp=beam.DoFn.TimestampParam):
    records = element if isinstance(element, list) else [element]
    self.chunk_sizes.update(len(records))
    batches, dead = self._parser.parse(records)
    for batch in batches:
      self.parsed.inc(len(batch))
      # The batch's own earliest event time: windows downstream see each
      # row's time; the element time must not be later than any of them.
      yield beam.window.TimestampedValue(batch, batch.min_time())
    for letter in dead:
      self.dead.inc()
      self._reason_counter(letter.reason).inc()
      yield pvalue.TaggedOutput(dl.DEAD_LETTER_TAG, letter)


class ParseEvents(beam.PTransform):
  """Raw records (or lists of them) -> EventBatch, with dead letters.

  Returns a ``DoOutputsTuple`` with ``events`` (EventBatch) and
  ``dead_letters`` (DeadLetter)::

    parsed = records | ParseEvents(schema, 'json')
    parsed.events, parsed.dead_letters
  """

  def __init__(self, schema: EventSchema, input_format: str = 'json', *,
               confluent_wire_format: bool = False,
               expected_schema_id: Optional[int] = None,
               max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES):
    super().__init__()
    self._parser = RecordParser(
        schema, input_format, confluent_wire_format=confluent_wire_format,
        expected_schema_id=expected_schema_id,
        max_payload_bytes=max_payload_bytes)

  def expand(self, pcoll):
    return pcoll | 'ParseAndValidate' >> beam.ParDo(
        _ParseFn(self._parser)).with_output_types(EventBatch).with_outputs(
            dl.DEAD_LETTER_TAG, main='events')


__all__: Sequence[str] = ['ParseEvents', 'RecordParser', 'INPUT_FORMATS']
