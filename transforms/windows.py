"""Event-time windows and per-key window features, without holding events.

``WindowFeatures`` is the one composite that streaming, backfill and training
use. For each event it computes, for the event's key and event-time window,
aggregates over the key's events in that window so far (this one included):
``win_count`` and the mean and population std of the schema's window
features. It emits every event at once, joined with those aggregates: the
event is never held until its window closes.

Streaming (unbounded input): a stateful DoFn keyed by the event key keeps
running sums per open window. "So far" means in arrival order, which equals
event-time order when a key's events arrive in order (e.g. from one Kafka
partition: key the topic by the event key). Watermark knowledge comes from an
event-time timer per key set at the next window end (and end + allowed
lateness): when it fires, the watermark has passed that time. An event whose
window end has passed is flagged ``late`` but still scored; an event whose
window end + allowed lateness has passed is a dead letter (``too_late``).
Window state is dropped at end + allowed lateness.

Batch (bounded input): the same aggregates computed exactly, by sorting each
key's events by (event time, source, position); equal to the streaming
result when arrival order is event-time order. There is no lateness in batch.
Only a slim copy of each event (time, position, window-feature values) is
grouped by key; the aggregates are joined back to the events by batch, so
the events are never gathered on one worker per key. An output EventBatch
holds the rows of one input batch and one window: one key's rows in
streaming, any keys' in batch. In batch the elements may also be
ScoredBatches (a batch job scores before it joins the window features:
beam_jobs/scoring.py); they come out split by window the same way, without
their payloads and model inputs.

Window kinds: fixed(size), sliding(size, period) — an event gets one output
row per window it belongs to, as Beam's SlidingWindows — session(gap): a
key's session grows while events come within ``gap`` of each other; an event
gets the session as known when it arrives, and sessions that an event
bridges merge (aggregates add up) — and global (one window, aggregates since
the start).

The output is assigned to Beam windows (IntervalWindow(start, end) or the
GlobalWindow) with the given allowed lateness and trigger, so windowed sinks
downstream write one file set per window and pane.
"""

import dataclasses
import logging
import math
import pickle
import threading
import uuid
from typing import Any, NamedTuple, Optional, Sequence

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.coders import PickleCoder
from apache_beam.coders import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger as trigger_lib
from apache_beam.transforms import userstate
from apache_beam.transforms import window as window_lib
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.utils.timestamp import Timestamp

from transforms import dead_letters as dl
from transforms.events import EventBatch
from transforms.source_watermark import SourceWatermark

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'window'

WINDOW_KINDS = ('fixed', 'sliding', 'session', 'global')


@dataclasses.dataclass(frozen=True)
class WindowSpec:
  """A window strategy.

  Attributes:
    kind: fixed, sliding, session or global.
    size_s: window length (fixed, sliding).
    period_s: window start interval (sliding).
    gap_s: inactivity gap that ends a session (session).
    allowed_lateness_s: how long after a window's end its events are still
      accepted (flagged late); later ones are dead letters.
  """
  kind: str = 'fixed'
  size_s: float = 60.0
  period_s: Optional[float] = None
  gap_s: Optional[float] = None
  allowed_lateness_s: float = 0.0

  def __post_init__(self):
    if self.kind not in WINDOW_KINDS:
      raise ValueError(f'window kind {self.kind!r}: use one of {WINDOW_KINDS}')
    if self.kind in ('fixed', 'sliding') and not self.size_s > 0:
      raise ValueError(f'window size must be > 0 s, got {self.size_s}')
    if self.kind == 'sliding':
      if not (self.period_s and 0 < self.period_s <= self.size_s):
        raise ValueError(f'sliding windows need 0 < period <= size, got '
                         f'period {self.period_s}, size {self.size_s}')
    if self.kind == 'session' and not (self.gap_s and self.gap_s > 0):
      raise ValueError(f'session windows need a gap > 0 s, got {self.gap_s}')
    if self.allowed_lateness_s < 0:
      raise ValueError(f'allowed lateness must be >= 0 s, got '
                       f'{self.allowed_lateness_s}')

  def assign(self, times: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-merging window assignment on arrays.

    Returns:
      A list of (starts, ends) arrays, one pair per "layer": fixed and global
      have one layer, sliding has size/period layers (row i belongs to window
      (starts[i], ends[i]) of every layer). Global windows are (-inf, inf).
    """
    if self.kind == 'global':
      inf = np.full(len(times), np.inf)
      return [(-inf, inf)]
    if self.kind == 'fixed':
      starts = np.floor(times / self.size_s) * self.size_s
      return [(starts, starts + self.size_s)]
    if self.kind == 'sliding':
      last = np.floor(times / self.period_s) * self.period_s
      layers = []
      for k in range(int(math.ceil(self.size_s / self.period_s))):
        starts = last - k * self.period_s
        ends = starts + self.size_s
        keep = times < ends
        if keep.all():
          layers.append((starts, ends))
        elif keep.any():
          # Only when size is not a multiple of period: some rows are in
          # fewer windows; mark the rest with NaN.
          layers.append((np.where(keep, starts, np.nan),
                         np.where(keep, ends, np.nan)))
      return layers
    raise ValueError('session windows are assigned by merging, not arrays')

  def last_end(self, t: float) -> float:
    """The end of the last window that contains event time ``t``; ``inf``
    for windows without an end known in advance (session, global)."""
    if self.kind == 'fixed':
      return math.floor(t / self.size_s) * self.size_s + self.size_s
    if self.kind == 'sliding':
      return math.floor(t / self.period_s) * self.period_s + self.size_s
    return math.inf


# A buffer horizon of elements whose window has no end known in advance.
UNKNOWN_HORIZON_US = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class BufferHorizon:
  """How long windowed sinks may hold what a record becomes.

  A record with event time t ends up in windows of each of ``specs`` (the
  event windows of the window features, the dead-letter files' flush
  windows); a GroupByKey holds it until the watermark passes the end of its
  window (plus lateness for late panes, which fire at once). Called with
  t in epoch micros, it returns the latest such end, in micros:
  once every buffered element's window ends after it, nothing of the record
  is held anywhere (the local runner's offset commits rely on this; see
  transforms/kafka/local_read.py). ``UNKNOWN_HORIZON_US`` for session
  and global windows: only a fully drained pipeline frees those.
  """
  specs: tuple[WindowSpec, ...]

  def __call__(self, t_us: int) -> int:
    t = t_us / 1e6
    end = max(spec.last_end(t) for spec in self.specs)
    return UNKNOWN_HORIZON_US if math.isinf(end) else _micros(end)


def _flatten(layers) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(rows, starts, ends) of every (row, window) assignment of the layers,
  rows ascending within each window (stable order)."""
  rows, starts, ends = [], [], []
  for s, e in layers:
    valid = np.flatnonzero(~np.isnan(s))
    rows.append(valid)
    starts.append(s[valid])
    ends.append(e[valid])
  rows = np.concatenate(rows)
  starts = np.concatenate(starts)
  ends = np.concatenate(ends)
  order = np.lexsort((rows, starts))
  return rows[order], starts[order], ends[order]


def _micros(seconds):
  """Seconds (scalar or array) as integer microseconds, Beam's time unit.

  All comparisons with the watermark are made in microseconds: a timer set
  at Timestamp.of(t) fires at t rounded to microseconds, and comparing that
  with t as a float could keep a window open forever.
  """
  if isinstance(seconds, np.ndarray):
    return np.round(seconds * 1e6).astype(np.int64)
  return int(round(seconds * 1e6))


_NEG_INF_US = -(2**62)


def _beam_window(start: float, end: float):
  if math.isinf(start) and math.isinf(end):
    return window_lib.GlobalWindow()
  return window_lib.IntervalWindow(start, end)


class _Agg:
  """Running count, sum and sum of squares of the window features."""

  __slots__ = ('count', 'sum', 'sumsq')

  def __init__(self, width: int):
    self.count = 0
    self.sum = np.zeros(width, dtype=np.float64)
    self.sumsq = np.zeros(width, dtype=np.float64)

  def merge(self, other: '_Agg') -> None:
    self.count += other.count
    self.sum += other.sum
    self.sumsq += other.sumsq


def _cumulative(agg: _Agg, values: np.ndarray):
  """Count/mean/std so far for each row of ``values``, updating ``agg``."""
  v = values.astype(np.float64)
  counts = agg.count + np.arange(1, len(v) + 1)
  sums = agg.sum + np.cumsum(v, axis=0)
  sumsq = agg.sumsq + np.cumsum(v * v, axis=0)
  agg.count = int(counts[-1])
  agg.sum = sums[-1].copy()
  agg.sumsq = sumsq[-1].copy()
  c = counts[:, None].astype(np.float64)
  mean = sums / c
  var = np.maximum(sumsq / c - mean * mean, 0.0)
  return counts.astype(np.int64), mean.astype(np.float32), np.sqrt(
      var).astype(np.float32)


def _with_window(batch: EventBatch, idx: np.ndarray, window, counts, mean,
                 std, late) -> EventBatch:
  """The rows ``idx`` (ascending, unique) with their window and features."""
  if len(idx) == len(batch) and (not len(idx) or idx[-1] == len(idx) - 1):
    sub = dataclasses.replace(batch)  # all rows, in order: no copies
  else:
    sub = batch.take(idx)
  sub.window = window
  sub.win_count = counts
  sub.win_mean = mean
  sub.win_std = std
  sub.late = late
  return sub


def _by_key(batch: EventBatch):
  """(key, the rows of that key) of a batch, rows in arrival order."""
  keys = batch.keys
  first = keys[0]
  if all(k == first for k in keys):
    yield first, batch
    return
  groups: dict[str, list[int]] = {}
  for i, k in enumerate(keys):
    groups.setdefault(k, []).append(i)
  for key, idx in groups.items():
    yield key, batch.take(np.asarray(idx))


# Most rows _SplitByKey holds back within a bundle before it emits them.
_MAX_HELD_ROWS = 10_000


class _SplitByKey(beam.DoFn):
  """EventBatches -> (key, [EventBatch of that key, one per input batch]):
  one element per key and bundle, rows in arrival order.

  Per key and bundle, not per key and input batch: the stateful step after
  this one reads and writes a key's state once per element, so a bundle of
  many small batches (one per partition and read) costs it as much as one
  batch (docs/latency.md). At most _MAX_HELD_ROWS rows wait for the end of
  the bundle.
  """

  def start_bundle(self):
    self._held: dict[str, list[EventBatch]] = {}
    self._rows = 0

  def process(self, batch: EventBatch):
    for key, sub in _by_key(batch):
      self._held.setdefault(key, []).append(sub)
    self._rows += len(batch)
    if self._rows >= _MAX_HELD_ROWS:
      for key, subs in self._take_held():
        yield beam.window.TimestampedValue((key, subs), _min_time(subs))

  def finish_bundle(self):
    for key, subs in self._take_held():
      yield window_lib.GlobalWindows.windowed_value(
          (key, subs), timestamp=Timestamp.of(_min_time(subs)))

  def _take_held(self) -> list:
    held, self._held, self._rows = self._held, {}, 0
    return list(held.items())


def _min_time(batches: Sequence[EventBatch]) -> float:
  return min(b.min_time() for b in batches)


# Per WindowFeatures transform: the latest timer firing of any key in this
# process (epoch micros). The input watermark is one for all keys, so a
# key that never had a timer (a new key) still learns how far it is.
_FIRED: dict[str, int] = {}
_FIRED_LOCK = threading.Lock()


class _StreamingWindowStateFn(beam.DoFn):
  """Per key: running aggregates per open window, late/too-late handling.

  State (per key): the open windows' aggregates and a lower bound of the
  input watermark, learnt from timer firings. One event-time timer per key,
  at the next time that matters (a window end, or end + lateness).
  """

  WINDOWS = userstate.ReadModifyWriteStateSpec('windows', PickleCoder())
  WATERMARK = userstate.ReadModifyWriteStateSpec('watermark_lb', PickleCoder())
  EXPIRY = userstate.TimerSpec('expiry', TimeDomain.WATERMARK)

  def __init__(self, spec: WindowSpec, width: int, *, transform_id: str,
               source_watermark: Optional[SourceWatermark] = None):
    self._spec = spec
    self._width = width
    self._transform_id = transform_id
    self._source_watermark = source_watermark
    self.late_rows = Metrics.counter(_NAMESPACE, 'late_events')
    self.too_late_rows = Metrics.counter(_NAMESPACE, 'too_late_events')
    self.dropped_assignments = Metrics.counter(
        _NAMESPACE, 'expired_window_assignments')
    self.open_windows = Metrics.distribution(_NAMESPACE, 'open_windows_per_key')

  def process(self, element, windows_state=beam.DoFn.StateParam(WINDOWS),
              wm_state=beam.DoFn.StateParam(WATERMARK),
              expiry=beam.DoFn.TimerParam(EXPIRY)):
    _, batches = element  # one key's batches, in arrival order
    if isinstance(batches, EventBatch):
      # One batch per element: what a job of an earlier release (updated
      # in place on Dataflow) still has in flight.
      batches = [batches]
    wm = self._watermark(wm_state.read())
    windows = windows_state.read()
    if windows is None:
      windows = [] if self._spec.kind == 'session' else {}
    if self._spec.kind == 'session':
      results = [(batch, *self._sessions(batch, windows, wm))
                 for batch in batches]
    else:
      results = self._intervals(batches, windows, wm)
    windows_state.write(windows)
    self._set_timer(windows, wm, expiry)
    self.open_windows.update(len(windows))
    for batch, outputs, too_late in results:
      for sub in outputs:
        yield beam.window.TimestampedValue(sub, sub.min_time())
      for i in too_late:
        self.too_late_rows.inc()
        yield pvalue.TaggedOutput(dl.DEAD_LETTER_TAG, dl.of_row(
            batch, i, stage=dl.WINDOW, reason=dl.TOO_LATE,
            detail=(f'event time {batch.event_time[i]:.3f}: its window '
                    f'closed and the allowed lateness '
                    f'({self._spec.allowed_lateness_s:g}s) passed '
                    f'(watermark >= {wm / 1e6:.3f})')))

  def _watermark(self, key_bound: Optional[int]) -> int:
    """What this step knows of its input watermark (micros): the latest of
    this key's timer firings, any key's in this process, and the source's
    published watermark (transforms/source_watermark.py). Judged against
    it, an event this step accepts is never dropped as late by the sinks'
    GroupByKeys (their allowed lateness is longer)."""
    wm = _NEG_INF_US if key_bound is None else key_bound
    shared = _FIRED.get(self._transform_id)
    if shared is not None and shared > wm:
      wm = shared
    if self._source_watermark is not None:
      published = self._source_watermark.read()
      if published is not None and published > wm:
        wm = published
    return wm

  def _intervals(self, batches: Sequence[EventBatch], windows: dict,
                 wm: int) -> list[tuple[EventBatch, list, np.ndarray]]:
    """Fixed/sliding/global windows of one key's batches, in one pass over
    all of their rows (in arrival order): per batch, (the batch, its rows
    per window with their features, the indices of its rows too late)."""
    lateness = self._spec.allowed_lateness_s
    if len(batches) == 1:
      times, values = batches[0].event_time, batches[0].window_values
    else:
      times = np.concatenate([b.event_time for b in batches])
      values = np.concatenate([b.window_values for b in batches])
    starts_of = np.cumsum([0] + [len(b) for b in batches])
    layers = self._spec.assign(times)
    if len(layers) == 1:
      one = self._one_window(batches, starts_of, layers[0], values, windows,
                             wm)
      if one is not None:
        return one
    rows, starts, ends = _flatten(layers)
    expired = (_micros(ends + lateness) <= wm) & np.isfinite(ends)
    if expired.any():
      self.dropped_assignments.inc(int(expired.sum()))
    assigned_ok = np.zeros(len(times), dtype=bool)
    assigned_ok[rows[~expired]] = True
    rows, starts, ends = rows[~expired], starts[~expired], ends[~expired]
    outputs: list[list] = [[] for _ in batches]
    # Assignments are grouped by window, rows in arrival order within each.
    bounds = np.flatnonzero(starts[1:] != starts[:-1]) + 1
    for group in np.split(np.arange(len(rows)), bounds):
      if not len(group):
        continue
      idx = rows[group]
      wkey = (float(starts[group[0]]), float(ends[group[0]]))
      agg = windows.get(wkey)
      if agg is None:
        agg = windows[wkey] = _Agg(self._width)
      counts, mean, std = _cumulative(agg, values[idx])
      late = math.isfinite(wkey[1]) and _micros(wkey[1]) <= wm
      if late:
        self.late_rows.inc(len(idx))
      # The window's rows, batch by batch (ascending rows: each batch's
      # rows are one run).
      of_batch = np.searchsorted(starts_of, idx, side='right') - 1
      for run in np.split(np.arange(len(idx)),
                          np.flatnonzero(np.diff(of_batch)) + 1):
        j = int(of_batch[run[0]])
        outputs[j].append(_with_window(
            batches[j], idx[run] - starts_of[j], wkey, counts[run],
            mean[run], std[run], np.full(len(run), late)))
    too_late = np.flatnonzero(~assigned_ok)
    return [(batch, outputs[j],
             too_late[(too_late >= starts_of[j]) &
                      (too_late < starts_of[j + 1])] - starts_of[j])
            for j, batch in enumerate(batches)]

  def _one_window(self, batches, starts_of, layer, values, windows, wm):
    """``_intervals`` when every row falls in one window that is still
    open (nearly every call of a live stream), without the grouping; None
    otherwise."""
    starts, ends = layer
    start, end = starts[0], ends[0]
    if not (starts == start).all():  # also False for NaN
      return None
    wkey = (float(start), float(end))
    finite = math.isfinite(wkey[1])
    if finite and _micros(wkey[1] + self._spec.allowed_lateness_s) <= wm:
      return None
    agg = windows.get(wkey)
    if agg is None:
      agg = windows[wkey] = _Agg(self._width)
    counts, mean, std = _cumulative(agg, values)
    late = finite and _micros(wkey[1]) <= wm
    if late:
      self.late_rows.inc(len(values))
    none = np.empty(0, dtype=np.int64)
    out = []
    for j, batch in enumerate(batches):
      a, b = starts_of[j], starts_of[j + 1]
      out.append((batch, [_with_window(
          batch, np.arange(len(batch)), wkey, counts[a:b], mean[a:b],
          std[a:b], np.full(len(batch), late))], none))
    return out

  def _sessions(self, batch: EventBatch, sessions: list, wm: int):
    gap = self._spec.gap_s
    lateness = self._spec.allowed_lateness_s
    rows_by_window: dict[tuple, list] = {}
    too_late = []
    for i in range(len(batch)):
      t = float(batch.event_time[i])
      lo, hi = t, t + gap
      overlapping = [s for s in sessions if s[0] < hi and lo < s[1]]
      if not overlapping and _micros(hi + lateness) <= wm:
        too_late.append(i)
        continue
      agg = _Agg(self._width)
      for s in overlapping:
        lo, hi = min(lo, s[0]), max(hi, s[1])
        agg.merge(s[2])
        sessions.remove(s)
      counts, mean, std = _cumulative(agg, batch.window_values[i:i + 1])
      sessions.append([lo, hi, agg])
      rows_by_window.setdefault((lo, hi), []).append(
          (i, counts[0], mean[0], std[0], _micros(hi) <= wm))
    outputs = []
    for wkey, rows in rows_by_window.items():
      idx = np.asarray([r[0] for r in rows])
      late = np.asarray([r[4] for r in rows])
      if late.any():
        self.late_rows.inc(int(late.sum()))
      outputs.append(_with_window(
          batch, idx, wkey, np.asarray([r[1] for r in rows], dtype=np.int64),
          np.stack([r[2] for r in rows]), np.stack([r[3] for r in rows]),
          late))
    return outputs, np.asarray(too_late, dtype=np.int64)

  def _next_deadline(self, windows, wm: int) -> Optional[int]:
    """The next time (micros) at which the watermark matters: the earliest
    open window end not yet passed, else end + lateness."""
    lateness = self._spec.allowed_lateness_s
    ends = ([s[1] for s in windows] if isinstance(windows, list) else
            [w[1] for w in windows])
    times = []
    for e in ends:
      if math.isinf(e):
        continue
      end_us = _micros(e)
      times.append(end_us if end_us > wm else _micros(e + lateness))
    return min(times) if times else None

  def _set_timer(self, windows, wm: int, expiry) -> None:
    deadline = self._next_deadline(windows, wm)
    if deadline is not None:
      expiry.set(Timestamp(micros=deadline))

  @userstate.on_timer(EXPIRY)
  def on_expiry(self, fired=beam.DoFn.TimestampParam,
                windows_state=beam.DoFn.StateParam(WINDOWS),
                wm_state=beam.DoFn.StateParam(WATERMARK),
                expiry=beam.DoFn.TimerParam(EXPIRY)):
    # The timer fired, so the input watermark has passed its time, for
    # every key: the process-wide bound learns it too.
    previous = wm_state.read()
    wm = max(_NEG_INF_US if previous is None else previous, fired.micros)
    wm_state.write(wm)
    with _FIRED_LOCK:
      if fired.micros > _FIRED.get(self._transform_id, _NEG_INF_US):
        _FIRED[self._transform_id] = fired.micros
    windows = windows_state.read()
    if not windows:
      return
    lateness = self._spec.allowed_lateness_s
    if isinstance(windows, list):
      windows[:] = [s for s in windows if _micros(s[1] + lateness) > wm]
    else:
      for wkey in [w for w in windows
                   if not math.isinf(w[1]) and _micros(w[1] + lateness) <= wm]:
        del windows[wkey]
    if windows:
      windows_state.write(windows)
      self._set_timer(windows, wm, expiry)
    else:
      windows_state.clear()


class _Slim(NamedTuple):
  """What the exact batch aggregation needs of one key's rows of an
  EventBatch: no payloads, ids or model features, so the per-key shuffle
  moves ~30 bytes per event instead of the whole event."""
  batch_id: tuple
  rows: np.ndarray       # the rows' indices in the batch
  source: str
  positions: np.ndarray
  times: np.ndarray
  values: np.ndarray


def _batch_id(batch: EventBatch) -> tuple:
  """Identifies an EventBatch within a bounded input: records have unique
  (source, position), so the first one names the batch."""
  return (batch.source, int(batch.positions[0]))


def _key_groups(keys: list) -> list[tuple[str, Optional[np.ndarray]]]:
  """(key, row indices) per distinct key (None: all rows)."""
  first = keys[0]
  if keys.count(first) == len(keys):
    return [(first, None)]
  groups: dict[str, list[int]] = {}
  for i, k in enumerate(keys):
    groups.setdefault(k, []).append(i)
  return [(k, np.asarray(idx)) for k, idx in groups.items()]


def _events_of(item) -> EventBatch:
  """The EventBatch of an EventBatch or a ScoredBatch."""
  return item if isinstance(item, EventBatch) else item.batch


def _to_slims(item):
  """EventBatch or ScoredBatch -> (key, _Slim) per key of its rows."""
  batch = _events_of(item)
  batch_id = _batch_id(batch)
  for key, idx in _key_groups(batch.keys):
    if idx is None:
      yield key, _Slim(batch_id, np.arange(len(batch)), batch.source,
                       batch.positions, batch.event_time, batch.window_values)
    else:
      yield key, _Slim(batch_id, idx, batch.source, batch.positions[idx],
                       batch.event_time[idx], batch.window_values[idx])


class _BatchAggregatesFn(beam.DoFn):
  """Per key, all events at once: exact aggregates in event-time order.

  (key, [_Slim]) -> (batch id, (rows, starts, ends, counts, mean, std)) per
  batch: one entry per (row, window) assignment of the batch's rows, rows
  ascending within each window.
  """

  def __init__(self, spec: WindowSpec, width: int):
    self._spec = spec
    self._width = width

  def process(self, element):
    key, slims = element
    slims = list(slims)
    if len({b.batch_id for b in slims}) != len(slims):
      raise RuntimeError(f'key {key!r}: two EventBatches with the same first '
                         f'record: are records read twice?')
    sizes = np.asarray([len(b.times) for b in slims])
    times = np.concatenate([b.times for b in slims])
    values = np.concatenate([b.values for b in slims])
    # Ties in event time: source then position, i.e. file/partition order.
    names = sorted({b.source for b in slims})
    rank_of = {name: i for i, name in enumerate(names)}
    source_rank = np.repeat(np.asarray([rank_of[b.source] for b in slims]),
                            sizes)
    positions = np.concatenate([b.positions for b in slims])
    order = np.lexsort((positions, source_rank, times))
    owner = np.repeat(np.arange(len(slims)), sizes)
    local = np.concatenate([b.rows for b in slims])
    if self._spec.kind == 'session':
      layers = [self._session_layer(times, order)]
    else:
      layers = self._spec.assign(times)
    # Every (row, window) assignment; rows ranked by event-time order.
    rank = np.empty(len(times), dtype=np.int64)
    rank[order] = np.arange(len(times))
    rows, starts, ends = _flatten(layers)
    # Grouped by window start (a session's known end grows row by row, its
    # start identifies it), rows in event-time order within each window.
    by_window = np.lexsort((rank[rows], starts))
    rows, starts, ends = rows[by_window], starts[by_window], ends[by_window]
    counts = np.zeros(len(rows), dtype=np.int64)
    mean = np.zeros((len(rows), self._width), dtype=np.float32)
    std = np.zeros((len(rows), self._width), dtype=np.float32)
    bounds = np.flatnonzero(starts[1:] != starts[:-1]) + 1
    for group in np.split(np.arange(len(rows)), bounds):
      if len(group):
        counts[group], mean[group], std[group] = _cumulative(
            _Agg(self._width), values[rows[group]])
    # Per batch, rows in original order (a stable sort by batch, then row).
    by_batch = np.lexsort((local[rows], owner[rows]))
    split_at = np.cumsum(np.bincount(owner[rows], minlength=len(slims)))[:-1]
    for b, mine in enumerate(np.split(by_batch, split_at)):
      if len(mine):
        yield slims[b].batch_id, (local[rows[mine]], starts[mine],
                                  ends[mine], counts[mine], mean[mine],
                                  std[mine])

  def _session_layer(self, times, order):
    """Session bounds as known at each event in time order: (start, t+gap)."""
    gap = self._spec.gap_s
    t_sorted = times[order]
    new_session = np.ones(len(t_sorted), dtype=bool)
    new_session[1:] = np.diff(t_sorted) >= gap
    session_id = np.cumsum(new_session) - 1
    session_start = t_sorted[new_session][session_id]
    starts = np.empty(len(times))
    ends = np.empty(len(times))
    starts[order] = session_start
    # "Known so far" end: the latest event time seen in the session + gap.
    running_max = np.maximum.accumulate(t_sorted)
    ends[order] = running_max + gap
    return starts, ends


# The join of events and aggregates: the aggregates (small: no payloads or
# model features) are a dict side input keyed by batch (a dict, not a
# multimap: the worker's state cache sizes every value it loads, which per
# key cost ~1 ms), looked up by each packed batch. The events cross one
# stage boundary as opaque bytes (pickled once by these steps): no shuffle
# and no Flatten stage of their own, which on the FnApiRunner cost more
# than the aggregation itself (the runner copies each PCollection between
# stages several times).


def _join_key(batch_id: tuple) -> str:
  source, position = batch_id
  return f'{position}@{source}'


_TEXT_CODEC = None


def _text_codec():
  """zstd level 1 (pyarrow's): ~4x smaller JSON payloads at ~450 MB/s; the
  bytes it saves are copied several times on their way between stages."""
  global _TEXT_CODEC
  if _TEXT_CODEC is None:
    import pyarrow as pa  # pylint: disable=import-outside-toplevel
    _TEXT_CODEC = (pa.Codec('zstd', compression_level=1)
                   if pa.Codec.is_available('zstd') else False)
  return _TEXT_CODEC


def _pack_item(item) -> bytes:
  """EventBatch or ScoredBatch -> bytes: ids, keys and payloads compressed,
  the numeric columns as they are. A ScoredBatch's events lose their
  payloads and model inputs on the way (scored: nothing downstream needs
  them, and they are most of the bytes)."""
  batch = _events_of(item)
  scored = None
  if batch is not item:
    batch = batch.without_payloads()
    scored = dataclasses.replace(item, batch=None)
  texts = pickle.dumps((batch.raw, batch.ids, batch.keys, batch.records),
                       pickle.HIGHEST_PROTOCOL)
  codec = _text_codec()
  if codec:
    texts = (len(texts), codec.compress(texts, asbytes=True))
  rest = dataclasses.replace(batch, raw=[], ids=[], keys=[], records=[])
  return pickle.dumps((rest, texts, scored), pickle.HIGHEST_PROTOCOL)


def _unpack_item(blob: bytes):
  rest, texts, scored = pickle.loads(blob)
  if isinstance(texts, tuple):
    size, packed = texts
    texts = _text_codec().decompress(packed, decompressed_size=size,
                                     asbytes=True)
  raw, ids, keys, records = pickle.loads(texts)
  batch = dataclasses.replace(rest, raw=raw, ids=ids, keys=keys,
                              records=records)
  if scored is None:
    return batch
  return dataclasses.replace(scored, batch=batch)


def _pack_aggregates(element):
  batch_id, aggregates = element
  return _join_key(batch_id), pickle.dumps(aggregates,
                                           pickle.HIGHEST_PROTOCOL)


class _JoinAggregatesFn(beam.DoFn):
  """Packed EventBatch/ScoredBatch + its aggregates (side input: join key
  -> list of packed aggregates, one per key of the batch's rows) -> one
  item per window, rows in original order."""

  def process(self, blob, aggregates):
    item = _unpack_item(blob)
    batch = _events_of(item)
    key = _join_key(_batch_id(batch))
    parts = [pickle.loads(p) for p in aggregates.get(key, ())]
    if not parts:
      raise RuntimeError(f'batch {key}: no aggregates')
    if len(parts) == 1:
      rows, starts, ends, counts, mean, std = parts[0]
    else:
      rows, starts, ends, counts, mean, std = (
          np.concatenate(column) for column in zip(*parts))
      # Rows in original order within each window, as with one key.
      order = np.argsort(rows, kind='stable')
      rows, starts, ends = rows[order], starts[order], ends[order]
      counts, mean, std = counts[order], mean[order], std[order]
    if len(starts) and (starts == starts[0]).all() and (
        ends == ends[0]).all():
      windows = [(starts[0], ends[0], slice(None))]
    else:
      wins = np.stack([starts, ends], axis=1)
      windows = [(w[0], w[1], (wins[:, 0] == w[0]) & (wins[:, 1] == w[1]))
                 for w in np.unique(wins, axis=0)]
    for start, end, sel in windows:
      idx = rows[sel]
      sub = _with_window(batch, idx, (float(start), float(end)),
                         counts[sel], mean[sel], std[sel],
                         np.zeros(len(idx), dtype=bool))
      if item is not batch:
        scores = item.scores if sub.ids is batch.ids else item.scores[idx]
        sub = dataclasses.replace(item, batch=sub, scores=scores)
      yield beam.window.TimestampedValue(sub, _events_of(sub).min_time())


class _AssignEventWindows(window_lib.NonMergingWindowFn):
  """Assigns each EventBatch the window its rows were aggregated in."""

  def assign(self, context):
    return [_beam_window(*_events_of(context.element).window)]

  def get_window_coder(self):
    return coders.IntervalWindowCoder()

  def __eq__(self, other):
    return type(self) == type(other)  # pylint: disable=unidiomatic-typecheck

  def __hash__(self):
    return hash(type(self))


DEFAULT_TRIGGER = trigger_lib.AfterWatermark(late=trigger_lib.AfterCount(1))

# How much longer than the allowed lateness the windowed steps downstream
# (file sinks) keep a window's panes open in streaming. Lateness is judged
# once, here: an event this transform accepts goes to every sink, and the
# sinks' GroupByKeys must not drop it. On the local runner this step knows
# the source's watermark and the margin is never needed; on other runners
# it knows a lower bound (timer firings), and the margin covers the gap. It
# costs a GroupByKey's trigger state per window and shard for that long.
DEFAULT_SINK_GRACE_S = 3600.0


class WindowOutputs(NamedTuple):
  """The two outputs of WindowFeatures."""
  events: beam.PCollection
  dead_letters: beam.PCollection


class WindowFeatures(beam.PTransform):
  """EventBatch -> EventBatch with window features, in event-time windows.

  Bounded input may also be ScoredBatches (-> ScoredBatches whose batch has
  the window features; payloads and model inputs dropped).

  Returns WindowOutputs: ``events`` (EventBatch with window, win_count,
  win_mean, win_std, late set; assigned to their Beam windows) and
  ``dead_letters`` (too-late events). See the module docstring.
  """

  def __init__(self, spec: WindowSpec, window_feature_count: int, *,
               trigger: Optional[Any] = None,
               accumulation_mode=trigger_lib.AccumulationMode.DISCARDING,
               bounded: Optional[bool] = None,
               source_watermark: Optional[SourceWatermark] = None,
               sink_grace_s: float = DEFAULT_SINK_GRACE_S):
    """Configures the composite.

    Args:
      spec: the window strategy and allowed lateness.
      window_feature_count: width of EventBatch.window_values.
      trigger: trigger for aggregations downstream (e.g. windowed file
        writes); default: at the watermark, then once per late event.
      accumulation_mode: for those downstream panes.
      bounded: force the batch (True) or streaming (False) implementation;
        default: from the input PCollection.
      source_watermark: the source's published watermark, where the source
        runs in this process (transforms/source_watermark.py): lateness is
        then judged exactly as the sinks' GroupByKeys will judge it.
      sink_grace_s: in streaming, the allowed lateness of the output
        windows exceeds ``spec.allowed_lateness_s`` by this much, so no
        sink drops an event this transform accepted (DEFAULT_SINK_GRACE_S).
    """
    super().__init__()
    self._spec = spec
    self._width = window_feature_count
    self._trigger = trigger or DEFAULT_TRIGGER
    self._accumulation = accumulation_mode
    self._bounded = bounded
    self._source_watermark = source_watermark
    if sink_grace_s < 0:
      raise ValueError(f'sink grace must be >= 0 s, got {sink_grace_s}')
    self._sink_grace_s = sink_grace_s
    # Names this transform's process-wide watermark bound (_FIRED).
    self._transform_id = uuid.uuid4().hex

  def expand(self, pcoll):
    bounded = pcoll.is_bounded if self._bounded is None else self._bounded
    batches = pcoll | 'IntoGlobalWindow' >> beam.WindowInto(
        window_lib.GlobalWindows())
    if bounded:
      # Exact aggregates per key from a slim copy of the events, joined
      # back to the events by batch: the events are grouped by batch, not
      # by key, so they stay spread over workers whatever the number of
      # keys (with one key, a per-key group would put every event and all
      # the scoring after it on one worker).
      aggregates = (batches
                    | 'SlimPerKey' >> beam.FlatMap(_to_slims)
                    | 'GroupKeyEvents' >> beam.GroupByKey()
                    | 'AggregateInTimeOrder' >> beam.ParDo(
                        _BatchAggregatesFn(self._spec, self._width))
                    | 'PackAggregates' >> beam.Map(
                        _pack_aggregates).with_output_types(tuple[str, bytes])
                    | 'GroupAggregatesByBatch' >> beam.GroupByKey()
                    | 'ListAggregates' >> beam.MapTuple(
                        lambda key, parts: (key, list(parts))
                    ).with_output_types(tuple[str, list[bytes]]))
      events = (batches
                | 'PackEvents' >> beam.Map(_pack_item).with_output_types(
                    bytes)
                | 'JoinAggregates' >> beam.ParDo(
                    _JoinAggregatesFn(), beam.pvalue.AsDict(aggregates)
                ).with_output_types(pcoll.element_type))
      dead = (pcoll.pipeline
              | 'NoLateEventsInBatch' >> beam.Create([]))
    else:
      keyed = batches | 'SplitByKey' >> beam.ParDo(
          _SplitByKey()).with_output_types(tuple[str, Any])
      out = keyed | 'AggregatePerKeyWindow' >> beam.ParDo(
          _StreamingWindowStateFn(
              self._spec, self._width, transform_id=self._transform_id,
              source_watermark=self._source_watermark)).with_output_types(
                  EventBatch).with_outputs(dl.DEAD_LETTER_TAG, main='events')
      events, dead = out.events, out[dl.DEAD_LETTER_TAG]
    if self._spec.kind == 'global':
      windowfn = window_lib.GlobalWindows()
    else:
      windowfn = _AssignEventWindows()
    windowed = events | 'IntoEventWindows' >> beam.WindowInto(
        windowfn, trigger=self._trigger,
        accumulation_mode=self._accumulation,
        allowed_lateness=self._spec.allowed_lateness_s + (
            0 if bounded else self._sink_grace_s))
    return WindowOutputs(windowed, dead)


__all__: Sequence[str] = ['BufferHorizon', 'UNKNOWN_HORIZON_US',
                           'WindowFeatures', 'WindowSpec', 'WINDOW_KINDS']
