"""What a decoder is: bytes of one input format -> a dict of field values.

A decoder implements ``decode``; everything else has a default that is
right for any format, and a format overrides it only to be faster:

* ``decode_all``: a chunk's payloads at once (default: ``quick_decode``,
  where the format has one, else ``decode``, for each).
* ``quick_decode``: a cheaper ``decode`` of the common payload that gives
  up (None) where ``decode`` must look (CSV: lines without quotes split at
  the commas).
* ``typed``: a fast path that reads payloads straight into typed values
  with their ``Shape`` (fast.py), skipping the dict (JSON: msgspec).
* ``parse_chunk``: a whole chunk to EventBatches in one go, when the chunk
  is simple enough (CSV of floats only: Arrow's CSV reader).
* ``time_value``: the time field of a payload without the rest.
"""

import operator
from typing import Any, Callable, NamedTuple, Optional

from transforms.schema import EventSchema


class DecodeOptions(NamedTuple):
  """Settings of the input format, resolved once (RecordParser's keyword
  arguments); a decoder uses those that concern its format.

  Attributes:
    confluent_wire_format: payloads start with the Confluent header (magic
      byte 0, 4-byte schema id): Avro.
    expected_schema_id: the schema id that header must carry, or None for
      any.
  """
  confluent_wire_format: bool = False
  expected_schema_id: Optional[int] = None


class Decoder:
  """Decodes payloads of one input format for one schema.

  Subclasses implement ``decode`` and may override the fast paths listed
  in the module docstring. Built by the parser (and rebuilt where it is
  unpickled), so a decoder need not be picklable.

  Args:
    schema: the events' schema (field names and kinds, CSV columns, the
      Avro writer schema, ...).
    options: the format's settings.

  Raises:
    ValueError: the schema lacks what the format needs (e.g. an Avro
      writer schema).
  """

  # A record is one line of text (no newline inside one): line files
  # (backfill, ingest_examples --input) can hold this format.
  line_based = False
  # A fast path: ``typed.decode_all(payloads, limit)`` -> (docs, (indices,
  # structs)) and ``typed.shape`` (see json.TypedJson); None: none.
  typed = None
  # A whole-chunk fast path: ``parse_chunk(raws, payloads, now,
  # default_time, limit)`` -> (batches, dead letters), or None where the
  # chunk takes the general path; None: none.
  parse_chunk: Optional[Callable] = None
  # ``quick_decode(payload)`` -> what ``decode`` gives, or None where
  # ``decode`` must look; None: none.
  quick_decode: Optional[Callable[[bytes], Optional[dict]]] = None

  def __init__(self, schema: EventSchema, options: DecodeOptions):
    self.schema = schema
    self.options = options

  def decode(self, payload: bytes) -> dict:
    """One non-empty payload -> its fields by name (absent optional fields
    left out).

    Raises:
      Invalid: the payload is not a record of this format (stage
        ``dl.PARSE``), or a value does not convert (``dl.VALIDATE``).
    """
    raise NotImplementedError

  def decode_all(self, payloads: list, limit: int) -> list[Optional[dict]]:
    """Each payload's dict, or None where the full validation must look
    (empty, larger than ``limit``, or not decodable)."""
    docs = []
    append = docs.append
    decode, quick = self.decode, self.quick_decode
    for payload in payloads:
      if not payload or len(payload) > limit:
        append(None)
        continue
      if quick is not None:
        doc = quick(payload)
        if doc is not None:
          append(doc)
          continue
      try:
        append(decode(payload))
      except Exception:  # pylint: disable=broad-except
        append(None)
    return docs

  def time_value(self, field: str
                ) -> tuple[Callable[[bytes], Any], Callable[[Any], Any]]:
    """(decode, get): ``get(decode(payload))`` is the raw value of
    ``field``; raises when the payload has none."""
    return self.decode, operator.itemgetter(field)

