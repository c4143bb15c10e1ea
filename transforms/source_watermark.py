"""A source's watermark, shown to steps downstream in the same process.

Beam gives a DoFn no way to read its input watermark. A step that must judge
lateness the way a GroupByKey downstream will judge it (WindowFeatures: an
event it accepts must not be dropped as late by a windowed file sink) can
only learn a lower bound from its own timers. Where the source runs in the
same process as the steps (the local streaming runner, one read call at a
time, each call's output processed before the next call), the source
publishes here the watermark it had declared before the elements now in
flight were emitted. No step downstream can have a watermark beyond it while
those elements are in flight, and no element that was on time against it
can be dropped as late by a GroupByKey whose allowed lateness is at least
as long.

Elsewhere (Dataflow, Prism, Flink) nothing is published and readers get
None: steps fall back to what their timers tell them. Only a handle with an
id travels with the pipeline; the values live in this process.
"""

import threading
import uuid
from typing import Optional

_VALUES: dict[str, int] = {}
_LOCK = threading.Lock()


class SourceWatermark:
  """A handle shared by a source (``publish``) and the steps after it
  (``read``); picklable."""

  def __init__(self):
    self._id = uuid.uuid4().hex

  def publish(self, micros: int) -> None:
    """Sets the watermark (epoch micros) the source had declared before the
    elements it is about to emit. Never goes backwards."""
    with _LOCK:
      previous = _VALUES.get(self._id)
      if previous is None or micros > previous:
        _VALUES[self._id] = micros

  def read(self) -> Optional[int]:
    """The published watermark in epoch micros, or None (not published in
    this process)."""
    return _VALUES.get(self._id)

  def clear(self) -> None:
    """Forgets the value (the source's pipeline ended)."""
    with _LOCK:
      _VALUES.pop(self._id, None)

  def __eq__(self, other):
    return isinstance(other, SourceWatermark) and other._id == self._id  # pylint: disable=protected-access

  def __hash__(self):
    return hash(self._id)

  def __repr__(self):
    return f'SourceWatermark({self._id[:8]})'


__all__ = ['SourceWatermark']
