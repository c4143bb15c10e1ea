"""Avro payloads: one datum of the schema's Avro writer schema (fastavro).

With ``confluent_wire_format`` each payload starts with the Confluent
header: magic byte 0 and a 4-byte big-endian schema id, which must be
``expected_schema_id`` when one is given. Optional (null) values decode as
None and are taken as absent fields.
"""

import io
import struct

from transforms import dead_letters as dl
from transforms.parse.decoders.base import Decoder, DecodeOptions
from transforms.parse.errors import Invalid
from transforms.schema import EventSchema


class AvroDecoder(Decoder):
  """An Avro datum per payload, optionally in the Confluent wire format."""

  def __init__(self, schema: EventSchema, options: DecodeOptions):
    if not schema.avro_schema:
      raise ValueError(f'input_format avro needs an "avro_schema" in schema '
                       f'{schema.name!r}')
    super().__init__(schema, options)
    import fastavro  # pylint: disable=import-outside-toplevel
    self._reader = fastavro.schemaless_reader
    self._avro = fastavro.parse_schema(dict(schema.avro_schema))
    self._confluent = options.confluent_wire_format
    self._expected_schema_id = options.expected_schema_id

  def decode(self, payload: bytes) -> dict:
    body = payload
    if self._confluent:
      if len(payload) < 5 or payload[0] != 0:
        raise Invalid(dl.BAD_WIRE_FORMAT,
                      'no Confluent wire-format header (magic byte 0)',
                      stage=dl.PARSE)
      schema_id = struct.unpack('>I', payload[1:5])[0]
      if (self._expected_schema_id is not None and
          schema_id != self._expected_schema_id):
        raise Invalid(dl.BAD_WIRE_FORMAT,
                      f'schema id {schema_id}, expected '
                      f'{self._expected_schema_id}', stage=dl.PARSE)
      body = payload[5:]
    try:
      buf = io.BytesIO(body)
      doc = self._reader(buf, self._avro)
      if buf.tell() != len(body):
        raise ValueError(f'{len(body) - buf.tell()} trailing bytes')
    except Exception as e:  # pylint: disable=broad-except
      # fastavro raises many types on garbage (EOFError, ValueError, ...).
      raise Invalid(dl.MALFORMED, f'not Avro for the writer schema: '
                    f'{type(e).__name__}: {e}', stage=dl.PARSE) from None
    if type(doc) is not dict:
      raise Invalid(dl.NOT_AN_OBJECT, 'Avro datum is not a record',
                    stage=dl.PARSE)
    # Avro optional fields decode as None: treat them as absent.
    return {k: v for k, v in doc.items() if v is not None}
