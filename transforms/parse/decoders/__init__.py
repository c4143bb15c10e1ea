"""Decoders by input format: the one table the parser looks formats up in.

Adding a format is one new decoder plus a test: a ``Decoder`` subclass
(decoders/base.py) whose ``decode(payload)`` returns the record's fields as
a dict or raises ``Invalid``, and its entry in ``DECODERS``. Validation,
event times, the columnar fast path and dead letters then work as for
every other format (tests/parse_decoders_test.py adds one in a test).
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

__all__ = ['AvroDecoder', 'CsvDecoder', 'DECODERS', 'DecodeOptions',
           'Decoder', 'INPUT_FORMATS', 'JsonDecoder']
