"""The full validation of one decoded record: a dict -> one row, or Invalid.

Checks, in order: the field set (missing required fields, unknown fields
under ``extra_fields: reject``), each value's type (integral floats pass
for int fields; NaN and infinity are rejected), a non-empty id and key,
and the event time (read per the schema's unit, not before the schema's
earliest, not further ahead of the clock than ``max_future_s``). Every
input goes through it: byte payloads after their decoder, typed rows
after normalization, and whatever the fast path does not accept outright.
"""

import math
from typing import Optional

from transforms import dead_letters as dl
from transforms.parse.errors import Invalid
from transforms.parse.getters import item_getter
from transforms.parse.times import TimeReader
from transforms.schema import EventSchema


class Validator:
  """Validates decoded records against one schema.

  Attributes:
    schema: the schema.
    read_time: the schema's TimeReader.
  """

  def __init__(self, schema: EventSchema):
    self.schema = schema
    self.read_time = TimeReader(schema.time_unit)
    self._all_names = frozenset(schema.field_names)
    self._required = schema.required_names
    self._types = {f.name: f.type for f in schema.fields}
    self._features = item_getter(schema.features)
    self._window = item_getter(schema.window_features)

  def row(self, doc: dict, raw, now: float,
          default_time: Optional[float]) -> tuple:
    """One decoded record -> (event_id, key, time, features, window values,
    label); raises Invalid (with the event id when readable).

    Args:
      doc: the record's fields.
      raw: its record (source, position, timestamp).
      now: the clock (the time of records without one; the future limit).
      default_time: event time without a time field or record timestamp.
    """
    s = self.schema
    try:
      self._check_fields(doc)
      self._check_types(doc)
      event_id, key = self._identity(doc, raw)
      t = self._event_time(doc, raw, now, default_time)
    except Invalid as e:
      if e.event_id is None and s.id_field and type(
          doc.get(s.id_field)) in (str, int):
        e.event_id = str(doc[s.id_field])
      raise
    return (event_id, key, t, self._features(doc), self._window(doc),
            doc.get(s.label_field, math.nan) if s.label_field else math.nan)

  def _check_fields(self, doc: dict) -> None:
    keys = doc.keys()
    if keys == self._all_names:
      return
    missing = self._required - keys
    if missing:
      raise Invalid(dl.MISSING_FIELD,
                    f'missing field(s): {", ".join(sorted(missing)[:5])}')
    extra = keys - self._all_names
    if extra and self.schema.extra_fields == 'reject':
      names = ', '.join(sorted(str(k)[:40] for k in extra)[:5])
      raise Invalid(dl.EXTRA_FIELD, f'unexpected field(s): {names}')

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
        raise Invalid(dl.WRONG_TYPE, f'field {name!r} has type '
                      f'{t.__name__}, expected {kind}')
      if t is float and not math.isfinite(value):
        raise Invalid(dl.NON_FINITE, f'field {name!r} is {value}')

  def _identity(self, doc: dict, raw) -> tuple[str, str]:
    s = self.schema
    if s.id_field:
      event_id = doc[s.id_field] if s.id_field in doc else None
      if event_id is None:
        raise Invalid(dl.MISSING_FIELD, f'missing id field {s.id_field!r}')
      event_id = str(event_id)
      if not event_id:
        raise Invalid(dl.EMPTY_VALUE, f'empty id field {s.id_field!r}')
    else:
      event_id = f'{raw.source}@{raw.position}'
    if s.key_field:
      key = doc.get(s.key_field)
      key = '' if key is None else str(key)
      if not key:
        raise Invalid(dl.EMPTY_VALUE, f'empty key field {s.key_field!r}',
                      event_id=event_id)
    else:
      key = ''
    return event_id, key

  def _event_time(self, doc: dict, raw, now: float,
                  default_time: Optional[float]) -> float:
    s = self.schema
    if s.time_field:
      if s.time_field not in doc:
        raise Invalid(dl.MISSING_FIELD,
                      f'missing time field {s.time_field!r}')
      t = self.read_time(doc[s.time_field])
    elif raw.timestamp is not None:
      t = raw.timestamp
    elif default_time is not None:
      t = default_time
    else:
      t = now
    if t > now + s.max_future_s:
      raise Invalid(
          dl.TIME_IN_FUTURE,
          f'event time {t:.3f} is {t - now:.0f} s ahead of the clock '
          f'(more than max_future_s {s.max_future_s:g} s)')
    if not s.min_event_time <= t:
      raise Invalid(
          dl.TIME_OUT_OF_RANGE,
          f'event time {t:.3f} before the earliest accepted '
          f'({s.min_event_time:.0f})')
    return t
