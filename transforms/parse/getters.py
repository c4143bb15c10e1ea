"""C-level pickers of a row's values (operator.itemgetter/attrgetter).

A getter returns a tuple, also for one key or none (a bare itemgetter
returns the value itself for one key), unless asked for a ``scalar``.
"""

import operator
from typing import Callable, Hashable, Sequence


def item_getter(keys: Sequence[Hashable], scalar: bool = False
               ) -> Callable[[object], object]:
  """A dict (or tuple) -> the values at ``keys`` (field names, or
  positions) as a tuple, or the single value with ``scalar``; KeyError or
  IndexError when one is absent."""
  keys = tuple(keys)
  if scalar:
    return operator.itemgetter(keys[0])
  if not keys:
    return lambda values: ()
  if len(keys) == 1:
    key = keys[0]
    return lambda values: (values[key],)
  return operator.itemgetter(*keys)


def attr_getter(positions: Sequence[int], scalar: bool = False
               ) -> Callable[[object], object]:
  """A struct whose attribute ``f<i>`` is its i-th value -> its values at
  ``positions``, as item_getter gives them from a values tuple."""
  names = tuple(f'f{p}' for p in positions)
  if scalar:
    return operator.attrgetter(names[0])
  if not names:
    return lambda values: ()
  if len(names) == 1:
    get = operator.attrgetter(names[0])
    return lambda values: (get(values),)
  return operator.attrgetter(*names)
