"""JSON payloads: one object per record (orjson), with two fast paths.

* ``TypedJson``: objects that have every schema field are decoded straight
  into typed values by msgspec, which checks the syntax, the field set (no
  unknown or missing fields) and each value's type in one C call per
  record, where the general path builds a dict (orjson) and then checks
  its key set and value types in Python (about twice the time).
* ``time_value``: only the time field is built; the rest is checked, not
  decoded (the readers' event times).
"""

import operator
from typing import Any, Callable, Optional, Union

import msgspec
import orjson

from transforms import dead_letters as dl
from transforms.parse.decoders.base import Decoder, DecodeOptions
from transforms.parse.errors import Invalid
from transforms.parse.shapes import Shape
from transforms.parse.getters import attr_getter
from transforms.schema import EventSchema

# msgspec types of the schema's field kinds, for TypedJson: exactly the
# values the fast path admits (a JSON integer in a float field comes out as
# a float; booleans are not numbers here, as in the full check).
_TYPED_KINDS = {'float': float, 'int': int, 'string': str, 'bool': bool,
                'timestamp': Union[int, float, str]}


class JsonDecoder(Decoder):
  """A JSON object per payload."""

  line_based = True

  def __init__(self, schema: EventSchema, options: DecodeOptions):
    super().__init__(schema, options)
    self.typed = TypedJson.build(schema)

  def decode(self, payload: bytes) -> dict:
    try:
      doc = orjson.loads(payload)
    except orjson.JSONDecodeError as e:
      raise Invalid(dl.MALFORMED, f'not valid JSON: {e}',
                    stage=dl.PARSE) from None
    if type(doc) is not dict:
      raise Invalid(dl.NOT_AN_OBJECT,
                    f'JSON {type(doc).__name__}, expected an object',
                    stage=dl.PARSE)
    return doc

  def time_value(self, field: str
                ) -> tuple[Callable[[bytes], Any], Callable[[Any], Any]]:
    # Raises on malformed JSON, a non-object, an absent field or a value
    # that is no number or string.
    struct = msgspec.defstruct('EventTime', [('t', Union[int, float, str])],
                               rename={'t': field})
    return msgspec.json.Decoder(struct).decode, operator.attrgetter('t')


class TypedJson:
  """Decodes JSON objects that have every schema field straight into
  typed values (module docstring). A record it does not take (malformed,
  other fields, other types, an optional field absent) gets the general
  path; a record it takes gives the values the general path gives
  (tests/parse_documents_test.py checks both on hostile input).

  Attributes:
    shape: the Shape of its structs (attribute ``f<i>``: the i-th field).
  """

  def __init__(self, schema: EventSchema):
    names = schema.field_names
    kinds = {f.name: f.type for f in schema.fields}
    # Attribute names f0, f1, ...: field names need not be identifiers.
    attrs = [f'f{i}' for i in range(len(names))]
    struct = msgspec.defstruct(
        'TypedEvent', [(a, _TYPED_KINDS[kinds[n]])
                       for a, n in zip(attrs, names)],
        rename=dict(zip(attrs, names)), forbid_unknown_fields=True,
        # Flat values only: nothing for the garbage collector to track.
        gc=False)
    self._decode = msgspec.json.Decoder(struct).decode
    # The shape's getters read the structs' attributes: no value tuples.
    self.shape = Shape(schema, names, positions_getter=attr_getter)

  @classmethod
  def build(cls, schema: EventSchema) -> Optional['TypedJson']:
    """None when the schema has no fields or a kind it does not know.
    (Rows with every field always have a Shape.)"""
    if not schema.fields or any(f.type not in _TYPED_KINDS
                                for f in schema.fields):
      return None
    return cls(schema)

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
