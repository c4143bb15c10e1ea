"""The scoring core every job shares: raw record chunks -> predictions.

``score_records`` applies the same transforms, with the same labels, in
score_stream (unbounded Kafka input) and backfill (files or a Kafka range):
ParseEvents -> WindowFeatures -> ScoreEvents -> ToPredictionRows, and the
flatten of every stage's dead letters. Batch and streaming differ in
WindowFeatures' implementation (exact per-key event-time order for bounded
input, running state for unbounded input), which it picks from the input's
boundedness unless told, and in its place: a batch scores first and joins
the window features to the scored events (ParseEvents -> ScoreEvents ->
WindowFeatures -> ToPredictionRows; same outputs, see score_records). The jobs add their source in front and
``beam_jobs.outputs.write_outputs`` behind.

The transforms are applied to the pipeline directly (not inside a composite)
so that the step names of the streaming job stay what they were: Dataflow
matches steps by name when a running job is updated.

Also here: ``ReportProgress``, a pass-through step counting what flows by
for the progress lines of long batch runs.
"""

import logging
import os
import threading
import time
from typing import NamedTuple, Optional

import apache_beam as beam
from apache_beam.metrics import Metrics

from beam_jobs import config
from transforms import dead_letters as dl
from transforms.inference import ScoreEvents
from transforms.prediction_rows import ToPredictionRows
from transforms.source_watermark import SourceWatermark
from transforms.windows import WindowFeatures

_LOGGER = logging.getLogger(__name__)

PROGRESS_NAMESPACE = 'progress'
READ = 'records_read'
SCORED = 'events_scored'
DEAD = 'dead_letters'


class ScoringOutputs(NamedTuple):
  """What ``score_records`` returns.

  Attributes:
    predictions: lists of prediction rows (one list per scored batch), in
      their event-time windows.
    dead_letters: DeadLetters of parse, window and inference, in the
      GlobalWindow.
  """
  predictions: beam.PCollection
  dead_letters: beam.PCollection


def score_records(records: beam.PCollection,
                  settings: config.ScoringSettings, *,
                  payload_format: Optional[str] = None,
                  bounded: Optional[bool] = None,
                  event_filter: Optional[beam.PTransform] = None,
                  source_watermark: Optional[SourceWatermark] = None
                  ) -> ScoringOutputs:
  """Parses, windows and scores chunks of raw records.

  Args:
    records: KafkaRecord, RawRecord or Document items, or lists of them
      (one list per chunk: per-element overhead dominates).
    settings: events, window and model settings (beam_jobs/config.py).
    payload_format: the payloads' format when not ``--input_format``
      (e.g. CSV lines of a file); unused for Documents.
    bounded: force WindowFeatures' batch (True) or streaming (False)
      implementation; default: from ``records``.
    event_filter: an EventBatch -> EventBatch transform applied after
      parsing, before windows (e.g. transforms.dedup.DropScoredEvents), so
      that what it drops does not count in window features either.
    source_watermark: the read's published watermark, where it runs in
      this process (lateness is then judged as the sinks will judge it).
  """
  schema = settings.events.schema
  parsed = records | 'ParseEvents' >> settings.events.parse_events(
      payload_format)
  events_in = parsed.events
  if event_filter is not None:
    events_in = events_in | 'FilterEvents' >> event_filter
  if bounded is None:
    bounded = records.is_bounded
  window_features = WindowFeatures(settings.window,
                                   len(schema.window_features),
                                   bounded=bounded,
                                   source_watermark=source_watermark)
  if bounded:
    # Scored first, window features joined to the scores: the model does
    # not take window features, a batch has no late events to drop before
    # scoring, and the join's stage boundary then moves ids and scores
    # instead of payloads and model inputs (~5x fewer bytes, which the
    # FnApiRunner copies several times).
    scored = events_in | 'ScoreEvents' >> ScoreEvents(
        settings.model.handler(schema))
    windowed = scored.scored | 'WindowFeatures' >> window_features
    scored_rows = windowed.events
  else:
    windowed = events_in | 'WindowFeatures' >> window_features
    scored = windowed.events | 'ScoreEvents' >> ScoreEvents(
        settings.model.handler(schema))
    scored_rows = scored.scored
  predictions = scored_rows | 'ToPredictionRows' >> beam.ParDo(
      ToPredictionRows(schema))
  dead_letters = ((parsed[dl.DEAD_LETTER_TAG], windowed.dead_letters,
                   scored.dead_letters)
                  | 'FlattenDeadLetters' >> beam.Flatten())
  return ScoringOutputs(predictions, dead_letters)


# --- Progress -------------------------------------------------------------


class _ProgressLog:
  """Per-process counts of one run, logged every ``interval_s`` seconds by
  a daemon thread while they change."""

  _runs: dict = {}
  _lock = threading.Lock()

  def __init__(self, run_id: str, interval_s: float):
    self._run_id = run_id
    self._interval_s = interval_s
    self._counts = {READ: 0, SCORED: 0, DEAD: 0}
    self._started = time.monotonic()
    self._thread: Optional[threading.Thread] = None
    self._lock = threading.Lock()

  @classmethod
  def of(cls, run_id: str, interval_s: float) -> '_ProgressLog':
    with cls._lock:
      log = cls._runs.get(run_id)
      if log is None:
        log = cls._runs[run_id] = cls(run_id, interval_s)
      return log

  def add(self, kind: str, n: int) -> None:
    with self._lock:
      self._counts[kind] += n
      if self._thread is None or not self._thread.is_alive():
        self._thread = threading.Thread(target=self._loop, daemon=True,
                                        name=f'progress-{self._run_id[:8]}')
        self._thread.start()

  def _loop(self) -> None:
    last = None
    last_time = time.monotonic()
    quiet = 0
    while quiet < 3:
      time.sleep(self._interval_s)
      with self._lock:
        counts = dict(self._counts)
      now = time.monotonic()
      if counts == last:
        quiet += 1
        continue
      quiet = 0
      elapsed = now - self._started
      recent = counts[READ] - (last or {READ: 0})[READ]
      _LOGGER.info(
          'progress (worker pid %d, %.0f s): read %d records, scored %d '
          'events, %d dead letters; %.0f records/s (last %.0f s), %.0f '
          'records/s overall', os.getpid(), elapsed, counts[READ],
          counts[SCORED], counts[DEAD], recent / max(now - last_time, 1e-9),
          now - last_time, counts[READ] / max(elapsed, 1e-9))
      last, last_time = counts, now


class _ReportProgressFn(beam.DoFn):

  def __init__(self, kind: str, run_id: str, interval_s: float):
    if kind not in (READ, SCORED, DEAD):
      raise ValueError(f'progress kind {kind!r}')
    self._kind = kind
    self._run_id = run_id
    self._interval_s = interval_s
    self._counter = Metrics.counter(PROGRESS_NAMESPACE, kind)
    self._by_reason: dict = {}
    self._log = None

  def setup(self):
    if self._interval_s > 0:
      self._log = _ProgressLog.of(self._run_id, self._interval_s)

  def process(self, element):
    n = 1 if self._kind == DEAD else len(element)
    self._counter.inc(n)
    if self._log is not None:
      self._log.add(self._kind, n)
    if self._kind == DEAD:
      name = f'dead_letters_{element.stage}_{element.reason}'
      counter = self._by_reason.get(name)
      if counter is None:
        counter = self._by_reason[name] = Metrics.counter(PROGRESS_NAMESPACE,
                                                          name)
      counter.inc()
    yield element


class ReportProgress(beam.PTransform):
  """Passes elements through, counting them for progress reports.

  ``kind``: records_read (lists of records), events_scored (lists of
  prediction rows) or dead_letters (DeadLetters, also counted per stage and
  reason). Counts go to Beam counters in namespace ``progress`` (for the
  final summary and the runner's UI) and, when ``interval_s`` > 0, to a
  per-worker log line every ``interval_s`` seconds while they change.
  Steps with the same ``run_id`` share one log line per worker.
  """

  def __init__(self, kind: str, run_id: str, interval_s: float):
    super().__init__()
    self._fn = _ReportProgressFn(kind, run_id, interval_s)

  def expand(self, pcoll):
    # The input's type, so the output keeps the input's coder.
    return pcoll | 'Count' >> beam.ParDo(self._fn).with_output_types(
        pcoll.element_type)


__all__ = ['ReportProgress', 'ScoringOutputs', 'score_records']
