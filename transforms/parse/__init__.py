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
decoding step. Both run a columnar fast path first; whatever it does not
accept outright is validated row by row, so the outcome (rows, values,
reasons) is always the full validation's (tests/parse_documents_test.py
checks that on generated hostile input).

Modules, one concern each (dependencies point down the list):

  transform.py  ParseEvents, the Beam stage (a RecordParser in a DoFn).
  parser.py     RecordParser: orchestrates the modules below.
  decoders/     bytes -> dict, one Decoder per input format, in the
                ``DECODERS`` table; a decoder may add fast paths of its
                format (JSON: msgspec typed structs; CSV: Arrow chunks).
  fast.py       the columnar fast path: rows grouped by field set, checked
                on columns.
  shapes.py     Shape: the value pickers and type verdicts of a field set.
  validate.py   the full validation of one decoded record.
  times.py      event-time values per unit; times of raw records for the
                readers (EventTimeFn).
  batches.py    validated rows -> one EventBatch per source.
  inputs.py     raw records and typed rows as the parser reads them.
  getters.py    C-level pickers of a row's values.
  errors.py     Invalid: a record that becomes a dead letter.

Adding an input format is one new decoder plus a test
(docs/your_data.md, "Another input format"): validation, event times, the
fast path over the decoded dicts and dead letters are the same for every
format.
"""

from typing import Sequence

from transforms.events import Document
from transforms.parse.decoders import (DECODERS, INPUT_FORMATS, DecodeOptions,
                                       Decoder, line_formats)
from transforms.parse.errors import Invalid
from transforms.parse.parser import DEFAULT_MAX_PAYLOAD_BYTES, RecordParser
from transforms.parse.times import EventTimeFn
from transforms.parse.transform import ParseEvents

__all__: Sequence[str] = [
    'DECODERS', 'DEFAULT_MAX_PAYLOAD_BYTES', 'DecodeOptions', 'Decoder',
    'Document', 'EventTimeFn', 'INPUT_FORMATS', 'Invalid', 'ParseEvents',
    'RecordParser', 'line_formats']
