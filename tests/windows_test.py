"""WindowFeatures: window assignment, per-key features, lateness, sessions."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to, equal_to_per_window
from apache_beam.transforms.window import IntervalWindow

from transforms import windows
from transforms.events import EventBatch
from transforms.windows import WindowFeatures, WindowSpec


def make_batch(rows, source='kafka:t/0', start_pos=0):
  """rows: (event_id, key, event_time, value) -> EventBatch with one window
  feature (the value)."""
  n = len(rows)
  values = np.asarray([[r[3]] for r in rows], dtype=np.float32)
  return EventBatch(
      source=source, positions=np.arange(start_pos, start_pos + n),
      raw=[r[0].encode() for r in rows], ids=[r[0] for r in rows],
      keys=[r[1] for r in rows],
      event_time=np.asarray([r[2] for r in rows], dtype=np.float64),
      features=values, window_values=values, labels=None,
      read_time=np.zeros(n))


def explode(batch: EventBatch):
  """One comparable tuple per row: (id, window, count, mean, std, late)."""
  for i in range(len(batch)):
    yield (batch.ids[i], batch.window, int(batch.win_count[i]),
           round(float(batch.win_mean[i][0]), 4),
           round(float(batch.win_std[i][0]), 4), bool(batch.late[i]))


_COLLECTED: list = []


def _collect(row):
  # Module-level, so it survives the runner's DoFn pickling (a bound
  # list.append would append to a copy).
  _COLLECTED.append(row)


def streaming_pipeline():
  return beam.Pipeline(runner=BundleBasedDirectRunner(),
                       options=PipelineOptions(streaming=True))


# --- assignment on arrays -------------------------------------------------

def test_fixed_and_sliding_assignment():
  t = np.asarray([0.0, 9.99, 10.0, 25.5])
  (starts, ends), = WindowSpec('fixed', size_s=10).assign(t)
  assert starts.tolist() == [0, 0, 10, 20] and ends.tolist() == [10, 10, 20, 30]
  layers = WindowSpec('sliding', size_s=10, period_s=5).assign(t)
  assert len(layers) == 2
  for starts, ends in layers:
    # Every row lies in its window of every layer.
    assert ((starts <= t) & (t < ends)).all()
  windows_of_25_5 = sorted((float(s[3]), float(e[3])) for s, e in layers)
  assert windows_of_25_5 == [(20.0, 30.0), (25.0, 35.0)]
  windows_of_0 = sorted((float(s[0]), float(e[0])) for s, e in layers)
  assert windows_of_0 == [(-5.0, 5.0), (0.0, 10.0)]


@pytest.mark.parametrize('kwargs, message', [
    (dict(kind='hourly'), 'window kind'),
    (dict(kind='fixed', size_s=0), 'size must be > 0'),
    (dict(kind='sliding', size_s=10, period_s=20), 'period <= size'),
    (dict(kind='session'), 'gap > 0'),
    (dict(kind='fixed', allowed_lateness_s=-1), 'lateness must be >= 0'),
])
def test_bad_specs_are_rejected(kwargs, message):
  with pytest.raises(ValueError, match=message):
    WindowSpec(**kwargs)


# --- streaming: events are emitted at once, lateness is explicit ------------

def test_on_time_late_and_too_late_events_per_window():
  spec = WindowSpec('fixed', size_s=10, allowed_lateness_s=5)
  stream = (TestStream()
            .advance_watermark_to(0)
            .add_elements([beam.window.TimestampedValue(
                make_batch([('a1', 'a', 1.0, 1.0), ('b1', 'b', 2.0, 10.0),
                            ('a2', 'a', 3.0, 3.0)]), 1.0)])
            .add_elements([beam.window.TimestampedValue(
                make_batch([('a3', 'a', 12.0, 5.0)], start_pos=3), 12.0)])
            # Window [0, 10) closes; lateness lasts until 15.
            .advance_watermark_to(12)
            .add_elements([beam.window.TimestampedValue(
                make_batch([('a4', 'a', 5.0, 7.0)], start_pos=4), 5.0)])
            .advance_watermark_to(21)
            .add_elements([beam.window.TimestampedValue(
                make_batch([('a5', 'a', 6.0, 9.0)], start_pos=5), 6.0)])
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    out = p | stream | WindowFeatures(spec, 1)
    rows = out.events | beam.FlatMap(explode)
    assert_that(rows, equal_to_per_window({
        IntervalWindow(0, 10): [
            ('a1', (0.0, 10.0), 1, 1.0, 0.0, False),
            ('b1', (0.0, 10.0), 1, 10.0, 0.0, False),
            ('a2', (0.0, 10.0), 2, 2.0, 1.0, False),
            # Late but within the allowed lateness: scored, flagged.
            ('a4', (0.0, 10.0), 3, 3.6667, 2.4944, True)],
        IntervalWindow(10, 20): [
            ('a3', (10.0, 20.0), 1, 5.0, 0.0, False)],
    }), label='PerWindow')
    assert_that(out.dead_letters | beam.Map(lambda d: (d.event_id, d.reason,
                                                       d.stage)),
                equal_to([('a5', 'too_late', 'window')]), label='TooLate')


def test_session_merge_when_an_event_bridges_two_sessions():
  spec = WindowSpec('session', gap_s=6)
  stream = (TestStream()
            .advance_watermark_to(0)
            .add_elements([beam.window.TimestampedValue(
                make_batch([('x0', 'k', 0.0, 2.0)]), 0.0)])
            .add_elements([beam.window.TimestampedValue(
                make_batch([('x10', 'k', 10.0, 4.0)], start_pos=1), 10.0)])
            # [5, 11) overlaps [0, 6) and [10, 16): one session [0, 16).
            .add_elements([beam.window.TimestampedValue(
                make_batch([('x5', 'k', 5.0, 6.0)], start_pos=2), 5.0)])
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    rows = (p | stream | WindowFeatures(spec, 1)).events | beam.FlatMap(
        explode)
    assert_that(rows, equal_to_per_window({
        IntervalWindow(0, 6): [('x0', (0.0, 6.0), 1, 2.0, 0.0, False)],
        IntervalWindow(10, 16): [('x10', (10.0, 16.0), 1, 4.0, 0.0, False)],
        IntervalWindow(0, 16): [('x5', (0.0, 16.0), 3, 4.0, 1.633, False)],
    }))


# --- batch equals streaming for in-order data ------------------------------

def _in_order_rows(n=300):
  rng = np.random.default_rng(7)
  # TestStream watermarks have millisecond precision.
  t = np.round(np.cumsum(rng.uniform(0.05, 0.6, n)) + 1000, 3)
  return [(f'e{i}', f'k{i % 3}', float(t[i]), float(rng.normal()))
          for i in range(n)]


@pytest.mark.parametrize('spec', [
    WindowSpec('fixed', size_s=7),
    WindowSpec('sliding', size_s=10, period_s=4),
    WindowSpec('session', gap_s=0.5),
    WindowSpec('global'),
], ids=['fixed', 'sliding', 'session', 'global'])
def test_batch_equals_streaming_for_in_order_events(spec):
  rows = _in_order_rows()
  chunks = [rows[i:i + 37] for i in range(0, len(rows), 37)]
  batches = [make_batch(c, start_pos=i * 37) for i, c in enumerate(chunks)]

  stream = TestStream().advance_watermark_to(0)
  for b in batches:
    stream = stream.add_elements(
        [beam.window.TimestampedValue(b, b.min_time())])
    stream = stream.advance_watermark_to(b.min_time())
  stream = stream.advance_watermark_to_infinity()
  _COLLECTED.clear()
  with streaming_pipeline() as p:
    _ = ((p | stream | WindowFeatures(spec, 1)).events
         | beam.FlatMap(explode) | beam.Map(_collect))
  streamed = list(_COLLECTED)

  with beam.Pipeline(runner=FnApiRunner()) as p:
    batch_rows = ((p | beam.Create(batches)
                   | beam.Map(lambda b: beam.window.TimestampedValue(
                       b, b.min_time()))
                   | WindowFeatures(spec, 1)).events
                  | beam.FlatMap(explode))
    assert_that(batch_rows, equal_to(streamed))
  per_event = 2 if spec.kind == 'sliding' else 1
  assert len(streamed) >= len(rows) * per_event


def _explode_scored(scored):
  """Rows of a windowed ScoredBatch, with each row's score and what the
  batch still carries."""
  b = scored.batch
  for row, score in zip(explode(b), scored.scores.tolist()):
    yield row + (round(score, 4), scored.model_version, len(b.raw),
                 b.features.shape[1])


@pytest.mark.parametrize('spec', [
    WindowSpec('fixed', size_s=7),
    WindowSpec('sliding', size_s=10, period_s=4),
    WindowSpec('session', gap_s=0.5),
], ids=['fixed', 'sliding', 'session'])
def test_batch_joins_window_features_to_scored_events(spec):
  # A batch job scores first and joins the window features to the scores:
  # the same window features as for the events, each score on its own row
  # (sliding windows and three keys per batch split batches into parts),
  # payloads and model inputs dropped on the way.
  from transforms.events import ScoredBatch
  rows = _in_order_rows()
  batches = [make_batch(rows[i:i + 37], start_pos=i)
             for i in range(0, len(rows), 37)]
  score_of = {r[0]: round(r[3] * 10 + 1, 4) for r in rows}
  scored = [ScoredBatch(b, np.asarray([score_of[i] for i in b.ids],
                                      dtype=np.float32), 3, 1.0)
            for b in batches]
  _COLLECTED.clear()
  with beam.Pipeline(runner=FnApiRunner()) as p:
    _ = ((p | beam.Create(batches) | WindowFeatures(spec, 1, bounded=True))
         .events | beam.FlatMap(explode) | beam.Map(_collect))
  expected = [r + (score_of[r[0]], 3, 0, 0) for r in _COLLECTED]
  assert len(expected) >= len(rows)
  with beam.Pipeline(runner=FnApiRunner()) as p:
    got = ((p | beam.Create(scored) | WindowFeatures(spec, 1, bounded=True))
           .events | beam.FlatMap(_explode_scored))
    assert_that(got, equal_to(expected))


# --- one state access per key and bundle ------------------------------------

class _State:
  """A ReadModifyWrite state cell that counts its reads and writes."""

  def __init__(self):
    self.value, self.reads, self.writes = None, 0, 0

  def read(self):
    self.reads += 1
    return self.value

  def write(self, value):
    self.writes += 1
    self.value = value

  def clear(self):
    self.value = None


class _Timer:

  def set(self, timestamp):
    self.at = timestamp


def _run_split(batches):
  fn = windows._SplitByKey()  # pylint: disable=protected-access
  fn.start_bundle()
  early = [out for b in batches for out in fn.process(b)]
  return early, list(fn.finish_bundle())


def test_a_bundle_of_batches_is_one_element_per_key_with_the_same_features():
  # Three partitions' batches in one bundle, two keys interleaved.
  batches = [
      make_batch([('a1', 'a', 1.0, 1.0), ('b1', 'b', 1.5, 10.0)], 'kafka:t/0'),
      make_batch([('b2', 'b', 2.0, 20.0), ('a2', 'a', 2.5, 3.0)], 'kafka:t/1'),
      make_batch([('a3', 'a', 12.0, 5.0)], 'kafka:t/2')]
  early, late = _run_split(batches)
  assert early == []
  by_key = {wv.value[0]: wv for wv in late}
  assert sorted(by_key) == ['a', 'b']
  # Each key's rows, one sub-batch per input batch, in arrival order.
  assert [[b.ids for b in by_key['a'].value[1]]] == [[['a1'], ['a2'], ['a3']]]
  assert [b.source for b in by_key['b'].value[1]] == ['kafka:t/0', 'kafka:t/1']
  assert by_key['a'].timestamp.micros == 1_000_000
  assert by_key['b'].timestamp.micros == 1_500_000

  spec = WindowSpec(kind='fixed', size_s=10.0, allowed_lateness_s=0.0)
  # All of a key's batches in one call: one state read and one write...
  together = windows._StreamingWindowStateFn(  # pylint: disable=protected-access
      spec, 1, transform_id='together')
  cell, wm = _State(), _State()
  rows = [row for out in together.process(by_key['a'].value, cell, wm,
                                          _Timer())
          for row in explode(out.value)]
  assert (cell.reads, cell.writes) == (1, 1)
  # ...and the same features as one call per batch.
  apart = windows._StreamingWindowStateFn(  # pylint: disable=protected-access
      spec, 1, transform_id='apart')
  windows_apart = _State()
  rows_apart = [row for sub in by_key['a'].value[1]
                for out in apart.process(('a', [sub]), windows_apart,
                                         _State(), _Timer())
                for row in explode(out.value)]
  # An element of one batch (the shape before) is still understood.
  single = windows._StreamingWindowStateFn(  # pylint: disable=protected-access
      spec, 1, transform_id='single')
  cell_single = _State()
  rows_single = [row for sub in by_key['a'].value[1]
                 for out in single.process(('a', sub), cell_single, _State(),
                                           _Timer())
                 for row in explode(out.value)]
  assert rows == rows_apart == rows_single == [
      ('a1', (0.0, 10.0), 1, 1.0, 0.0, False),
      ('a2', (0.0, 10.0), 2, 2.0, 1.0, False),
      ('a3', (10.0, 20.0), 1, 5.0, 0.0, False)]


def test_split_by_key_holds_back_a_bounded_number_of_rows(monkeypatch):
  monkeypatch.setattr(windows, '_MAX_HELD_ROWS', 3)
  batches = [make_batch([(f'e{i}', 'k', float(i), 1.0)]) for i in range(5)]
  early, late = _run_split(batches)
  # Emitted as soon as 3 rows were held, the rest at the end of the bundle.
  assert [[b.ids for b in out.value[1]] for out in early] == [
      [['e0'], ['e1'], ['e2']]]
  assert [[b.ids for b in wv.value[1]] for wv in late] == [[['e3'], ['e4']]]


def test_too_late_rows_of_a_keys_batches_are_dead_lettered_from_their_batch():
  batches = [
      make_batch([('a1', 'a', 1.0, 1.0), ('a0', 'a', 11.0, 2.0)], 'kafka:t/0'),
      make_batch([('a3', 'a', 12.0, 4.0), ('a2', 'a', 2.5, 3.0)], 'kafka:t/1',
                 start_pos=40)]
  spec = WindowSpec(kind='fixed', size_s=10.0, allowed_lateness_s=0.0)
  fn = windows._StreamingWindowStateFn(spec, 1, transform_id='late')  # pylint: disable=protected-access
  watermark = _State()
  watermark.value = 10_000_000  # the window [0, 10) closed, no lateness
  out = list(fn.process(('a', batches), _State(), watermark, _Timer()))
  dead = [o.value for o in out if isinstance(o, beam.pvalue.TaggedOutput)]
  scored = [row for o in out if not isinstance(o, beam.pvalue.TaggedOutput)
            for row in explode(o.value)]
  # Each too-late row named by its own batch's source and position.
  assert sorted((d.event_id, d.source, d.position, d.reason)
                for d in dead) == [('a1', 'kafka:t/0', 0, 'too_late'),
                                   ('a2', 'kafka:t/1', 41, 'too_late')]
  assert scored == [('a0', (10.0, 20.0), 1, 2.0, 0.0, False),
                    ('a3', (10.0, 20.0), 2, 3.0, 1.0, False)]


@pytest.mark.parametrize('spread_s', [3.0, 40.0])
def test_window_features_of_a_keys_batches_match_a_row_by_row_computation(
    spread_s):
  # spread 3 s: most calls have every row in one window (the fast path);
  # 40 s: rows of four windows, out of order.
  rng = np.random.default_rng(7)
  spec = WindowSpec(kind='fixed', size_s=10.0, allowed_lateness_s=3600.0)
  fn = windows._StreamingWindowStateFn(spec, 1, transform_id='reference')  # pylint: disable=protected-access
  cell, seen, got = _State(), {}, {}
  n = 0
  for call in range(30):
    batches = []
    for part in range(int(rng.integers(1, 4))):
      rows = [(f'e{n + i}', 'k', float(100 + rng.uniform(0, spread_s)),
               float(rng.normal())) for i in range(int(rng.integers(1, 6)))]
      n += len(rows)
      batches.append(make_batch(rows, f'kafka:t/{part}'))
    for out in fn.process(('k', batches), cell, _State(), _Timer()):
      for row in explode(out.value):
        got[row[0]] = row[1:5]
    # The reference: each row's window, and the count, mean and std of the
    # rows of that window so far (arrival order), this one included.
    for batch in batches:
      for i in range(len(batch)):
        start = np.floor(batch.event_time[i] / 10.0) * 10.0
        values = seen.setdefault(start, [])
        values.append(float(batch.window_values[i][0]))
        seen_ = np.asarray(values, dtype=np.float32)
        expected = ((start, start + 10.0), len(values),
                    round(float(seen_.mean()), 4), round(float(seen_.std()), 4))
        assert got[batch.ids[i]][:2] == expected[:2], batch.ids[i]
        np.testing.assert_allclose(got[batch.ids[i]][2:], expected[2:],
                                   atol=2e-4, err_msg=batch.ids[i])
  assert len(got) == n
