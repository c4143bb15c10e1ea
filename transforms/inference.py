"""Scoring EventBatches with RunInference, failures to dead letters.

``ScoreEvents`` wraps Beam's ``RunInference`` around a model handler that
takes EventBatches and gives ScoredBatches (models/handler.py: batched by
rows, model shared per process, hot swap) with exception handling: a batch the runner could not score at all, and single
rows the handler isolated as failing, become DeadLetters (stage inference,
reason inference_error) with their original bytes, in the global window;
every other row is scored.
"""

from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.transforms import window

from transforms.events import ScoredBatch
from transforms import dead_letters as dl
from transforms.events import EventBatch

_NAMESPACE = 'inference'


def _row_dead_letter(batch: EventBatch, i: int, detail: str) -> dl.DeadLetter:
  return dl.of_row(batch, i, stage=dl.INFERENCE, reason=dl.INFERENCE_ERROR,
                   detail=detail[:1000])


class _SplitFailedRows(beam.DoFn):
  """ScoredBatch -> the rows that scored (main) + dead letters for the rest.

  Counts scored events in total and per model version
  (``events_scored_v<version>``: which versions served, for the summaries).
  """

  def __init__(self):
    self.scored = Metrics.counter(_NAMESPACE, 'events_scored')
    self.failed = Metrics.counter(_NAMESPACE, 'events_failed')
    self._by_version: dict = {}

  def _count_scored(self, n: int, version: int) -> None:
    self.scored.inc(n)
    counter = self._by_version.get(version)
    if counter is None:
      counter = self._by_version[version] = Metrics.counter(
          _NAMESPACE, f'events_scored_v{version}')
    counter.inc(n)

  def process(self, scored: ScoredBatch):
    if not scored.errors:
      self._count_scored(len(scored.batch), scored.model_version)
      yield scored
      return
    ok = np.asarray([e is None for e in scored.errors])
    for i in np.flatnonzero(~ok):
      self.failed.inc()
      yield pvalue.TaggedOutput(dl.DEAD_LETTER_TAG, _row_dead_letter(
          scored.batch, int(i), scored.errors[i]))
    if ok.any():
      self._count_scored(int(ok.sum()), scored.model_version)
      yield ScoredBatch(scored.batch.take(ok), scored.scores[ok],
                        scored.model_version, scored.scored_time)


class _FailedBatchToDeadLetters(beam.DoFn):
  """(failed input, error) from RunInference's DLQ -> one letter per row."""

  def __init__(self):
    self.failed = Metrics.counter(_NAMESPACE, 'events_failed')

  def process(self, failure):
    element, error = failure
    batches = element if isinstance(element, (list, tuple)) else [element]
    detail = str(error[1] if isinstance(error, tuple) and len(error) > 1
                 else error)
    for batch in batches:
      if not isinstance(batch, EventBatch):
        continue
      for i in range(len(batch)):
        self.failed.inc()
        yield _row_dead_letter(batch, i, f'batch failed: {detail}')


class ScoreOutputs(NamedTuple):
  scored: beam.PCollection
  dead_letters: beam.PCollection


class ScoreEvents(beam.PTransform):
  """EventBatch -> ScoredBatch, with dead letters for what failed."""

  def __init__(self, handler: ModelHandler):
    super().__init__()
    self._handler = handler

  def expand(self, pcoll):
    results, dlq = (pcoll
                    | 'RunInference' >> RunInference(
                        self._handler).with_exception_handling())
    split = results | 'SplitFailedRows' >> beam.ParDo(
        _SplitFailedRows()).with_outputs(dl.DEAD_LETTER_TAG, main='scored')
    failed = dlq.failed_inferences | 'FailedBatches' >> beam.ParDo(
        _FailedBatchToDeadLetters())
    dead = ((split[dl.DEAD_LETTER_TAG], failed)
            | 'FlattenInferenceDeadLetters' >> beam.Flatten()
            # Scored after windowing (streaming), failed rows are in event
            # windows; every other stage's dead letters are in the global
            # window, where the jobs flatten and write them all.
            | 'DeadLettersToGlobalWindow' >> beam.WindowInto(
                window.GlobalWindows()))
    return ScoreOutputs(split.scored, dead)
