"""What a worker process serves under a deployment record, kept current.

``ServingSet`` is one immutable snapshot: the loaded primary, optional canary
(and its traffic fraction) and optional shadow. The handler
(models/handler.py) takes a snapshot at the start of every batch, so a batch
is scored by one consistent set and a change takes effect between batches.

``DeployedModels`` keeps the snapshot of one deployment current:

* following the control topic (``--control_topic``): a
  models/control_topic.Follower thread reads the deployment's records;
  for a record that changes what serves, the versions it adds are loaded
  and smoke-tested **in that thread** (scoring goes on meanwhile), then the
  new snapshot replaces the old one in one assignment. A record naming a
  version that does not load is refused whole (logged, counted in
  ``inference/model_versions_refused``): the current set keeps serving.
* or with a fixed record (Beam's side-input path, where RunInference gives
  each record to a new model object; kept for the measurement in
  bench/deployment_mechanism.py).

Counters must be incremented in a bundle's thread (Beam drops updates from
other threads), so the follower leaves its counts here and the scoring
thread adds them (``acquire``). Versions a new snapshot no longer uses are
closed by the scoring thread too, after the batch that may still use them.
"""

import dataclasses
import logging
import threading
import time
from typing import Callable, Mapping, NamedTuple, Optional

from models import deployments as dep

_LOGGER = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
  """A model directory or version cannot be loaded or does not fit
  (re-exported by models/handler.py, where models are loaded)."""


class ControlSource(NamedTuple):
  """Where a job reads its deployment: the control topic and the
  deployment name, with the client settings of the job (references such as
  ``@secret:`` resolved by the worker that reads)."""
  client_config: tuple  # sorted (key, value) pairs: hashable, picklable
  topic: str
  deployment: str = dep.DEFAULT_DEPLOYMENT
  # False: read the latest record once and follow nothing (changes come
  # another way: RunInference's side input, in the measurement).
  follow: bool = True

  @classmethod
  def of(cls, client_config: Mapping[str, object], topic: str,
         deployment: str = dep.DEFAULT_DEPLOYMENT) -> 'ControlSource':
    return cls(tuple(sorted(client_config.items())), topic, deployment)

  def config(self) -> dict:
    return dict(self.client_config)


@dataclasses.dataclass(frozen=True)
class ServingSet:
  """The loaded models that score one batch.

  Attributes:
    primary: the Signature scoring every row not routed to the canary.
    canary: the canary's Signature, or None.
    canary_fraction: the canary's share of keys (0 without a canary).
    shadow: the shadow's Signature, or None.
    record: the deployment record served, or None (``--model_dir`` watch).
  """
  primary: object
  canary: Optional[object] = None
  canary_fraction: float = 0.0
  shadow: Optional[object] = None
  record: Optional[dep.Deployment] = None

  def loaded(self) -> dict:
    """version -> Signature of every model in the set."""
    return {s.version: s for s in (self.primary, self.canary, self.shadow)
            if s is not None}


class DeployedModels:
  """The serving set of one deployment, kept current (module docstring)."""

  def __init__(self, source: ControlSource,
               load: Callable[[int], object], *,
               record: Optional[dep.Deployment] = None,
               ready_timeout_s: float = 60.0,
               swaps=None, refusals=None):
    """Loads what serves now; raises ModelLoadError-like errors of ``load``.

    Args:
      source: the control topic and deployment.
      load: version -> a loaded, smoke-tested Signature; raises
        models.handler.ModelLoadError when the version cannot serve.
      record: serve this record and follow nothing (side-input path);
        None: follow the control topic.
      ready_timeout_s: how long the first read of the control topic may
        take.
      swaps, refusals: Beam counters for applied and refused records.
    """
    self.source = source
    self._load = load
    self._lock = threading.Lock()
    self._current: Optional[ServingSet] = None
    self._retired: list = []
    self._pending_swaps = 0
    self._pending_refusals = 0
    self._swaps = swaps
    self._refusals = refusals
    self.applied: list = []  # (record, received, applied) for logs/tests
    self._follower = None
    from models import control_topic  # pylint: disable=import-outside-toplevel
    if record is None and not source.follow:
      record = control_topic.ControlTopic(source.config(), source.topic,
                                          timeout_s=ready_timeout_s).latest(
                                              source.deployment)
      if record is None:
        raise ModelLoadError(f'no deployment record for '
                             f'{source.deployment!r} on control topic '
                             f'{source.topic}')
    if record is not None:
      if not self._apply(record, time.time(), initial=True) and (
          self._current is None):
        raise ModelLoadError(f'deployment {source.deployment!r}: '
                             f'{record.describe()} does not load')
      return
    self._follower = control_topic.Follower(
        source.config(), source.topic, source.deployment, self.apply)
    self._follower.start()
    try:
      self._follower.wait_ready(ready_timeout_s)
    except RuntimeError as e:
      self._follower.stop()
      raise ModelLoadError(str(e)) from e
    if self._current is None:
      self._follower.stop()
      if self._follower.latest is None:
        raise ModelLoadError(
            f'no deployment record for {source.deployment!r} on control '
            f'topic {source.topic}: publish one first, e.g. python -m '
            f'models.deploy pin VERSION --control_topic {source.topic} '
            f'--deployment {source.deployment} ...')
      raise ModelLoadError(
          f'deployment {source.deployment!r}: neither its record '
          f'({self._follower.latest.describe()}) nor the one before it '
          f'loads (see the errors logged above)')

  def apply(self, record: dep.Deployment,
            received: Optional[float] = None) -> bool:
    """Serves ``record`` from the next batch on, if its versions load
    (the follower's callback); returns whether it serves."""
    return self._apply(record, time.time() if received is None else received,
                       initial=self._current is None)

  def _apply(self, record: dep.Deployment, received: float, *,
             initial: bool) -> bool:
    candidates = [record]
    if initial and record.previous:
      # A job (re)starting after a record its peers refused serves what
      # they kept serving: the record before it.
      try:
        candidates.append(dep.from_dict(dict(record.previous,
                                             deployment=record.deployment)))
      except dep.DeploymentError:
        pass
    for i, candidate in enumerate(candidates):
      if self._try_apply(candidate, received):
        if i:
          _LOGGER.warning('deployment %s: serving the previous record (%s) '
                          'instead of the latest (%s), which does not load',
                          record.deployment, candidate.describe(),
                          record.describe())
        return i == 0
    return False

  def _try_apply(self, record: dep.Deployment, received: float) -> bool:
    current = self._current
    if current is not None and current.record is not None and (
        current.record.serving() == record.serving()):
      return True
    have = current.loaded() if current is not None else {}
    fresh: dict = {}
    try:
      for version in record.versions():
        if version not in have and version not in fresh:
          fresh[version] = self._load(version)
    except Exception as e:  # pylint: disable=broad-except
      for s in fresh.values():
        s.close()
      with self._lock:
        self._pending_refusals += 1
      _LOGGER.error('deployment %s: refusing record (%s; %s by %s): %s; '
                    'still serving %s', record.deployment, record.describe(),
                    record.action, record.actor or '?', e,
                    current.record.describe() if current and current.record
                    else 'nothing')
      return False
    models = {**have, **fresh}
    new = ServingSet(
        primary=models[record.primary],
        canary=models[record.canary] if record.canary is not None else None,
        canary_fraction=(record.canary_fraction if record.canary is not None
                         else 0.0),
        shadow=models[record.shadow] if record.shadow is not None else None,
        record=record)
    keep = set(new.loaded())
    with self._lock:
      self._current = new
      self._retired += [s for v, s in have.items() if v not in keep]
      if current is not None:
        self._pending_swaps += 1
    applied = time.time()
    self.applied.append((record, received, applied))
    _LOGGER.info('deployment %s: serving %s (%s by %s; loaded %s in %.2f s)',
                 record.deployment, record.describe(), record.action,
                 record.actor or '?', sorted(fresh) or 'nothing new',
                 applied - received)
    return True

  def serving(self) -> ServingSet:
    """The set to score the next batch with (call from the scoring
    thread: it also books the follower's counts and closes retired
    models)."""
    with self._lock:
      current = self._current
      retired, self._retired = self._retired, []
      swaps, self._pending_swaps = self._pending_swaps, 0
      refusals, self._pending_refusals = self._pending_refusals, 0
    if swaps and self._swaps is not None:
      self._swaps.inc(swaps)
    if refusals and self._refusals is not None:
      self._refusals.inc(refusals)
    for s in retired:
      s.close()
    return current

  @property
  def current(self):
    """The primary Signature (what VersionedModel.current is)."""
    return self._current.primary

  def close(self) -> None:
    """Stops following and closes every model (tests; process end)."""
    if self._follower is not None:
      self._follower.stop()
    with self._lock:
      models = list(self._current.loaded().values()) if self._current else []
      models += self._retired
      self._retired = []
    for s in models:
      s.close()


__all__ = ['ControlSource', 'DeployedModels', 'ModelLoadError', 'ServingSet']
