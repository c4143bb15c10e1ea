"""What the parser reads: raw records, and typed rows made JSON-like.

Raw records are ``RawRecord`` items, or ``KafkaRecord`` items read as the
RawRecord they stand for. Typed rows (``Document``: Parquet, tf.Example)
carry values a JSON payload cannot (numpy scalars, datetimes, bytes); they
are normalized to what a JSON payload would carry, so that one validation
serves both.
"""

import datetime
from typing import Mapping

import numpy as np
import orjson

from transforms import dead_letters as dl
from transforms.events import RawRecord
from transforms.kafka.records import KafkaRecord, kafka_source
from transforms.parse.errors import Invalid

# Records the parser reads as they are (a KafkaRecord reads as a RawRecord:
# source, position, payload, timestamp, key).
RECORD_TYPES = frozenset((RawRecord, KafkaRecord))

_PLAIN = (str, float, int, bool)


def to_raw(record) -> RawRecord:
  """A KafkaRecord or RawRecord as a RawRecord.

  Raises:
    TypeError: any other element type.
  """
  if isinstance(record, RawRecord):
    return record
  if isinstance(record, KafkaRecord):
    return RawRecord(kafka_source(record.topic, record.partition),
                     record.offset, record.value,
                     record.timestamp_ms / 1000.0
                     if record.timestamp_ms >= 0 else None, record.key)
  raise TypeError(f'cannot parse elements of type {type(record).__name__}; '
                  f'expected KafkaRecord or RawRecord (or lists of them)')


def row_json(doc) -> bytes:
  """A typed row as JSON: the payload its dead letter keeps."""
  try:
    return orjson.dumps(doc, default=str, option=(
        orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))
  except Exception:  # pylint: disable=broad-except
    return repr(doc).encode('utf-8', 'replace')


class Normalizer:
  """Typed row values as a JSON payload would carry them.

  None is an absent field, numpy scalars become Python numbers,
  ``datetime`` values become epoch seconds (ms with ``time_unit: ms``, ISO
  strings with ``iso`` or for string fields) and bytes become UTF-8 text.
  Other values (lists, dicts, ...) stay as they are: the type checks
  reject them.
  """

  def __init__(self, types: Mapping[str, str], time_unit: str):
    self._types = types
    self._unit = time_unit

  def __call__(self, doc: dict) -> dict:
    """The row with plain values; raises Invalid (bytes that are not
    UTF-8)."""
    if all(type(v) in _PLAIN for v in doc.values()):
      return doc
    out = {}
    for name, value in doc.items():
      if value is None:
        continue
      if type(value) not in _PLAIN:
        value = self._plain_value(name, value)
      out[name] = value
    return out

  def _plain_value(self, name: str, value):
    if isinstance(value, np.generic):
      return value.item()
    if isinstance(value, datetime.datetime):
      if value.tzinfo is None:
        value = value.replace(tzinfo=datetime.timezone.utc)
      unit = self._unit
      if unit == 'iso' or (self._types.get(name) == 'string'):
        return value.isoformat()
      seconds = value.timestamp()
      return seconds * 1000.0 if unit == 'ms' else seconds
    if isinstance(value, (bytes, bytearray)):
      try:
        return bytes(value).decode('utf-8')
      except UnicodeDecodeError:
        raise Invalid(dl.MALFORMED, f'field {name!r}: bytes that are not '
                      f'UTF-8', stage=dl.PARSE) from None
    return value
