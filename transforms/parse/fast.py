"""The columnar fast path: rows checked on the columns of a chunk.

Per row it only looks up the row's field set (its ``Shape``) and checks the
exact types of its values in one tuple; the other checks (finite floats,
non-empty ids and keys, event-time units and range) run on the columns of
the chunk's rows of one shape. A row the fast path does not accept
outright goes through the full validation (validate.py), so reasons and
details are always the full validation's: the fast path only ever accepts
rows the full validation accepts, with the same values
(tests/parse_documents_test.py checks that on generated hostile input).

Decoders may hand over rows already split into typed values (a decoder's
``typed`` fast path: JSON objects decoded by msgspec); they come with
their own Shape.
"""

import itertools
import math
from typing import Optional

import numpy as np

from transforms.parse.batches import Columns, float32
from transforms.parse.errors import Invalid
from transforms.parse.shapes import Shape
from transforms.parse.times import MS_THRESHOLD, TimeReader
from transforms.schema import EventSchema

# Shapes (and field sets without one) remembered per parser.
_MAX_SHAPES = 8
_MAX_UNSHAPED = 64


class FastPath:
  """The fast path of one schema: rows grouped by Shape, read as columns.

  Holds the shapes seen so far (a few per parser; rebuilt, not pickled).
  """

  def __init__(self, schema: EventSchema, read_time: TimeReader):
    self._schema = schema
    self._read_time = read_time
    self._all_names = frozenset(schema.field_names)
    self._required = schema.required_names
    needed = [f for f in (schema.id_field, schema.key_field,
                          schema.time_field) if f]
    self._needed = frozenset(needed + list(schema.features) +
                             list(schema.window_features))
    self._n_features = len(schema.features)
    self._n_window = len(schema.window_features)
    self._shapes: list[Shape] = []
    self._unshaped: set[frozenset] = set()

  def _shape(self, doc: dict) -> Optional[Shape]:
    """The Shape of the row's field set, or None when the full validation
    would reject that field set (or must say why)."""
    keys = doc.keys()
    for shape in self._shapes:
      if keys == shape.names:
        return shape
    names = frozenset(keys)
    if names in self._unshaped:
      return None
    if (names <= self._all_names and self._required <= names and
        self._needed <= names):
      shape = Shape(self._schema,
                    tuple(n for n in self._schema.field_names if n in names))
      if len(self._shapes) < _MAX_SHAPES:
        self._shapes.append(shape)
      return shape
    if len(self._unshaped) < _MAX_UNSHAPED:
      self._unshaped.add(names)
    return None

  def _group(self, docs: list) -> list[tuple[Shape, list, list]]:
    """Rows the fast path may take, grouped by field set: (shape, record
    indices, value tuples) per group; a row (a dict, or None) of no shape,
    or with a value of another type, is in no group."""
    # The hot loop of the parse: locals only, one dict lookup per row for
    # the types.
    groups: dict[int, tuple] = {}
    shape = None
    size = -1
    getter = verdicts = add_index = add_values = None
    good_types = ()
    for i, doc in enumerate(docs):
      if doc is None:
        continue
      if len(doc) != size:
        shape = self._shape(doc)
        if shape is None:
          size = -1
          continue
        size, getter, verdicts = len(shape.names), shape.getter, shape.verdicts
        good_types = ()
        group = groups.get(id(shape))
        if group is None:
          group = groups[id(shape)] = (shape, [], [])
        add_index, add_values = group[1].append, group[2].append
      try:
        # As many fields as the shape and all of the shape's present: the
        # same field set.
        values = getter(doc)
      except KeyError:
        continue
      types = tuple(map(type, values))
      if types != good_types:
        ok = verdicts.get(types)
        if ok is None:
          ok = shape.types_ok(types)
        if not ok:
          continue
        good_types = types
      add_index(i)
      add_values(values)
    return list(groups.values())

  def read(self, items: list, docs: list, now: float,
           default_time: Optional[float], typed: Optional[tuple] = None
          ) -> list[tuple[list, Columns]]:
    """The chunk's rows the fast path can read: (record indices, their
    Columns) per group of one shape, each group in record order.

    Args:
      items: the records (source, position, timestamp).
      docs: their dicts, None where the fast path must not look.
      now: the clock.
      default_time: event time without a time field or record timestamp.
      typed: (shape, record indices, structs) of the rows a decoder's
        typed fast path read (their ``docs`` entries are None), or None.
    """
    n = len(items)
    group_list = [(shape, idx, vals, False)
                  for shape, idx, vals in self._group(docs)]
    if typed is not None and typed[1]:
      # Its own group even if another has the same field set: a group's
      # rows must be in record order.
      group_list.insert(0, (*typed, True))
    columns = []
    for shape, idx, vals, from_typed in group_list:
      cols = self._columns(
          shape, items if len(idx) == n else [items[i] for i in idx], vals,
          now, default_time, typed=from_typed)
      if cols is not None:
        columns.append((idx, cols))
    return columns

  def _columns(self, shape: Shape, items: list, vals: list, now: float,
              default_time: Optional[float], typed: bool = False
             ) -> Optional[Columns]:
    """Columns of rows of one shape, and which rows passed every check.

    Args:
      shape: the rows' Shape.
      items: the rows' records (source, position, timestamp).
      vals: the rows' values (tuples, or a decoder's typed structs).
      now: the clock.
      default_time: event time without a time field or record timestamp.
      typed: the values come from a decoder's typed fast path (integers
        of float fields already floats).

    Returns:
      The Columns, or None when a column cannot be built (the rows take
      the full path).
    """
    m = len(vals)
    ok = np.ones(m, dtype=bool)
    s = self._schema
    try:
      floats = None
      if shape.floats:
        width = shape.float_count
        # From one flat iterator: no per-row sequences for numpy to walk.
        floats = np.fromiter(itertools.chain.from_iterable(
            map(shape.floats, vals)), dtype=np.float64,
                             count=m * width).reshape(m, width)
        ok &= np.isfinite(floats).all(axis=1)
        if typed:
          # A JSON integer beyond 2**53 in a float field was rounded to a
          # double by the decoder; the full path converts the integer
          # itself. Such rows take the full path.
          ok &= (np.abs(floats) < 2.0**53).all(axis=1)
      if (shape.float_features is not None and
          not (np.abs(floats) >= 2.0**53).any()):
        # Taken from the float columns: float64 holds every value exactly
        # (ints below 2**53 included), so float32 rounds each once, as a
        # direct conversion does.
        features = floats[:, shape.float_features].astype(np.float32)
        window = floats[:, shape.float_window].astype(np.float32)
      else:
        features = float32(list(map(shape.features, vals))).reshape(
            m, self._n_features)
        window = float32(list(map(shape.window, vals))).reshape(
            m, self._n_window)
      labels = (np.asarray(list(map(shape.label, vals)), dtype=np.float64)
                if shape.label is not None else
                np.full(m, math.nan) if s.label_field else None)
      ids = (_strings(shape.id, shape.id_is_str, vals, ok)
             if shape.id is not None else
             [f'{it.source}@{it.position}' for it in items])
      keys = (_strings(shape.key, shape.key_is_str, vals, ok)
              if shape.key is not None else [''] * m)
      times = self._times(shape, items, vals, ok, now, default_time)
    except (ValueError, TypeError, OverflowError):
      return None
    ok &= (times >= s.min_event_time) & (times <= now + s.max_future_s)
    return Columns(ok, ids, keys, times, features, window, labels)

  def _times(self, shape, items, vals, ok, now, default_time) -> np.ndarray:
    """Event times as the full path reads them; rows it would reject (or
    reads differently) are cleared in ``ok``."""
    m = len(vals)
    if shape.time is None:
      return np.asarray([
          it.timestamp if it.timestamp is not None else
          default_time if default_time is not None else now
          for it in items], dtype=np.float64)
    raw_times = list(map(shape.time, vals))
    kinds = set(map(type, raw_times))
    unit = self._schema.time_unit
    if str not in kinds and unit != 'iso' and all(
        k in (int, float) for k in kinds):
      t = np.asarray(raw_times, dtype=np.float64)
      if int in kinds:
        # Beyond 2**53 float(int) and numpy may round differently.
        big = np.abs(t) >= 2.0**53
        if big.any():
          ok &= ~big
      if unit == 'ms':
        t = t / 1000.0
      elif unit == 'auto':
        t = np.where(np.abs(t) > MS_THRESHOLD, t / 1000.0, t)
      finite = np.isfinite(t)
      ok &= finite
      return np.where(finite, t, 0.0)
    t = np.zeros(m, dtype=np.float64)
    read = self._read_time
    for i, value in enumerate(raw_times):
      try:
        t[i] = read(value)
      except Invalid:
        ok[i] = False
    return t


def _strings(get, is_str, vals: list, ok: np.ndarray) -> list[str]:
  """The values ``get`` picks, as text (str() of other types, as the full
  validation reads ids and keys); rows with an empty one are cleared in
  ``ok``."""
  values = list(map(get, vals))
  if is_str is not True:
    values = [v if type(v) is str else str(v) for v in values]
  if '' in values:
    ok &= np.asarray([v != '' for v in values])
  return values
