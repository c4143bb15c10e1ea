"""RecordParser: raw records or typed rows -> EventBatches + dead letters.

The parser only orchestrates: the input format's decoder (decoders/)
turns bytes into dicts (or takes a chunk on its own fast path), the fast
path (fast.py) takes the rows it can check on columns, the full
validation (validate.py) takes every other row, and batches.py makes one
EventBatch per source. Every record either becomes a row or a DeadLetter
with a reason code; nothing raises, nothing is dropped.
"""

import math
import operator
import time
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from transforms import dead_letters as dl
from transforms.events import EventBatch
from transforms.parse import batches as batches_lib
from transforms.parse.decoders import DECODERS, DecodeOptions
from transforms.parse.errors import Invalid
from transforms.parse.fast import FastPath
from transforms.parse.inputs import RECORD_TYPES, Normalizer, row_json, to_raw
from transforms.parse.times import EventTimeFn, EventTimes
from transforms.parse.validate import Validator
from transforms.schema import EventSchema

# Larger payloads are dead-lettered unparsed: a 100 MB "event" is an attack
# or a bug, and parsing it would stall the worker.
DEFAULT_MAX_PAYLOAD_BYTES = 1_000_000

_SOURCE_OF = operator.attrgetter('source')


class RecordParser:
  """Turns raw records into validated rows; pure Python, no Beam.

  Used by the ParseEvents DoFn, by the backfill readers and by tests. See
  the package docstring for what is validated.

  Args:
    schema: the events' schema.
    input_format: a key of ``DECODERS`` ('json', 'csv', 'avro').
    confluent_wire_format: Avro payloads carry the Confluent header.
    expected_schema_id: the schema id that header must carry (None: any).
    max_payload_bytes: larger payloads are dead letters (too_large).
    now_fn: the clock (event times ahead of it; times of records without).

  Raises:
    ValueError: an unknown input format, or a schema the format's decoder
      cannot use.
  """

  def __init__(self, schema: EventSchema, input_format: str = 'json', *,
               confluent_wire_format: bool = False,
               expected_schema_id: Optional[int] = None,
               max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
               now_fn: Callable[[], float] = time.time):
    decoder_cls = DECODERS.get(input_format)
    if decoder_cls is None:
      raise ValueError(f'input_format {input_format!r}: use one of '
                       f'{tuple(DECODERS)}')
    self.schema = schema
    self.input_format = input_format
    self._decoder_cls = decoder_cls
    self._options = DecodeOptions(confluent_wire_format, expected_schema_id)
    self._max_payload = max_payload_bytes
    self._now_fn = now_fn
    self._init_caches()

  # Built from the settings above, here and where the parser is unpickled
  # (decoders, getters and shapes need not be picklable).
  _CACHES = ('_decoder', '_validator', '_fast', '_times', '_normalize')

  def _init_caches(self) -> None:
    s = self.schema
    self._decoder = self._decoder_cls(s, self._options)
    self._validator = Validator(s)
    self._fast = FastPath(s, self._validator.read_time)
    self._times = EventTimes(
        s, self._decoder.time_value(s.time_field) if s.time_field else None,
        self._max_payload, self._now_fn)
    self._normalize = Normalizer({f.name: f.type for f in s.fields},
                                 s.time_unit)

  def __getstate__(self):
    state = dict(self.__dict__)
    for name in self._CACHES:
      state.pop(name, None)
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_caches()

  # Event times, for the readers.

  def event_time_of(self, record) -> Optional[float]:
    """The event time of a raw record for the read's timestamps/watermark,
    or None when the record gives no valid one.

    Never raises. None means the record will be a dead letter at parse
    (no payload, too large, malformed, no or a bad time, a time before
    the schema's earliest or further ahead than ``max_future_s``): the
    readers do not let such a record move the watermark, so one bad record
    cannot make valid ones late (e.g. a time in the year 9999, or a record
    stamped with its arrival time while events lag their source).
    Schemas without a time field use the record's timestamp.
    """
    return self._times.of([record])[0]

  def event_times_of(self, records: Sequence) -> list[Optional[float]]:
    """``event_time_of`` of each record (KafkaRecord or RawRecord), in one
    call for a run of records (the readers' timestamps)."""
    return self._times.of(records)

  def event_time_fn(self) -> EventTimeFn:
    """``event_time_of`` as a read's timestamp policy, with ``many`` for
    runs of records."""
    return EventTimeFn(self)

  # Parsing.

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
    if not set(map(type, raws)) <= RECORD_TYPES:
      raws = [to_raw(r) for r in raws]
    payloads = [r.payload for r in raws]
    decoder = self._decoder
    if decoder.parse_chunk is not None and raws:
      parsed = decoder.parse_chunk(raws, payloads, now, default_time,
                                   self._max_payload)
      if parsed is not None:
        return parsed
    if decoder.typed is not None:
      docs, (idx, vals) = decoder.typed.decode_all(payloads, self._max_payload)
      typed = (decoder.typed.shape, idx, vals)
    else:
      docs, typed = decoder.decode_all(payloads, self._max_payload), None
    return self._assemble(raws, payloads, docs, now, default_time,
                          self._validate_record, typed=typed)

  def parse_documents(self, documents: Iterable, *,
                      default_time: Optional[float] = None
                     ) -> tuple[list[EventBatch], list[dl.DeadLetter]]:
    """Typed rows (Parquet, tf.Example, ...) -> EventBatches + dead letters.

    The same validation as ``parse`` (fields, types, ids, keys, finite
    values, event-time range), minus the byte decoding: the reader already
    decoded each row into a dict. Before validating, values are normalized
    the way a JSON payload would carry them (inputs.Normalizer): None is
    an absent field, numpy scalars become Python numbers, ``datetime``
    values become epoch seconds (ms with ``time_unit: ms``, ISO strings
    with ``iso`` or for string fields) and bytes become UTF-8 text.

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
    normalize = self._normalize
    for item in items:
      doc = item.doc
      if type(doc) is dict:
        try:
          doc = normalize(doc)
        except Exception:  # pylint: disable=broad-except
          doc = None  # the full validation says why
      else:
        doc = None
      docs.append(doc)
      payloads.append(item.payload if item.payload is not None else
                      row_json(item.doc))
    return self._assemble(items, payloads, docs, now, default_time,
                          self._validate_document)

  def _validate_record(self, raw, payload, now, default_time) -> tuple:
    """The full validation of one raw record (raises Invalid)."""
    if not payload:
      raise Invalid(dl.EMPTY_VALUE, 'empty payload or tombstone',
                    stage=dl.PARSE)
    if len(payload) > self._max_payload:
      raise Invalid(dl.TOO_LARGE, f'payload of {len(payload)} bytes, '
                    f'limit {self._max_payload}', stage=dl.PARSE)
    return self._validator.row(self._decoder.decode(payload), raw, now,
                               default_time)

  def _validate_document(self, item, unused_payload, now,
                         default_time) -> tuple:
    """The full validation of one Document (raises Invalid)."""
    doc = item.doc
    if isinstance(doc, Exception):
      raise Invalid(dl.MALFORMED, f'undecodable row: {doc}'[:500],
                    stage=dl.PARSE)
    if not isinstance(doc, dict):
      raise Invalid(dl.NOT_AN_OBJECT, f'row of type {type(doc).__name__}, '
                    f'expected a mapping', stage=dl.PARSE)
    try:
      doc = self._normalize(doc)
    except Invalid as e:
      event_id = doc.get(self.schema.id_field) if self.schema.id_field else None
      if type(event_id) in (str, int):
        e.event_id = str(event_id)
      raise
    return self._validator.row(doc, item, now, default_time)

  def _assemble(self, items: list, payloads: list, docs: list, now: float,
                default_time: Optional[float], validate_one, typed=None
               ) -> tuple[list[EventBatch], list[dl.DeadLetter]]:
    """Fast path where it applies, the full validation elsewhere; returns
    one EventBatch per source and the dead letters, in record order.

    Args:
      items: the records (or Documents).
      payloads: their payloads (kept in batches and dead letters).
      docs: their dicts for the fast path, None where it must not look.
      now: the clock.
      default_time: as for ``parse``.
      validate_one: (item, payload, now, default_time) -> the full
        validation's row; raises Invalid.
      typed: the rows the decoder's typed fast path read, or None (see
        FastPath.read).
    """
    n = len(items)
    columns = self._fast.read(items, docs, now, default_time, typed)
    if len(columns) == 1 and len(columns[0][0]) == n and columns[0][
        1].ok.all():
      # The common chunk: every record in one group, all accepted.
      sources = set(map(_SOURCE_OF, items))
      if len(sources) == 1:
        return batches_lib.batch_from_columns(
            sources.pop(), items, payloads, columns[0][1], np.arange(n), now,
            [])
    fast_rows = {}  # record index -> (group columns, row in group)
    for idx, cols in columns:
      ok = cols.ok
      for j, i in enumerate(idx):
        if ok[j]:
          fast_rows[i] = (cols, j)
    # Everything else: the full validation, in record order.
    dead: list[dl.DeadLetter] = []
    slow_good = _validate_rest(items, payloads, fast_rows, now, default_time,
                               validate_one, dead) if len(fast_rows) < n else {}
    if not slow_good and len(columns) == 1:
      idx, cols = columns[0]
      keep = np.flatnonzero(cols.ok)
      sources = {items[idx[j]].source for j in keep}
      if len(sources) == 1:
        return batches_lib.batch_from_columns(
            sources.pop(), [items[idx[j]] for j in keep],
            [payloads[idx[j]] for j in keep], cols, keep, now, dead)
    # Mixed: row by row, in record order (a row as validate_one gives it).
    rows = batches_lib.Rows(dead)
    for i in range(n):
      if i in fast_rows:
        cols, j = fast_rows[i]
        _, ids, keys, times, features, window, labels = cols
        rows.add(items[i], payloads[i], (
            ids[j], keys[j], float(times[j]), features[j], window[j],
            math.nan if labels is None else labels[j]))
      elif i in slow_good:
        rows.add(items[i], payloads[i], slow_good[i])
    s = self.schema
    return rows.batches(now, len(s.features), len(s.window_features),
                        s.label_field is not None)


def _validate_rest(items: list, payloads: list, fast_rows: dict, now: float,
                   default_time: Optional[float], validate_one,
                   dead: list) -> dict:
  """The full validation of the records the fast path did not take, in
  record order: their rows by record index; the others become dead letters
  (appended to ``dead``)."""
  good = {}
  for i, item in enumerate(items):
    if i in fast_rows:
      continue
    try:
      good[i] = validate_one(item, payloads[i], now, default_time)
    except Invalid as e:
      dead.append(dl.DeadLetter.of_record(
          item, stage=e.stage, reason=e.reason, detail=e.detail,
          event_id=e.event_id, payload=payloads[i], time=now))
    except Exception as e:  # pylint: disable=broad-except
      # A parser bug must not stop the job: dead-letter and count it.
      dead.append(dl.DeadLetter.of_record(
          item, stage=dl.PARSE, reason=dl.MALFORMED,
          detail=f'unexpected {type(e).__name__}: {e}'[:500],
          payload=payloads[i], time=now))
  return good
