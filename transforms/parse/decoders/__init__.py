"""Decoders by input format: the one table the parser looks formats up in.

Adding a format is one new decoder plus a test (docs/your_data.md,
"Another input format"): a ``Decoder`` subclass (decoders/base.py) whose
``decode(payload)`` returns the record's fields as a dict or raises
``Invalid``, and its entry in ``DECODERS``.
"""

from transforms.parse.decoders.avro import AvroDecoder
from transforms.parse.decoders.base import DecodeOptions, Decoder
from transforms.parse.decoders.csv import CsvDecoder
from transforms.parse.decoders.json import JsonDecoder

DECODERS: dict[str, type[Decoder]] = {
    'json': JsonDecoder,
    'csv': CsvDecoder,
    'avro': AvroDecoder,
}

# The formats of the table as shipped (the jobs' --input_format choices).
INPUT_FORMATS = tuple(DECODERS)


def line_formats() -> tuple[str, ...]:
  """The formats line files can hold (their decoder is ``line_based``),
  read from the table when asked, so a format added to it counts."""
  return tuple(f for f, d in DECODERS.items() if d.line_based)

__all__ = ['AvroDecoder', 'CsvDecoder', 'DECODERS', 'DecodeOptions',
           'Decoder', 'INPUT_FORMATS', 'JsonDecoder', 'line_formats']
