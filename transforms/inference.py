"""Scoring EventBatches with RunInference, failures to dead letters.

``ScoreEvents`` wraps Beam's ``RunInference`` around a model handler that
takes EventBatches and gives ScoredBatches (models/handler.py: batched by
rows, model shared per process, hot swap) with exception handling: a batch the runner could not score at all, and single
rows the handler isolated as failing, become DeadLetters (stage inference,
reason inference_error) with their original bytes, in the global window;
every other row is scored.
"""

from typing import NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.transforms import window

from transforms import dead_letters as dl
from transforms.events import (CANARY_ROLE, PRIMARY_ROLE, SHADOW_ROLE,
                               EventBatch, ScoredBatch)

_NAMESPACE = 'inference'


def _row_dead_letter(batch: EventBatch, i: int, detail: str) -> dl.DeadLetter:
  return dl.of_row(batch, i, stage=dl.INFERENCE, reason=dl.INFERENCE_ERROR,
                   detail=detail[:1000])


class _SplitFailedRows(beam.DoFn):
  """ScoredBatch -> the rows that scored (main) + dead letters for the rest.

  Counts scored events in total, per model version
  (``events_scored_v<version>``: which versions served, for the summaries)
  and, beside a canary or shadow, per role (``events_scored_canary``,
  ``events_scored_shadow``).
  """

  def __init__(self):
    self.scored = Metrics.counter(_NAMESPACE, 'events_scored')
    self.failed = Metrics.counter(_NAMESPACE, 'events_failed')
    self._by_name: dict = {}

  def _inc(self, name: str, n: int) -> None:
    counter = self._by_name.get(name)
    if counter is None:
      counter = self._by_name[name] = Metrics.counter(_NAMESPACE, name)
    counter.inc(n)

  def _count_scored(self, scored: ScoredBatch) -> None:
    n = len(scored.batch)
    self.scored.inc(n)
    if scored.versions is None:
      self._inc(f'events_scored_v{scored.model_version}', n)
      if scored.role != PRIMARY_ROLE:
        self._inc(f'events_scored_{scored.role}', n)
    else:
      versions, counts = np.unique(scored.versions, return_counts=True)
      for version, count in zip(versions.tolist(), counts.tolist()):
        self._inc(f'events_scored_v{version}', count)
      canary = int(np.count_nonzero(scored.roles == CANARY_ROLE))
      if canary:
        self._inc(f'events_scored_{CANARY_ROLE}', canary)
    if scored.shadow_scores is not None:
      self._inc(f'events_scored_{SHADOW_ROLE}', n)

  def process(self, scored: ScoredBatch):
    if not scored.errors:
      self._count_scored(scored)
      yield scored
      return
    ok = np.asarray([e is None for e in scored.errors])
    for i in np.flatnonzero(~ok):
      self.failed.inc()
      yield pvalue.TaggedOutput(dl.DEAD_LETTER_TAG, _row_dead_letter(
          scored.batch, int(i), scored.errors[i]))
    if ok.any():
      kept = scored.take(ok)
      self._count_scored(kept)
      yield kept


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
  """EventBatch -> ScoredBatch, with dead letters for what failed.

  ``model_metadata``: a PCollection of Beam ``ModelMetadata`` given to
  RunInference as its model side input (``model_metadata_pcoll``); the jobs
  do not use it (docs/operating_models.md: how a running job follows
  deployments, and the measurement that chose that way).
  """

  def __init__(self, handler: ModelHandler, *,
               model_metadata: Optional[beam.PCollection] = None):
    super().__init__()
    self._handler = handler
    self._model_metadata = model_metadata

  def expand(self, pcoll):
    results, dlq = (pcoll
                    | 'RunInference' >> RunInference(
                        self._handler,
                        model_metadata_pcoll=self._model_metadata
                    ).with_exception_handling())
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
