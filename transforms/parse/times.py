"""Event times: reading a time value per unit, and the times of raw records.

A time field holds epoch seconds, epoch milliseconds or an ISO-8601 string
(the schema's ``time_unit``: s, ms, iso, or auto). The readers (Kafka,
files) time records before they are parsed, for the timestamps and the
watermark: ``EventTimes`` gives those times, None for a record that will be
a dead letter at parse, so that one bad record cannot move the watermark.
"""

import datetime
import math
from typing import Any, Callable, Optional, Sequence

from transforms import dead_letters as dl
from transforms.parse.errors import Invalid
from transforms.parse.inputs import RECORD_TYPES, to_raw
from transforms.schema import EventSchema

# Numbers above this are taken as milliseconds in 'auto' mode: 1e11 s is
# the year 5138, 1e11 ms is 1973.
MS_THRESHOLD = 1e11


class TimeReader:
  """Reads an event-time value as epoch seconds, per the schema's unit;
  raises Invalid for a value of the wrong kind or out of range."""

  def __init__(self, unit: str):
    self._unit = unit

  def __call__(self, value) -> float:
    t = type(value)
    if t is float or t is int:
      v = float(value)
      if not math.isfinite(v):
        raise Invalid(dl.NON_FINITE, f'event time is {value}')
      if self._unit == 'ms' or (self._unit == 'auto' and
                                abs(v) > MS_THRESHOLD):
        return v / 1000.0
      if self._unit == 'iso':
        raise Invalid(dl.WRONG_TYPE, 'event time must be an ISO-8601 string')
      return v
    if t is str:
      if self._unit in ('s', 'ms'):
        raise Invalid(dl.WRONG_TYPE, f'event time must be a number '
                      f'({self._unit}), got a string')
      try:
        dt = datetime.datetime.fromisoformat(value.replace('Z', '+00:00'))
      except ValueError:
        raise Invalid(dl.WRONG_TYPE,
                      f'event time {value[:40]!r} is not ISO-8601') from None
      if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
      try:
        return dt.timestamp()
      except (OverflowError, ValueError, OSError):
        raise Invalid(dl.TIME_OUT_OF_RANGE,
                      f'event time {value[:40]!r} out of range') from None
    raise Invalid(dl.WRONG_TYPE,
                  f'event time has type {t.__name__}, expected a time')


class EventTimes:
  """The event times of raw records, before they are parsed.

  Args:
    schema: the events' schema (time field, unit, accepted range).
    time_value: (decode, get): ``get(decode(payload))`` is the raw value of
      the time field; either may raise (the record has no valid time). A
      decoder gives it (``Decoder.time_value``); None without a time field.
    max_payload_bytes: larger payloads have no time (dead letters).
    now_fn: the clock, for the latest accepted time.
  """

  def __init__(self, schema: EventSchema,
               time_value: Optional[tuple[Callable[[bytes], Any],
                                          Callable[[Any], Any]]],
               max_payload_bytes: int, now_fn: Callable[[], float]):
    self._schema = schema
    self._decode, self._get = time_value or (None, None)
    self._read = TimeReader(schema.time_unit)
    self._limit = max_payload_bytes
    self._now_fn = now_fn

  def of(self, records: Sequence) -> list[Optional[float]]:
    """The time of each record (KafkaRecord or RawRecord), or None where
    the record gives no valid one (no payload, too large, malformed, no or
    a bad time, a time outside the schema's range). Never raises. Schemas
    without a time field use the record's timestamp."""
    now = self._now_fn()
    lo = self._schema.min_event_time
    hi = now + self._schema.max_future_s
    field = self._schema.time_field
    limit = self._limit
    read, decode, get = self._read, self._decode, self._get
    out = []
    append = out.append
    for r in records:
      if type(r) not in RECORD_TYPES:
        r = to_raw(r)
      payload = r.payload
      if not payload or len(payload) > limit:
        append(None)
        continue
      if not field:
        t = r.timestamp
        append(t if t is not None and lo <= t <= hi else None)
        continue
      try:
        t = read(get(decode(payload)))
      except Exception:  # pylint: disable=broad-except
        append(None)
        continue
      append(t if lo <= t <= hi else None)
    return out


class EventTimeFn:
  """A RecordParser's ``event_time_of`` as a ReadFromKafka timestamp
  policy; ``many(records)`` gives a whole run's times in one call (the
  readers use it when present). Picklable with its parser."""

  def __init__(self, parser):
    self._parser = parser

  def __call__(self, record) -> float:
    return self._parser.event_time_of(record)

  def many(self, records: Sequence) -> list[float]:
    return self._parser.event_times_of(records)
