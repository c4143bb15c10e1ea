"""Effectively-once output: skip what was already written.

The scoring job is at-least-once: after a crash it re-reads from the last
committed offsets, so events whose predictions (or records whose dead
letters) were written but whose offsets were not yet committed are
processed again. With a horizon, two steps remove the repeats:

* ``DropScoredEvents`` (before scoring): events whose id already has a
  prediction;
* ``DropWrittenDeadLetters`` (before the dead-letter sinks): dead letters of
  a record already dead-lettered (transforms.dead_letters.identity: its
  source coordinates and bytes).

What they know, per worker process (``memory_for``):

* across restarts, the truth is the output topics themselves: at start-up
  the predictions and dead letters written in the last ``horizon_s``
  seconds are read back (transforms/dedup_seed.py); the seed covers the
  whole horizon or the step fails to start (SeedIncompleteError);
* within a run, what the steps let through, remembered once the bundle
  that carried it is done: at ``finish_bundle`` where each step runs as a
  bundle of its own (the local bundle-based runner), else when the runner
  finalizes the bundle, i.e. after the fused writes downstream succeeded
  (a bundle that failed and is retried must not find its own elements
  already "seen": they would be dropped unwritten).

Ids are held as 64-bit fingerprints in time buckets (transforms/seen_ids.py:
~11 bytes per id; a never-seen id is taken for a seen one with probability
at most ids_held / 2**64); ``max_ids`` caps them. Repeats older than the
horizon are not caught: choose a horizon longer than the longest restart
plus the commit interval. Skips are counted (``dedup/duplicates_skipped``,
``dedup/dead_letters_skipped``), not dead-lettered: they were written.
"""

import logging
import threading
import time
from typing import Mapping, NamedTuple, Optional

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics

from transforms import dedup_seed
from transforms import seen_ids as seen_lib
from transforms.dead_letters import DeadLetter
from transforms.events import EventBatch

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'dedup'

# ~11 bytes per id held, ~25 at the peak of a merge (docs/operations.md).
DEFAULT_MAX_IDS = 50_000_000


class DedupSettings(NamedTuple):
  """Effectively-once settings, resolved from the job's flags.

  Attributes:
    output_topic: the prediction topic (keys: event ids).
    dead_letter_topic: the dead-letter topic, or None.
    horizon_s: how long what was written is remembered.
    seed_timeout_s: the restart seed's timeout; None: derived from the
      records to read (transforms/dedup_seed.py).
    max_ids: ids held per structure and process at most; None: no cap.
    write_delay_s: how much later than it was stamped a dead letter may
      reach its topic (the sinks' outage retries).
    remember_on_finalize: remember what passed when the runner finalizes
      its bundle (runners that fuse steps), not at finish_bundle.
  """
  output_topic: str
  dead_letter_topic: Optional[str]
  horizon_s: float
  seed_timeout_s: Optional[float] = None
  max_ids: Optional[int] = DEFAULT_MAX_IDS
  write_delay_s: float = 0.0
  remember_on_finalize: bool = True


class Memory(NamedTuple):
  """What one worker process knows was written."""
  predictions: seen_lib.SeenIds   # event ids
  dead_letters: seen_lib.SeenIds  # dead-letter identities


_REGISTRY: dict = {}
_REGISTRY_LOCK = threading.Lock()


def _key(config: Mapping, settings: DedupSettings) -> tuple:
  return (config.get('bootstrap.servers'), settings.output_topic,
          settings.dead_letter_topic, settings.horizon_s)


def seed(config: Mapping, settings: DedupSettings) -> Memory:
  """Reads back the horizon from the topics into a new Memory, which
  the steps of this process then use (a job's start calls it: every run
  starts from what is on the topics).

  Raises:
    SeedIncompleteError: the horizon could not be read in time.
  """
  with _REGISTRY_LOCK:
    memory = _seed(config, settings)
    _REGISTRY[_key(config, settings)] = memory
    return memory


def memory_for(config: Mapping, settings: DedupSettings) -> Memory:
  """This process's Memory of the topics, seeded on first use."""
  with _REGISTRY_LOCK:
    key = _key(config, settings)
    memory = _REGISTRY.get(key)
    if memory is None:
      memory = _REGISTRY[key] = _seed(config, settings)
    return memory


def _seed(config: Mapping, settings: DedupSettings) -> Memory:
  now = time.time()
  memory = Memory(
      seen_lib.SeenIds(settings.horizon_s, max_ids=settings.max_ids),
      seen_lib.SeenIds(settings.horizon_s, max_ids=settings.max_ids))
  stats = dedup_seed.read_back(
      config, output_topic=settings.output_topic,
      dead_letter_topic=settings.dead_letter_topic,
      since_s=now - settings.horizon_s,
      predictions=lambda fps, t: memory.predictions.add(fps, t, now),
      dead_letters=lambda fps, t: memory.dead_letters.add(fps, t, now),
      timeout_s=settings.seed_timeout_s,
      write_delay_s=settings.write_delay_s)
  _LOGGER.info(
      'dedup seed: %d event ids with a prediction on %s and %d dead letters '
      'on %s within %.0f s (%d + %d records read in %.1f s, timeout %.0f s; '
      '%.1f MB held)', len(memory.predictions), settings.output_topic,
      len(memory.dead_letters), settings.dead_letter_topic,
      settings.horizon_s, stats.predictions, stats.dead_letters,
      stats.seconds, stats.timeout_s,
      (memory.predictions.nbytes() + memory.dead_letters.nbytes()) / 1e6)
  return memory


class _DropSeenFn(beam.DoFn):
  """Drops elements whose fingerprint is held; remembers the others once
  their bundle is done (module docstring: why not at once)."""

  def __init__(self, config: Mapping, settings: DedupSettings, which: str,
               counter: str):
    self._config = dict(config)
    self._settings = settings
    self._which = which
    self._seen: Optional[seen_lib.SeenIds] = None
    self._bundle: set = set()
    self._registered = False
    self.skipped = Metrics.counter(_NAMESPACE, counter)
    self.evicted = Metrics.counter(_NAMESPACE, 'ids_evicted_early')

  def setup(self):
    memory = memory_for(self._config, self._settings)
    self._seen = getattr(memory, self._which)

  def start_bundle(self):
    self._bundle = set()
    self._registered = False

  def _keep(self, fps: np.ndarray, finalizer) -> np.ndarray:
    """Mask of the fingerprints to let through (neither held, nor earlier
    in this bundle or in ``fps``); they join this bundle's."""
    mask = self._seen.unseen(fps) & seen_lib.first_occurrences(fps)
    bundle = self._bundle
    if bundle:
      mask &= np.fromiter((f not in bundle for f in fps.tolist()),
                          dtype=bool, count=len(fps))
    if mask.any():
      bundle.update(fps[mask].tolist())
      if self._settings.remember_on_finalize and not self._registered:
        self._registered = True
        seen = self._seen
        finalizer.register(lambda: _remember(seen, bundle))
    skipped = len(fps) - int(mask.sum())
    if skipped:
      self.skipped.inc(skipped)
    return mask

  def finish_bundle(self):
    if not self._settings.remember_on_finalize:
      _remember(self._seen, self._bundle)
    evicted = self._seen.take_evicted()
    if evicted:
      self.evicted.inc(evicted)


def _remember(seen: seen_lib.SeenIds, fps: set) -> None:
  if fps:
    seen.remember(np.fromiter(fps, dtype=np.int64, count=len(fps)),
                  time.time())


class _DropScoredEventsFn(_DropSeenFn):

  def __init__(self, config: Mapping, settings: DedupSettings):
    super().__init__(config, settings, 'predictions', 'duplicates_skipped')

  def process(self, batch: EventBatch,
              finalizer=beam.DoFn.BundleFinalizerParam):
    mask = self._keep(seen_lib.fingerprints(batch.ids), finalizer)
    if mask.all():
      yield batch
    elif mask.any():
      kept = batch.take(mask)
      yield beam.window.TimestampedValue(kept, kept.min_time())


class _DropWrittenDeadLettersFn(_DropSeenFn):

  def __init__(self, config: Mapping, settings: DedupSettings):
    super().__init__(config, settings, 'dead_letters', 'dead_letters_skipped')

  def process(self, letter: DeadLetter,
              finalizer=beam.DoFn.BundleFinalizerParam):
    fps = np.array([hash(letter.identity())], dtype=np.int64)
    if self._keep(fps, finalizer)[0]:
      yield letter


class DropScoredEvents(beam.PTransform[beam.PCollection[EventBatch],
                                       beam.PCollection[EventBatch]]):
  """EventBatch -> EventBatch without events already scored (module doc).

  Args:
    consumer_config: librdkafka settings to read the topics back.
    settings: the horizon, topics and limits.
  """

  def __init__(self, consumer_config: Mapping, settings: DedupSettings):
    super().__init__()
    _check(settings)
    self._fn = _DropScoredEventsFn(consumer_config, settings)

  def expand(self, pcoll):
    return pcoll | 'DropScoredEvents' >> beam.ParDo(
        self._fn).with_output_types(EventBatch)


class DropWrittenDeadLetters(beam.PTransform[beam.PCollection[DeadLetter],
                                             beam.PCollection[DeadLetter]]):
  """DeadLetter -> DeadLetter without those already written (module doc).

  Args:
    consumer_config: librdkafka settings to read the topics back.
    settings: the horizon, topics and limits (with a dead_letter_topic).
  """

  def __init__(self, consumer_config: Mapping, settings: DedupSettings):
    super().__init__()
    _check(settings)
    if not settings.dead_letter_topic:
      raise ValueError('DropWrittenDeadLetters needs a dead_letter_topic')
    self._fn = _DropWrittenDeadLettersFn(consumer_config, settings)

  def expand(self, pcoll):
    return pcoll | 'DropIfWritten' >> beam.ParDo(
        self._fn).with_output_types(DeadLetter)


def _check(settings: DedupSettings) -> None:
  if settings.horizon_s <= 0:
    raise ValueError(f'dedup horizon must be > 0 s, got {settings.horizon_s}')


__all__ = ['DEFAULT_MAX_IDS', 'DedupSettings', 'DropScoredEvents',
           'DropWrittenDeadLetters', 'Memory', 'memory_for', 'seed']
