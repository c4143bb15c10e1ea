"""CSV payloads: one line per record, columns in the schema's order.

The columns are the schema's ``csv_columns`` (default: field order); an
empty value is an absent optional field. Two fast paths give exactly what
``decode`` gives, and hand anything else to it:

* lines ``csv.reader`` would split at every comma (no quotes, no carriage
  returns) of float, int and string columns are split with ``str.split``;
* ``NumericCsvChunks``: a chunk of plain numeric lines of a float-only
  schema without id, time or key fields (the UCI SUSY file) is read in one
  call by Arrow's C++ CSV reader, straight into an EventBatch.
"""

import csv
import math
from typing import Callable, Optional

import numpy as np

from transforms import dead_letters as dl
from transforms.events import EventBatch
from transforms.parse.batches import float32, make_batch
from transforms.parse.decoders.base import Decoder, DecodeOptions
from transforms.parse.errors import Invalid
from transforms.schema import EventSchema

# Bytes of the plain numeric CSV lines the chunk parser takes (newline: the
# line separator it joins them with).
_PLAIN_NUMERIC_CSV = b'0123456789eE+-.,\n'


class CsvDecoder(Decoder):
  """A CSV line per payload."""

  line_based = True

  def __init__(self, schema: EventSchema, options: DecodeOptions):
    super().__init__(schema, options)
    self._columns = schema.columns
    self._required = schema.required_names
    self._types = {f.name: f.type for f in schema.fields}
    self.quick_decode = self._simple_split()
    self.parse_chunk = NumericCsvChunks.build(schema)

  def decode(self, payload: bytes) -> dict:
    try:
      line = payload.decode('utf-8')
    except UnicodeDecodeError as e:
      raise Invalid(dl.MALFORMED, f'not UTF-8: {e}', stage=dl.PARSE) from None
    try:
      rows = list(csv.reader([line.rstrip('\r\n')]))
    except csv.Error as e:
      raise Invalid(dl.MALFORMED, f'bad CSV: {e}', stage=dl.PARSE) from None
    if len(rows) != 1:
      raise Invalid(dl.MALFORMED, 'not exactly one CSV line', stage=dl.PARSE)
    values = rows[0]
    if len(values) != len(self._columns):
      raise Invalid(dl.MALFORMED if len(values) < 2 else
                    (dl.MISSING_FIELD if len(values) < len(self._columns)
                     else dl.EXTRA_FIELD),
                    f'{len(values)} CSV columns, expected '
                    f'{len(self._columns)}', stage=dl.PARSE)
    doc = {}
    for name, text in zip(self._columns, values):
      if text == '' and name not in self._required:
        continue
      doc[name] = self._from_text(name, text)
    return doc

  def _from_text(self, name: str, text: str):
    kind = self._types[name]
    try:
      if kind == 'float':
        return float(text)
      if kind == 'int':
        return int(text)
      if kind == 'bool':
        if text.lower() in ('true', '1'):
          return True
        if text.lower() in ('false', '0'):
          return False
        raise ValueError(text)
      if kind == 'timestamp':
        try:
          return float(text)
        except ValueError:
          return text
      return text
    except ValueError:
      raise Invalid(dl.WRONG_TYPE, f'field {name!r}: {text[:40]!r} is not '
                    f'a {kind}') from None

  def _simple_split(self) -> Optional[Callable[[bytes], Optional[dict]]]:
    """A decoder for the lines csv.reader would split at every comma (no
    quotes, no carriage returns), with only float, int and string columns;
    None when the schema has other column kinds.

    It returns what ``decode`` returns for such a line, or None where it
    cannot be sure (an empty value: optional columns treat it as absent;
    a value that does not convert: ``decode`` names the error).
    """
    kinds = [self._types[name] for name in self._columns]
    if not all(k in ('float', 'int', 'string') for k in kinds):
      return None
    names = self._columns
    width = len(names)
    if all(k == 'float' for k in kinds):
      convert = lambda values: map(float, values)
    else:
      funcs = [float if k == 'float' else int if k == 'int' else str
               for k in kinds]
      convert = lambda values: [f(v) for f, v in zip(funcs, values)]

    def split(payload: bytes) -> Optional[dict]:
      if b'"' in payload or b'\r' in payload:
        return None
      try:
        values = payload.decode('utf-8').rstrip('\n').split(',')
        if len(values) != width or '' in values:
          return None
        return dict(zip(names, convert(values)))
      except (UnicodeDecodeError, ValueError):
        return None

    return split


class NumericCsvChunks:
  """A chunk of all-float CSV lines parsed in one go (pyarrow's C++ CSV
  reader) when every line is plain: digits, signs, dots, exponents and
  commas only, the right number of non-empty values, all finite, from
  one source, every event time in range. Python's float() and Arrow's
  parser both round correctly, so such lines give exactly the values
  the row-by-row path gives (tests/parse_documents_test.py checks the
  parsers agree)."""

  def __init__(self, schema: EventSchema):
    self._schema = schema
    self._names = list(schema.columns)
    index = {name: i for i, name in enumerate(self._names)}
    self._features = [index[n] for n in schema.features]
    self._window = [index[n] for n in schema.window_features]
    self._label = index.get(schema.label_field) if schema.label_field else None

  @classmethod
  def build(cls, schema: EventSchema) -> Optional['NumericCsvChunks']:
    """For CSV schemas of float columns only, without id, time or key
    fields (the UCI SUSY file); None for other schemas."""
    columns = list(schema.columns)
    names = frozenset(schema.field_names)
    kinds = {f.name: f.type for f in schema.fields}
    if (schema.id_field or schema.time_field or schema.key_field or
        set(columns) != set(names) or len(columns) != len(names) or
        any(kinds[c] != 'float' for c in columns)):
      return None
    return cls(schema)

  def __call__(self, raws: list, payloads: list, now: float,
               default_time: Optional[float], limit: int
              ) -> Optional[tuple[list[EventBatch], list[dl.DeadLetter]]]:
    """(batches, dead letters) of the chunk, or None: the chunk takes the
    general path."""
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    from pyarrow import csv as pa_csv  # pylint: disable=import-outside-toplevel
    n = len(raws)
    source = raws[0].source
    if any(r.source != source for r in raws) or not all(payloads):
      return None
    if max(map(len, payloads)) > limit:
      return None
    block = b'\n'.join(payloads)
    if block.translate(None, _PLAIN_NUMERIC_CSV):
      return None
    names = self._names
    try:
      table = pa_csv.read_csv(
          pa.BufferReader(block),
          read_options=pa_csv.ReadOptions(column_names=names,
                                          use_threads=False,
                                          block_size=len(block) + 1),
          convert_options=pa_csv.ConvertOptions(
              column_types={c: pa.float64() for c in names}))
    except (pa.ArrowInvalid, pa.ArrowException):
      return None
    if table.num_rows != n or any(c.null_count for c in table.columns):
      return None
    matrix = np.column_stack([c.to_numpy() for c in table.columns])
    times = np.asarray([
        r.timestamp if r.timestamp is not None else
        default_time if default_time is not None else now for r in raws],
                       dtype=np.float64)
    s = self._schema
    if not (np.isfinite(matrix).all() and
            ((times >= s.min_event_time) &
             (times <= now + s.max_future_s)).all()):
      return None  # the rows with a problem get their reasons row by row
    label = self._label
    dead: list[dl.DeadLetter] = []
    batch = make_batch(
        source, np.asarray([r.position for r in raws], dtype=np.int64),
        payloads, [f'{source}@{r.position}' for r in raws], [''] * n, times,
        float32(matrix[:, self._features]),
        float32(matrix[:, self._window]),
        matrix[:, label].copy() if label is not None else (
            np.full(n, math.nan) if s.label_field else None),
        raws, now, dead)
    return ([] if batch is None else [batch]), dead
