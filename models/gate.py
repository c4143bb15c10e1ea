"""The promotion gate: a candidate version against the serving one, offline.

``python -m models.deploy promote VERSION`` evaluates the candidate and the
deployment's current primary **on the same evaluation span** (the eval
split of a span written by ``beam_jobs.ingest_examples`` or
``models.examples_io.write_span``), each called exactly as the scoring job
calls it (models/handler.py: same signature, same input mode, same output),
and refuses a candidate that is worse by more than a margin.

The metric and margin (docs/operating_models.md):

* ``auc`` (default): ROC AUC, higher is better; refused when
  ``candidate < serving - margin``. Default margin 0.005: on the demo's eval
  span (~20k examples, AUC ~0.85) AUC's standard error (Hanley-McNeil) is
  ~0.003, so a candidate within the noise of the serving model is not held
  back while a real regression is.
* ``loss``: mean log loss, lower is better; refused when
  ``candidate > serving + margin``.
* ``accuracy`` at threshold 0.5, higher is better.

The metrics are models.train.binary_metrics (the numbers metrics.json
holds). A candidate whose metric is NaN (one class in the span) is refused.
With no serving version (the first deployment) there is nothing to compare:
the decision is ``no_baseline`` and the candidate is accepted.
"""

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

# metric -> True when higher is better.
METRICS = {'auc': True, 'loss': False, 'accuracy': True}
DEFAULT_METRIC = 'auc'
DEFAULT_MARGIN = 0.005
# Rows per model call while evaluating.
_CHUNK = 4096

ACCEPT = 'accept'
REFUSE = 'refuse'
FORCED = 'forced'
NO_BASELINE = 'no_baseline'


@dataclasses.dataclass(frozen=True)
class GateResult:
  """The gate's decision and its numbers (stored in the deployment record).

  Attributes:
    metric: auc, loss or accuracy.
    margin: the tolerance (module docstring).
    span: the evaluation spans (their eval split).
    examples: evaluation examples.
    candidate: {'version', 'auc', 'loss', 'accuracy'} of the candidate.
    serving: the same for the serving primary, or None.
    decision: accept, refuse, forced (refused, overridden with --force) or
      no_baseline.
    reason: the comparison in words.
  """
  metric: str
  margin: float
  span: list
  examples: int
  candidate: dict
  serving: Optional[dict]
  decision: str
  reason: str

  @property
  def passed(self) -> bool:
    return self.decision != REFUSE

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def decide(metric: str, margin: float, candidate: float,
           serving: Optional[float]) -> tuple[str, str]:
  """(accept|refuse|no_baseline, reason) for two values of ``metric``."""
  if metric not in METRICS:
    raise ValueError(f'metric must be one of {sorted(METRICS)}, got '
                     f'{metric!r}')
  if margin < 0:
    raise ValueError(f'margin must be >= 0, got {margin}')
  higher = METRICS[metric]
  if not math.isfinite(candidate):
    return REFUSE, f'candidate {metric} is {candidate} (one class only?)'
  if serving is None or not math.isfinite(serving):
    return NO_BASELINE, (f'no serving {metric} to compare with; candidate '
                         f'{metric} {candidate:.4f}')
  if higher:
    worse = candidate < serving - margin
    rule = f'candidate {candidate:.4f} vs serving {serving:.4f} - {margin}'
  else:
    worse = candidate > serving + margin
    rule = f'candidate {candidate:.4f} vs serving {serving:.4f} + {margin}'
  return (REFUSE if worse else ACCEPT), (
      f'{metric}: {rule}: ' + ('worse' if worse else 'not worse'))


def eval_span_arrays(data_root: str, spans: Sequence[int],
                     feature_names: Sequence[str]
                    ) -> tuple[np.ndarray, np.ndarray]:
  """The eval split of ``spans``: (features [N, F] in ``feature_names``
  order, labels [N])."""
  from models import examples_io  # pylint: disable=import-outside-toplevel
  return examples_io.read_arrays(data_root, 'eval', spans=list(spans),
                                 feature_names=list(feature_names))


def score(signature, layout, features: np.ndarray) -> np.ndarray:
  """A loaded handler Signature's scores of feature rows, in chunks."""
  from models.handler import feature_batch  # pylint: disable=import-outside-toplevel
  out = []
  for start in range(0, len(features), _CHUNK):
    out.append(signature([feature_batch(layout, features[start:start +
                                                         _CHUNK],
                                        source='gate')]))
  return np.concatenate(out) if out else np.zeros(0, np.float32)


def metrics_of(labels: np.ndarray, scores: np.ndarray) -> dict:
  from models.train import binary_metrics  # pylint: disable=import-outside-toplevel
  m = binary_metrics(labels, scores)
  return {k: m[k] for k in ('auc', 'loss', 'accuracy')}


def run_gate(load, layout, *, candidate: int, serving: Optional[int],
             data_root: str, spans: Sequence[int], metric: str = DEFAULT_METRIC,
             margin: float = DEFAULT_MARGIN, force: bool = False
             ) -> GateResult:
  """Evaluates ``candidate`` and ``serving`` on the eval split of
  ``spans`` and decides.

  Args:
    load: version -> loaded Signature (models.handler.VersionLoader);
      raises ModelLoadError for a version that cannot serve.
    layout: the ExampleLayout the job calls models with.
    candidate, serving: versions (serving None: no baseline).
    data_root, spans: where the evaluation examples are.
    metric, margin: the rule (module docstring).
    force: a refusal becomes ``forced`` (recorded, not refused).

  Raises:
    ValueError: the span has no eval examples, or a bad metric/margin.
  """
  decide(metric, margin, 0.0, 0.0)  # validates metric and margin
  features, labels = eval_span_arrays(data_root, spans, layout.features)
  if not len(labels):
    raise ValueError(f'the eval split of spans {list(spans)} under '
                     f'{data_root} is empty')
  results = {}
  for version in [candidate] + ([serving] if serving is not None else []):
    model = load(version)
    try:
      results[version] = dict(
          metrics_of(labels, score(model, layout, features)),
          version=version)
    finally:
      model.close()
  cand = results[candidate]
  serv = results.get(serving) if serving is not None else None
  decision, reason = decide(metric, margin, cand[metric],
                            serv[metric] if serv else None)
  if decision == REFUSE and force:
    decision, reason = FORCED, reason + '; promoted anyway (--force)'
  return GateResult(metric=metric, margin=margin, span=list(spans),
                    examples=int(len(labels)), candidate=cand, serving=serv,
                    decision=decision, reason=reason)


__all__ = ['ACCEPT', 'DEFAULT_MARGIN', 'DEFAULT_METRIC', 'FORCED', 'GateResult',
           'METRICS', 'NO_BASELINE', 'REFUSE', 'decide', 'run_gate']
