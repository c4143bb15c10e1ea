"""Parse and validate raw payloads into EventBatches, with dead letters.

Formats: JSON (orjson), CSV (one line per record, columns in the schema's
``csv_columns`` order) and Avro (fastavro, with the schema's writer schema;
optionally the Confluent wire format: magic byte 0 and a 4-byte schema id
before the Avro body). Every record either becomes a row of an EventBatch or
a DeadLetter with a reason code (transforms/dead_letters.py): malformed
bytes, not an object, missing/extra fields, wrong types, empty ids/keys,
NaN/infinity, event times out of range. Nothing raises, nothing is dropped.

Typed rows that need no decoding (Parquet, tf.Example: transforms/sources.py)
go through ``RecordParser.parse_documents``: the same validation after the
decoding step. Both run a columnar fast path first: per row only the decode,
the field set and the exact value types are checked; finite floats, ids,
keys and event times are checked on the chunk's columns. Whatever the fast
path does not accept outright is validated row by row, so the outcome (rows,
values, reasons) is always the full validation's
(tests/parse_documents_test.py checks that on generated hostile input).

Retry policy: none needed; parsing is deterministic, so a bad record is bad
forever and goes to the dead-letter output at once.
"""

import csv
import datetime
import io
import itertools
import logging
import math
import operator
import struct
import time
from typing import (Any, Callable, Iterable, NamedTuple, Optional, Sequence,
                    Union)

import apache_beam as beam
import msgspec
import numpy as np
import orjson
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from transforms import dead_letters as dl
from transforms.events import EventBatch, RawRecord
from transforms.kafka.records import KafkaRecord, kafka_source
from transforms.schema import EventSchema

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'parse'


def _float32(values) -> np.ndarray:
  """Numbers as float32. A finite double beyond float32's range (1e300)
  becomes inf, which ``_make_batch`` turns into a non_finite dead letter;
  numpy's "overflow encountered in cast" warning for it is expected here,
  not a problem to report."""
  with np.errstate(over='ignore'):
    return np.asarray(values, dtype=np.float32)


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


# Records the parser reads as they are (a KafkaRecord reads as a RawRecord:
# source, position, payload, timestamp, key).
_RECORD_TYPES = frozenset((RawRecord, KafkaRecord))


def _to_raw(record) -> RawRecord:
  if isinstance(record, RawRecord):
    return record
  if isinstance(record, KafkaRecord):
    return RawRecord(kafka_source(record.topic, record.partition),
                     record.offset, record.value,
                     record.timestamp_ms / 1000.0
                     if record.timestamp_ms >= 0 else None, record.key)
  raise TypeError(f'cannot parse elements of type {type(record).__name__}; '
                  f'expected KafkaRecord or RawRecord (or lists of them)')


# Exact value types each field kind accepts without a closer look (the
# full check in _check_types also accepts integral floats for int fields).
_FAST_TYPES = {'float': frozenset((float, int)), 'int': frozenset((int,)),
               'string': frozenset((str,)), 'bool': frozenset((bool,))}


# Bytes of the plain numeric CSV lines the chunk parser takes (newline: the
# line separator it joins them with).
_PLAIN_NUMERIC_CSV = b'0123456789eE+-.,\n'


def _getter(names: Sequence[str]) -> Callable[[dict], tuple]:
  """doc -> tuple of the values of ``names`` (KeyError if one is absent)."""
  names = tuple(names)
  if not names:
    return lambda doc: ()
  if len(names) == 1:
    name = names[0]
    return lambda doc: (doc[name],)
  return operator.itemgetter(*names)


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
    self._init_caches()

  def _numeric_csv_columns(self) -> Optional[dict]:
    """For CSV schemas of float columns only, without id, time or key
    fields (the UCI SUSY file): where each role's values are among the
    columns. None for other schemas."""
    s = self.schema
    columns = list(self._csv_columns)
    if (self.input_format != 'csv' or s.id_field or s.time_field or
        s.key_field or set(columns) != set(self._all_names) or
        len(columns) != len(self._all_names) or
        any(self._types[c] != 'float' for c in columns)):
      return None
    index = {name: i for i, name in enumerate(columns)}
    return {'names': columns,
            'features': [index[n] for n in self._features],
            'window': [index[n] for n in self._window_features],
            'label': index.get(s.label_field) if s.label_field else None}

  def _init_caches(self) -> None:
    self._numeric_csv = self._numeric_csv_columns()
    # Rows with these exact field sets take the fast path (see _Shape).
    self._shapes: list[_Shape] = []
    self._unshaped: set[frozenset] = set()
    self._feature_getter = _getter(self._features)
    self._window_getter = _getter(self._window_features)
    self._typed = (_TypedJson.build(self) if self.input_format == 'json'
                   else None)
    self._time_only = (_time_only_decoder(self.schema.time_field)
                       if self.input_format == 'json' and
                       self.schema.time_field else None)

  def __getstate__(self):
    # Getters, shapes and decoders are rebuilt where the parser is
    # unpickled.
    state = dict(self.__dict__)
    for name in ('_shapes', '_unshaped', '_feature_getter',
                 '_window_getter', '_typed', '_time_only'):
      state.pop(name, None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_caches()

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
    if t > now + s.max_future_s:
      raise _Invalid(
          dl.TIME_IN_FUTURE,
          f'event time {t:.3f} is {t - now:.0f} s ahead of the clock '
          f'(more than max_future_s {s.max_future_s:g} s)')
    if not s.min_event_time <= t:
      raise _Invalid(
          dl.TIME_OUT_OF_RANGE,
          f'event time {t:.3f} before the earliest accepted '
          f'({s.min_event_time:.0f})')
    return t

  def event_time_of(self, record) -> Optional[float]:
    """The event time of a raw record for the read's timestamps/watermark,
    or None when the record gives no valid one.

    Never raises. None means the record will be a dead letter at parse
    (no payload, too large, malformed JSON, no or a bad time, a time before
    the schema's earliest or further ahead than ``max_future_s``): the
    readers do not let such a record move the watermark, so one bad record
    cannot make valid ones late (e.g. a time in the year 9999, or a record
    stamped with its arrival time while events lag their source).
    Schemas without a time field use the record's timestamp.
    """
    return self.event_times_of([record])[0]

  def event_times_of(self, records: Sequence) -> list[Optional[float]]:
    """``event_time_of`` of each record (KafkaRecord or RawRecord), in one
    call for a run of records (the readers' timestamps)."""
    now = self._now_fn()
    lo = self.schema.min_event_time
    hi = now + self.schema.max_future_s
    field = self.schema.time_field
    limit = self._max_payload
    read = self._time
    time_only = self._time_only
    out = []
    append = out.append
    for r in records:
      if type(r) not in _RECORD_TYPES:
        r = _to_raw(r)
      payload = r.payload
      if not payload or len(payload) > limit:
        append(None)
        continue
      if not field:
        t = r.timestamp
        append(t if t is not None and lo <= t <= hi else None)
        continue
      try:
        if time_only is not None:
          # Only the time field is built; the rest is checked, not decoded.
          t = read(time_only(payload).t)
        else:
          t = read(self._decode(payload)[field])
      except Exception:  # pylint: disable=broad-except
        append(None)
        continue
      append(t if lo <= t <= hi else None)
    return out

  def event_time_fn(self) -> 'EventTimeFn':
    """``event_time_of`` as a read's timestamp policy, with ``many`` for
    runs of records."""
    return EventTimeFn(self)

  def _validate(self, doc: dict, raw, now: float,
                default_time: Optional[float]) -> tuple:
    """One decoded record -> (event_id, key, time, features, window values,
    label); raises _Invalid (with the event id when readable).

    The one validation of every input: byte payloads after decoding
    (``parse``) and typed rows (``parse_documents``).
    """
    s = self.schema
    try:
      self._check_fields(doc)
      self._check_types(doc)
      event_id, key = self._identity(doc, raw)
      t = self._event_time(doc, raw, now, default_time)
    except _Invalid as e:
      if e.event_id is None and s.id_field and type(
          doc.get(s.id_field)) in (str, int):
        e.event_id = str(doc[s.id_field])
      raise
    return (event_id, key, t, self._feature_getter(doc),
            self._window_getter(doc),
            doc.get(s.label_field, math.nan) if s.label_field else math.nan)

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
    raws = records if isinstance(records, list) else list(records)
    if not set(map(type, raws)) <= _RECORD_TYPES:
      raws = [_to_raw(r) for r in raws]
    payloads = [r.payload for r in raws]
    if self._numeric_csv is not None and raws:
      parsed = self._parse_numeric_csv(raws, payloads, now, default_time)
      if parsed is not None:
        return parsed
    if self._typed is not None:
      docs, typed = self._typed.decode_all(payloads, self._max_payload)
      return self._assemble(raws, payloads, docs, now, default_time,
                            self._validate_record, typed=typed)
    return self._assemble(raws, payloads, self._decode_all(payloads), now,
                          default_time, self._validate_record)

  def _parse_numeric_csv(self, raws, payloads, now, default_time):
    """A chunk of all-float CSV lines parsed in one go (pyarrow's C++ CSV
    reader) when every line is plain: digits, signs, dots, exponents and
    commas only, the right number of non-empty values, all finite, from
    one source, every event time in range. Python's float() and Arrow's
    parser both round correctly, so such lines give exactly the values
    the row-by-row path gives (tests/parse_documents_test.py checks the
    parsers agree). None: the chunk takes the general path."""
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    from pyarrow import csv as pa_csv  # pylint: disable=import-outside-toplevel
    layout = self._numeric_csv
    n = len(raws)
    source = raws[0].source
    if any(r.source != source for r in raws) or not all(payloads):
      return None
    if max(map(len, payloads)) > self._max_payload:
      return None
    block = b'\n'.join(payloads)
    if block.translate(None, _PLAIN_NUMERIC_CSV):
      return None
    names = layout['names']
    try:
      table = pa_csv.read_csv(
          pa.BufferReader(block),
          read_options=pa_csv.ReadOptions(column_names=names,
                                          use_threads=False,
                                          block_size=len(block) + 1),
          convert_options=pa_csv.ConvertOptions(
              column_types={c: pa.float64() for c in names}))
    except (pa.ArrowInvalid, pa.ArrowException):
      return None
    if table.num_rows != n or any(c.null_count for c in table.columns):
      return None
    matrix = np.column_stack([c.to_numpy() for c in table.columns])
    times = np.asarray([
        r.timestamp if r.timestamp is not None else
        default_time if default_time is not None else now for r in raws],
                       dtype=np.float64)
    s = self.schema
    if not (np.isfinite(matrix).all() and
            ((times >= s.min_event_time) &
             (times <= now + s.max_future_s)).all()):
      return None  # the rows with a problem get their reasons row by row
    label = layout['label']
    dead: list[dl.DeadLetter] = []
    batch = self._make_batch(
        source, np.asarray([r.position for r in raws], dtype=np.int64),
        payloads, [f'{source}@{r.position}' for r in raws], [''] * n, times,
        _float32(matrix[:, layout['features']]),
        _float32(matrix[:, layout['window']]),
        matrix[:, label].copy() if label is not None else (
            np.full(n, math.nan) if s.label_field else None),
        raws, now, dead)
    return ([] if batch is None else [batch]), dead

  def parse_documents(self, documents: Iterable, *,
                      default_time: Optional[float] = None
                     ) -> tuple[list[EventBatch], list[dl.DeadLetter]]:
    """Typed rows (Parquet, tf.Example, ...) -> EventBatches + dead letters.

    The same validation as ``parse`` (fields, types, ids, keys, finite
    values, event-time range), minus the byte decoding: the reader already
    decoded each row into a dict. Before validating, values are normalized
    the way a JSON payload would carry them: None is an absent field,
    numpy scalars become Python numbers, ``datetime`` values become epoch
    seconds (ms with ``time_unit: ms``, ISO strings with ``iso`` or for
    string fields) and bytes become UTF-8 text.

    Args:
      documents: ``Document`` items (or any items with its attributes).
        ``doc`` is the row as a dict; a reader that could not decode a
        row passes an Exception instead (dead letter: parse/malformed).
        ``payload`` is the row's original bytes when it has any (e.g. a
        serialized tf.Example); otherwise the row as JSON is the payload
        kept for dead letters.
      default_time: as for ``parse``.
    """
    now = self._now_fn()
    items = list(documents)
    docs, payloads = [], []
    for item in items:
      doc = item.doc
      if type(doc) is dict:
        try:
          doc = self._normalize(doc)
        except Exception:  # pylint: disable=broad-except
          doc = None  # the full validation says why
      else:
        doc = None
      docs.append(doc)
      payloads.append(item.payload if item.payload is not None else
                      _row_json(item.doc))
    return self._assemble(items, payloads, docs, now, default_time,
                          self._validate_document)

  def _validate_record(self, raw, payload, now, default_time) -> tuple:
    """The full validation of one raw record (raises _Invalid)."""
    if not payload:
      raise _Invalid(dl.EMPTY_VALUE, 'empty payload or tombstone',
                     stage=dl.PARSE)
    if len(payload) > self._max_payload:
      raise _Invalid(dl.TOO_LARGE, f'payload of {len(payload)} bytes, '
                     f'limit {self._max_payload}', stage=dl.PARSE)
    return self._validate(self._decode(payload), raw, now, default_time)

  def _validate_document(self, item, unused_payload, now,
                         default_time) -> tuple:
    """The full validation of one Document (raises _Invalid)."""
    doc = item.doc
    if isinstance(doc, Exception):
      raise _Invalid(dl.MALFORMED, f'undecodable row: {doc}'[:500],
                     stage=dl.PARSE)
    if not isinstance(doc, dict):
      raise _Invalid(dl.NOT_AN_OBJECT, f'row of type {type(doc).__name__}, '
                     f'expected a mapping', stage=dl.PARSE)
    try:
      doc = self._normalize(doc)
    except _Invalid as e:
      event_id = doc.get(self.schema.id_field) if self.schema.id_field else None
      if type(event_id) in (str, int):
        e.event_id = str(event_id)
      raise
    return self._validate(doc, item, now, default_time)

  # The fast path. Per row it only decodes, looks up the row's field set
  # and checks the exact types of its values in one tuple; the other checks
  # (finite floats, non-empty ids and keys, event-time units and range) run
  # on columns of the chunk. A row the fast path does not accept outright
  # goes through the full validation above, so reasons and details are the
  # full validation's; the fast path only ever accepts rows the full
  # validation accepts, with the same values.

  def _decode_all(self, payloads: list) -> list:
    """Payloads -> dicts, or None where the full path must look."""
    docs = []
    append = docs.append
    limit = self._max_payload
    if self.input_format == 'json':
      loads = orjson.loads
      for payload in payloads:
        if not payload or len(payload) > limit:
          append(None)
          continue
        try:
          doc = loads(payload)
        except orjson.JSONDecodeError:
          doc = None
        append(doc if type(doc) is dict else None)
      return docs
    simple_csv = self._simple_csv() if self.input_format == 'csv' else None
    for payload in payloads:
      if not payload or len(payload) > limit:
        append(None)
        continue
      if simple_csv is not None:
        doc = simple_csv(payload)
        if doc is not None:
          append(doc)
          continue
      try:
        append(self._decode(payload))
      except Exception:  # pylint: disable=broad-except
        append(None)
    return docs

  def _simple_csv(self) -> Optional[Callable[[bytes], Optional[dict]]]:
    """A decoder for the CSV lines csv.reader would split at every comma
    (no quotes, no carriage returns), with only float, int and string
    columns; None when the schema has other column kinds.

    It returns what _decode_csv returns for such a line, or None where it
    cannot be sure (an empty value: optional columns treat it as absent;
    a value that does not convert: _decode_csv names the error).
    """
    kinds = [self._types[name] for name in self._csv_columns]
    if not all(k in ('float', 'int', 'string') for k in kinds):
      return None
    names = self._csv_columns
    width = len(names)
    if all(k == 'float' for k in kinds):
      convert = lambda values: map(float, values)
    else:
      funcs = [float if k == 'float' else int if k == 'int' else str
               for k in kinds]
      convert = lambda values: [f(v) for f, v in zip(funcs, values)]

    def decode(payload: bytes) -> Optional[dict]:
      if b'"' in payload or b'\r' in payload:
        return None
      try:
        values = payload.decode('utf-8').rstrip('\n').split(',')
        if len(values) != width or '' in values:
          return None
        return dict(zip(names, convert(values)))
      except (UnicodeDecodeError, ValueError):
        return None

    return decode

  def _shape(self, doc: dict) -> Optional['_Shape']:
    keys = doc.keys()
    for shape in self._shapes:
      if keys == shape.names:
        return shape
    names = frozenset(keys)
    if names in self._unshaped:
      return None
    shape = _Shape.build(self, names)
    if shape is None:
      if len(self._unshaped) < 64:
        self._unshaped.add(names)
    elif len(self._shapes) < 8:
      self._shapes.append(shape)
    return shape

  def _fast_columns(self, shape: '_Shape', items: list, vals: list,
                    now: float, default_time: Optional[float],
                    typed: bool = False):
    """Columns of rows of one shape, and which rows passed every check.

    ``typed``: the values come from _TypedJson (JSON integers of float
    fields already floats).

    Returns:
      (ok bool [m], ids, keys, times float64 [m], features float32 [m, F],
       window values float32 [m, W], labels float64 [m] or None), or None
      when a column cannot be built (the rows take the full path).
    """
    m = len(vals)
    ok = np.ones(m, dtype=bool)
    s = self.schema
    try:
      floats = None
      if shape.floats:
        width = shape.float_count
        # From one flat iterator: no per-row sequences for numpy to walk.
        floats = np.fromiter(itertools.chain.from_iterable(
            map(shape.floats, vals)), dtype=np.float64,
                             count=m * width).reshape(m, width)
        ok &= np.isfinite(floats).all(axis=1)
        if typed:
          # A JSON integer beyond 2**53 in a float field was rounded to a
          # double by the decoder; the full path converts the integer
          # itself. Such rows take the full path.
          ok &= (np.abs(floats) < 2.0**53).all(axis=1)
      if (shape.float_features is not None and
          not (np.abs(floats) >= 2.0**53).any()):
        # Taken from the float columns: float64 holds every value exactly
        # (ints below 2**53 included), so float32 rounds each once, as a
        # direct conversion does.
        features = floats[:, shape.float_features].astype(np.float32)
        window = floats[:, shape.float_window].astype(np.float32)
      else:
        features = _float32(list(map(shape.features, vals))).reshape(
            m, len(self._features))
        window = _float32(list(map(shape.window, vals))).reshape(
            m, len(self._window_features))
      labels = (np.asarray(list(map(shape.label, vals)), dtype=np.float64)
                if shape.label is not None else
                np.full(m, math.nan) if s.label_field else None)
      if shape.id is not None:
        ids = list(map(shape.id, vals))
        if shape.id_is_str is not True:
          ids = [v if type(v) is str else str(v) for v in ids]
        if '' in ids:
          ok &= np.asarray([v != '' for v in ids])
      else:
        ids = [f'{it.source}@{it.position}' for it in items]
      if shape.key is not None:
        keys = list(map(shape.key, vals))
        if shape.key_is_str is not True:
          keys = [v if type(v) is str else str(v) for v in keys]
        if '' in keys:
          ok &= np.asarray([v != '' for v in keys])
      else:
        keys = [''] * m
      times = self._fast_times(shape, items, vals, ok, now, default_time)
    except (ValueError, TypeError, OverflowError):
      return None
    ok &= (times >= s.min_event_time) & (times <= now + s.max_future_s)
    return ok, ids, keys, times, features, window, labels

  def _fast_times(self, shape, items, vals, ok, now, default_time):
    """Event times as the full path reads them; rows it would reject (or
    reads differently) are cleared in ``ok``."""
    m = len(vals)
    if shape.time is None:
      return np.asarray([
          it.timestamp if it.timestamp is not None else
          default_time if default_time is not None else now
          for it in items], dtype=np.float64)
    raw_times = list(map(shape.time, vals))
    kinds = set(map(type, raw_times))
    unit = self.schema.time_unit
    if str not in kinds and unit != 'iso' and all(
        k in (int, float) for k in kinds):
      t = np.asarray(raw_times, dtype=np.float64)
      if int in kinds:
        # Beyond 2**53 float(int) and numpy may round differently.
        big = np.abs(t) >= 2.0**53
        if big.any():
          ok &= ~big
      if unit == 'ms':
        t = t / 1000.0
      elif unit == 'auto':
        t = np.where(np.abs(t) > _TimeReader._MS_THRESHOLD, t / 1000.0, t)
      finite = np.isfinite(t)
      ok &= finite
      return np.where(finite, t, 0.0)
    t = np.zeros(m, dtype=np.float64)
    read = self._time
    for i, value in enumerate(raw_times):
      try:
        t[i] = read(value)
      except _Invalid:
        ok[i] = False
    return t

  def _assemble(self, items: list, payloads: list, docs: list, now: float,
                default_time: Optional[float], validate_one, typed=None
               ) -> tuple[list[EventBatch], list[dl.DeadLetter]]:
    """Fast path where it applies, the full validation elsewhere; returns
    one EventBatch per source and the dead letters, in record order.

    ``typed``: (record indices, structs) of rows _TypedJson decoded
    (their ``docs`` entries are None), one more fast-path group.
    """
    n = len(items)
    # Rows the fast path may take, grouped by field set. (The hot loop of
    # the parse: locals only, one dict lookup per row for the types.)
    groups: dict[int, tuple] = {}
    shape = None
    size = -1
    getter = verdicts = add_index = add_values = None
    good_types = ()
    for i, doc in enumerate(docs):
      if doc is None:
        continue
      if len(doc) != size:
        shape = self._shape(doc)
        if shape is None:
          size = -1
          continue
        size, getter, verdicts = len(shape.names), shape.getter, shape.verdicts
        good_types = ()
        group = groups.get(id(shape))
        if group is None:
          group = groups[id(shape)] = (shape, [], [])
        add_index, add_values = group[1].append, group[2].append
      try:
        # As many fields as the shape and all of the shape's present: the
        # same field set.
        values = getter(doc)
      except KeyError:
        continue
      types = tuple(map(type, values))
      if types != good_types:
        ok = verdicts.get(types)
        if ok is None:
          ok = shape.types_ok(types)
        if not ok:
          continue
        good_types = types
      add_index(i)
      add_values(values)
    group_list = [(shape, idx, vals, False)
                  for shape, idx, vals in groups.values()]
    if typed is not None and typed[0]:
      # Its own group even if another has the same field set: a group's
      # rows must be in record order.
      group_list.insert(0, (self._typed.shape, typed[0], typed[1], True))
    columns = []
    for shape, idx, vals, from_typed in group_list:
      cols = self._fast_columns(
          shape, items if len(idx) == n else [items[i] for i in idx], vals,
          now, default_time, typed=from_typed)
      if cols is not None:
        columns.append((idx, cols))
    if len(columns) == 1 and len(columns[0][0]) == n and columns[0][1][
        0].all():
      # The common chunk: every record in one group, all accepted.
      sources = set(map(_SOURCE_OF, items))
      if len(sources) == 1:
        return self._batch_from_columns(sources.pop(), items, payloads,
                                        columns[0][1], np.arange(n), now, [])
    fast_rows = {}  # record index -> (group columns, row in group)
    for idx, cols in columns:
      ok = cols[0]
      for j, i in enumerate(idx):
        if ok[j]:
          fast_rows[i] = (cols, j)
    # Everything else: the full validation, in record order.
    dead: list[dl.DeadLetter] = []
    slow_good = {}
    if len(fast_rows) < n:
      for i in range(n):
        if i in fast_rows:
          continue
        item = items[i]
        try:
          slow_good[i] = validate_one(item, payloads[i], now, default_time)
        except _Invalid as e:
          dead.append(dl.DeadLetter.of_record(
              item, stage=e.stage, reason=e.reason, detail=e.detail,
              event_id=e.event_id, payload=payloads[i], time=now))
        except Exception as e:  # pylint: disable=broad-except
          # A parser bug must not stop the job: dead-letter and count it.
          dead.append(dl.DeadLetter.of_record(
              item, stage=dl.PARSE, reason=dl.MALFORMED,
              detail=f'unexpected {type(e).__name__}: {e}'[:500],
              payload=payloads[i], time=now))
    if not slow_good and len(columns) == 1:
      idx, cols = columns[0]
      keep = np.flatnonzero(cols[0])
      sources = {items[idx[j]].source for j in keep}
      if len(sources) == 1:
        return self._batch_from_columns(
            sources.pop(), [items[idx[j]] for j in keep],
            [payloads[idx[j]] for j in keep], cols, keep, now, dead)
    # Mixed: row by row, in record order.
    rows = _Rows()
    rows.dead = dead
    for i in range(n):
      if i in fast_rows:
        cols, j = fast_rows[i]
        _, ids, keys, times, features, window, labels = cols
        rows.add(items[i], payloads[i], (
            ids[j], keys[j], float(times[j]), features[j], window[j],
            math.nan if labels is None else labels[j]))
      elif i in slow_good:
        rows.add(items[i], payloads[i], slow_good[i])
    return self._batches(rows, now)

  def _batch_from_columns(self, source, items, payloads, cols, keep, now,
                          dead):
    _, ids, keys, times, features, window, labels = cols
    if len(keep) == len(ids):
      pick = lambda seq: seq
    else:
      pick = lambda seq: [seq[j] for j in keep]
    batch = self._make_batch(
        source, np.asarray([it.position for it in items], dtype=np.int64),
        payloads, pick(ids), pick(keys), times[keep], features[keep],
        window[keep], None if labels is None else labels[keep],
        items, now, dead)
    return ([] if batch is None else [batch]), dead

  def _normalize(self, doc: dict) -> dict:
    """Values as a JSON payload would carry them (see parse_documents)."""
    plain = (str, float, int, bool)
    if all(type(v) in plain for v in doc.values()):
      return doc
    out = {}
    for name, value in doc.items():
      if value is None:
        continue
      if type(value) not in plain:
        value = self._plain_value(name, value)
      out[name] = value
    return out

  def _plain_value(self, name: str, value):
    if isinstance(value, np.generic):
      return value.item()
    if isinstance(value, datetime.datetime):
      if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
      unit = self.schema.time_unit
      if unit == 'iso' or (self._types.get(name) == 'string'):
        return value.isoformat()
      seconds = value.timestamp()
      return seconds * 1000.0 if unit == 'ms' else seconds
    if isinstance(value, (bytes, bytearray)):
      try:
        return bytes(value).decode('utf-8')
      except UnicodeDecodeError:
        raise _Invalid(dl.MALFORMED, f'field {name!r}: bytes that are not '
                       f'UTF-8', stage=dl.PARSE) from None
    return value  # lists, dicts, ...: rejected by the type checks

  def _batches(self, rows: '_Rows', now: float
              ) -> tuple[list[EventBatch], list[dl.DeadLetter]]:
    """Rows collected one by one -> one EventBatch per source."""
    dead = rows.dead
    batches = []
    n_features = len(self._features)
    n_window = len(self._window_features)
    has_label = self.schema.label_field is not None
    for source, (pos, raw_payloads, ids, keys, times, feats, wvals,
                 labels, items) in rows.by_source.items():
      n = len(ids)
      batch = self._make_batch(
          source, np.asarray(pos, dtype=np.int64), raw_payloads, ids, keys,
          np.asarray(times, dtype=np.float64),
          _float32(feats).reshape(n, n_features),
          _float32(wvals).reshape(n, n_window),
          np.asarray(labels, dtype=np.float64) if has_label else None,
          items, now, dead)
      if batch is not None:
        batches.append(batch)
    return batches, dead

  def _make_batch(self, source, positions, raw_payloads, ids, keys, times,
                  features, window_values, labels, items, now, dead
                 ) -> Optional[EventBatch]:
    """The EventBatch of validated rows (``items``: their source records);
    rows whose numbers overflow float32 become dead letters (appended to
    ``dead``)."""
    n = len(ids)
    # Finite as doubles can still overflow float32 (e.g. 1e300).
    bad = ~np.isfinite(features).all(axis=1)
    if window_values.shape[1]:
      bad |= ~np.isfinite(window_values).all(axis=1)
    keep = None
    if bad.any():
      for i in np.flatnonzero(bad):
        dead.append(dl.DeadLetter.of_record(
            items[i], stage=dl.VALIDATE, reason=dl.NON_FINITE,
            detail='a numeric field overflows float32', event_id=ids[i],
            payload=raw_payloads[i], time=now))
      keep = np.flatnonzero(~bad)
      if not len(keep):
        return None
    # Kafka records are kept (key, headers, timestamp) for dead letters of
    # later stages; file rows are named by source and position.
    records = list(items) if n and type(items[0]) is KafkaRecord else []
    batch = EventBatch(
        source=source, positions=positions, raw=raw_payloads, ids=ids,
        keys=keys, event_time=times, features=features,
        window_values=window_values, labels=labels,
        read_time=np.full(n, now, dtype=np.float64), records=records)
    return batch if keep is None else batch.take(keep)


class _Shape:
  """Rows with exactly one set of the schema's fields, for the fast path.

  ``getter(doc)`` gives the values of those fields (schema order) as a
  tuple; the other attributes pick a role's value(s) out of that tuple
  (or, with ``positions_getter=_attr_getter``, out of a _TypedJson struct
  whose attribute ``f<i>`` is the i-th value). Only field sets the full
  validation can accept get a shape: no unknown fields, every required
  field, and the id, key, time, feature and window fields present.
  """

  def __init__(self, parser: 'RecordParser', present: tuple[str, ...],
               positions_getter=None):
    s = parser.schema
    positions_getter = positions_getter or _tuple_getter
    self.names = frozenset(present)
    self.getter = _getter(present)
    self.kinds = tuple(parser._types[n] for n in present)
    index = {n: i for i, n in enumerate(present)}
    pick = lambda positions: positions_getter(positions)
    role = lambda name: (None if not name or name not in index else
                         positions_getter([index[name]], scalar=True))
    self.id = role(s.id_field)
    self.key = role(s.key_field)
    self.time = role(s.time_field)
    self.label = role(s.label_field)
    kind_of = parser._types
    self.id_is_str = s.id_field and kind_of[s.id_field] == 'string'
    self.key_is_str = s.key_field and kind_of[s.key_field] == 'string'
    self.features = pick([index[n] for n in parser._features])
    self.window = pick([index[n] for n in parser._window_features])
    floats = [i for i, k in enumerate(self.kinds) if k == 'float']
    self.floats = pick(floats) if floats else None
    self.float_count = len(floats)
    # Features and window features as columns of the float matrix, when
    # they are all float fields.
    column = {p: j for j, p in enumerate(floats)}
    feature_pos = [index[n] for n in parser._features]
    window_pos = [index[n] for n in parser._window_features]
    if all(p in column for p in feature_pos + window_pos):
      self.float_features = np.asarray([column[p] for p in feature_pos],
                                       dtype=np.int64)
      self.float_window = np.asarray([column[p] for p in window_pos],
                                     dtype=np.int64)
    else:
      self.float_features = self.float_window = None
    self.verdicts: dict[tuple, bool] = {}

  @classmethod
  def build(cls, parser: 'RecordParser', names: frozenset
           ) -> Optional['_Shape']:
    s = parser.schema
    if not names <= parser._all_names or not parser._required <= names:
      return None
    needed = [f for f in (s.id_field, s.key_field, s.time_field) if f]
    needed += list(parser._features) + list(parser._window_features)
    if not all(f in names for f in needed):
      return None
    return cls(parser, tuple(n for n in s.field_names if n in names))

  def types_ok(self, types: tuple) -> bool:
    """Whether every value's exact type is one its kind accepts (the full
    check also takes integral floats for ints: those go the full path)."""
    verdict = self.verdicts.get(types)
    if verdict is None:
      verdict = all(
          t in _FAST_TYPES[k] if k in _FAST_TYPES else t in (int, float, str)
          for t, k in zip(types, self.kinds))
      if len(self.verdicts) < 256:
        self.verdicts[types] = verdict
    return verdict


# msgspec types of the schema's field kinds, for _TypedJson: exactly the
# values _FAST_TYPES admits (a JSON integer in a float field comes out as a
# float; booleans are not numbers here, as in the full check).
_TYPED_KINDS = {'float': float, 'int': int, 'string': str, 'bool': bool,
                'timestamp': Union[int, float, str]}


class _TypedJson:
  """Decodes JSON objects that have every schema field straight into
  typed values: msgspec checks the syntax, the field set (no unknown or
  missing fields) and each value's type in one C call per record, where
  the general path builds a dict (orjson) and then checks its key set and
  value types in Python (~2x the time). A record it does not take
  (malformed, other fields, other types, an optional field absent) gets
  the general path; a record it takes gives the values the general path
  gives (tests/parse_documents_test.py checks both on hostile input).
  """

  def __init__(self, parser: 'RecordParser'):
    names = parser.schema.field_names
    # Attribute names f0, f1, ...: field names need not be identifiers.
    attrs = [f'f{i}' for i in range(len(names))]
    struct = msgspec.defstruct(
        'TypedEvent', [(a, _TYPED_KINDS[parser._types[n]])
                       for a, n in zip(attrs, names)],
        rename=dict(zip(attrs, names)), forbid_unknown_fields=True,
        # Flat values only: nothing for the garbage collector to track.
        gc=False)
    self._decode = msgspec.json.Decoder(struct).decode
    # The shape's getters read the structs' attributes: no value tuples.
    self.shape = _Shape(parser, tuple(names), positions_getter=_attr_getter)

  @classmethod
  def build(cls, parser: 'RecordParser') -> Optional['_TypedJson']:
    """None when rows with every field would not take the fast path anyway
    (e.g. a field kind it does not know)."""
    names = parser.schema.field_names
    if not names or any(parser._types[n] not in _TYPED_KINDS for n in names):
      return None
    if _Shape.build(parser, frozenset(names)) is None:
      return None
    return cls(parser)

  def decode_all(self, payloads: list, limit: int
                ) -> tuple[list, tuple[list, list]]:
    """-> (docs: orjson's dict, or None, for the records not taken here;
    (indices, structs) of the records taken)."""
    decode, loads = self._decode, orjson.loads
    n = len(payloads)
    try:
      # The common chunk: every record taken, in a C-level loop.
      if n and 0 < min(map(len, payloads)) and max(map(len,
                                                       payloads)) <= limit:
        return [None] * n, (list(range(n)), list(map(decode, payloads)))
    except Exception:  # pylint: disable=broad-except
      pass  # a record to look at: one by one
    docs = []
    append = docs.append
    idx, vals = [], []
    for i, payload in enumerate(payloads):
      if not payload or len(payload) > limit:
        append(None)
        continue
      try:
        vals.append(decode(payload))
        idx.append(i)
        append(None)
        continue
      except Exception:  # pylint: disable=broad-except
        pass  # the general path says what is wrong, or takes it
      try:
        doc = loads(payload)
      except orjson.JSONDecodeError:
        doc = None
      append(doc if type(doc) is dict else None)
    return docs, (idx, vals)


def _time_only_decoder(field: str) -> Callable[[bytes], Any]:
  """bytes -> an object whose ``t`` is the JSON object's ``field`` value;
  raises on malformed JSON, a non-object, an absent field or a value that
  is no number or string. The other fields are checked, not built."""
  struct = msgspec.defstruct('EventTime', [('t', Union[int, float, str])],
                             rename={'t': field})
  return msgspec.json.Decoder(struct).decode


_SOURCE_OF = operator.attrgetter('source')


def _attr_getter(positions: Sequence[int], scalar: bool = False):
  """A _TypedJson struct -> its values at ``positions`` (attributes f<i>),
  as _tuple_getter gives them from a values tuple."""
  names = tuple(f'f{p}' for p in positions)
  if scalar:
    return operator.attrgetter(names[0])
  if not names:
    return lambda values: ()
  if len(names) == 1:
    get = operator.attrgetter(names[0])
    return lambda values: (get(values),)
  return operator.attrgetter(*names)


def _tuple_getter(positions: Sequence[int], scalar: bool = False):
  """values tuple -> the values at ``positions`` (a tuple), or the single
  value with ``scalar``."""
  positions = tuple(positions)
  if scalar:
    return operator.itemgetter(positions[0])
  if not positions:
    return lambda values: ()
  if len(positions) == 1:
    p = positions[0]
    return lambda values: (values[p],)
  return operator.itemgetter(*positions)


class EventTimeFn:
  """A RecordParser's ``event_time_of`` as a ReadFromKafka timestamp
  policy; ``many(records)`` gives a whole run's times in one call (the
  readers use it when present). Picklable with its parser."""

  def __init__(self, parser: 'RecordParser'):
    self._parser = parser

  def __call__(self, record) -> float:
    return self._parser.event_time_of(record)

  def many(self, records: Sequence) -> list[float]:
    return self._parser.event_times_of(records)


class Document(NamedTuple):
  """A typed row to validate (``RecordParser.parse_documents``).

  Attributes:
    source: 'file:<path>' (or 'kafka:<topic>/<partition>').
    position: record number in the file (or offset).
    doc: the row as a dict; an Exception when the reader could not decode
      the row (a dead letter).
    timestamp: record/file time in epoch seconds, or None.
    key: the record key, or None.
    payload: the row's original bytes, or None (the row as JSON is kept).
  """
  source: str
  position: int
  doc: Any
  timestamp: Optional[float] = None
  key: Optional[bytes] = None
  payload: Optional[bytes] = None


def _row_json(doc) -> bytes:
  try:
    return orjson.dumps(doc, default=str, option=(
        orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))
  except Exception:  # pylint: disable=broad-except
    return repr(doc).encode('utf-8', 'replace')


class _Rows:
  """Columns of validated rows per source, and the dead letters."""

  __slots__ = ('by_source', 'dead')

  def __init__(self):
    self.by_source: dict[str, tuple] = {}
    self.dead: list[dl.DeadLetter] = []

  def add(self, raw, payload, row) -> None:
    cols = self.by_source.get(raw.source)
    if cols is None:
      cols = self.by_source[raw.source] = ([], [], [], [], [], [], [], [], [])
    event_id, key, t, feats, wvals, label = row
    cols[0].append(raw.position)
    cols[1].append(payload)
    cols[2].append(event_id)
    cols[3].append(key)
    cols[4].append(t)
    cols[5].append(feats)
    cols[6].append(wvals)
    cols[7].append(label)
    cols[8].append(raw)


class _ParseFn(beam.DoFn):
  """Chunks of raw records -> EventBatches (main) + DeadLetters (tagged).

  A chunk of ``Document`` items (typed rows from Parquet/TFRecord files)
  goes through ``parse_documents``: the same validation without decoding.
  """

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
    if records and isinstance(records[0], Document):
      batches, dead = self._parser.parse_documents(records)
    else:
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
  """Raw records or Documents (or lists of them) -> EventBatch, with dead
  letters.

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


__all__: Sequence[str] = ['Document', 'ParseEvents', 'RecordParser',
                          'INPUT_FORMATS']
