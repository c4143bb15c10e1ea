"""Shape: the rows of one field set, as the fast path reads them.

A Shape holds C-level pickers of a row's values (schema order) and of each
role's values (id, key, time, label, features, window features, the float
fields), and remembers which exact value types its field kinds accept.
The fast path (fast.py) groups dict rows by Shape; a decoder's typed fast
path (decoders/json.py) gives structs with a Shape of their own.
"""

from typing import Sequence

import numpy as np

from transforms.parse.getters import item_getter
from transforms.schema import EventSchema

# Exact value types each field kind accepts without a closer look (the
# full check also accepts integral floats for int fields).
_FAST_TYPES = {'float': frozenset((float, int)), 'int': frozenset((int,)),
               'string': frozenset((str,)), 'bool': frozenset((bool,))}


class Shape:
  """Rows with exactly one set of the schema's fields, for the fast path.

  ``getter(doc)`` gives the values of those fields (schema order) as a
  tuple; the other attributes pick a role's value(s) out of that tuple
  (or, with ``positions_getter=attr_getter``, out of a struct whose
  attribute ``f<i>`` is the i-th value). Only field sets the full
  validation can accept get a shape (FastPath sees to that): no unknown
  fields, every required field, and the id, key, time, feature and window
  fields present.
  """

  def __init__(self, schema: EventSchema, present: Sequence[str],
               positions_getter=item_getter):
    s = schema
    kind_of = {f.name: f.type for f in s.fields}
    self.names = frozenset(present)
    self.getter = item_getter(present)
    self.kinds = tuple(kind_of[n] for n in present)
    index = {n: i for i, n in enumerate(present)}
    pick = lambda positions: positions_getter(positions)
    role = lambda name: (None if not name or name not in index else
                         positions_getter([index[name]], scalar=True))
    self.id = role(s.id_field)
    self.key = role(s.key_field)
    self.time = role(s.time_field)
    self.label = role(s.label_field)
    self.id_is_str = s.id_field and kind_of[s.id_field] == 'string'
    self.key_is_str = s.key_field and kind_of[s.key_field] == 'string'
    self.features = pick([index[n] for n in s.features])
    self.window = pick([index[n] for n in s.window_features])
    floats = [i for i, k in enumerate(self.kinds) if k == 'float']
    self.floats = pick(floats) if floats else None
    self.float_count = len(floats)
    # Features and window features as columns of the float matrix, when
    # they are all float fields.
    column = {p: j for j, p in enumerate(floats)}
    feature_pos = [index[n] for n in s.features]
    window_pos = [index[n] for n in s.window_features]
    if all(p in column for p in feature_pos + window_pos):
      self.float_features = np.asarray([column[p] for p in feature_pos],
                                       dtype=np.int64)
      self.float_window = np.asarray([column[p] for p in window_pos],
                                     dtype=np.int64)
    else:
      self.float_features = self.float_window = None
    self.verdicts: dict[tuple, bool] = {}

  def types_ok(self, types: tuple) -> bool:
    """Whether every value's exact type is one its kind accepts (the full
    check also takes integral floats for ints: those go the full path)."""
    verdict = self.verdicts.get(types)
    if verdict is None:
      verdict = all(
          t in _FAST_TYPES[k] if k in _FAST_TYPES else t in (int, float, str)
          for t, k in zip(types, self.kinds))
      if len(self.verdicts) < 256:
        self.verdicts[types] = verdict
    return verdict
