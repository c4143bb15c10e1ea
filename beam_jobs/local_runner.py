"""LocalStreamingRunner: streaming jobs on Beam's bundle-based DirectRunner.

Why this exists: in Beam 2.77 Python, an unbounded splittable DoFn does not
stream locally without Prism (docs/local_streaming.md): the FnApiRunner runs
stage by stage, so windows downstream of an unbounded read never fire, and
the bundle-based runner cannot expand or run a self-checkpointing SDF in
streaming mode. Beam's own local Pub/Sub read solves the same problem with a
PTransform override plus a transform evaluator (``_DirectReadFromPubSub`` /
``_PubSubReadEvaluator``). This runner does the same for ReadFromKafka: the
read itself is transforms/kafka/local_read.py; this module is the runner
side, and the only module of the project that touches Beam's internals.

What of Beam it touches, and how each is fenced:

* the read's evaluator is listed in the evaluator table of this run only
  (``TransformEvaluatorRegistry._test_evaluators_overrides``, copied by the
  registry the run builds; removed as soon as it is built);
* ParDo steps are evaluated by ``_ReusingParDoEvaluator`` (Beam's
  evaluator, listed the same way): each step's DoFn copies are set up once
  and reused across bundles, torn down when the run ends, as production
  runners do; and outputs that received no element are not committed, so
  no step is scheduled with an empty bundle;
* the bundle that schedules the next read carries one marker element, so
  that the runner drops it from the read's pending set once evaluated
  (it keeps empty ones, and every read would cost more than the last);
* the run's executor workers are ``_PerTaskSamplerWorker`` (a copy of the
  executor's worker loop with a fresh state sampler per task: Beam 2.77's
  workers keep one, which loses user metrics after a step's first bundle),
  swapped in while the run's executor is built;
* Beam's own overrides are applied with the streaming GroupByKey ones last
  (a 2.77 ordering bug), to this pipeline only;
* Beam's DoFn introspection (``core.get_function_args_defaults``,
  ``userstate.get_dofn_specs``) is memoized while local pipelines run: the
  runner introspects a stateful DoFn again for every bundle. Installed when a
  run starts, restored when the last running local pipeline of the process
  finishes (reference-counted); every other pipeline built after sees
  Beam's own functions;
* the read's evaluator looks at the watermark manager's ``_pending``,
  ``_fired_timers`` and ``_keyed_earliest_holds`` to decide which offsets
  may be committed (``_downstream_state``). Their meaning, not only their
  names, is covered by tests/local_runner_it_test.py.

All of it is verified on the Beam versions in ``VERIFIED_BEAM_VERSIONS``: on
any other, the runner refuses to run (``UnverifiedBeamVersion``, naming the
versions and the alternatives) rather than guess. setup.py pins apache-beam
to the same range. Verifying a new version: docs/local_streaming.md.

When offsets are committed: the bundle-based runner schedules root work only
when no other work can run, so when the read is evaluated, everything it
emitted before has been processed by every step downstream, sinks included,
except what a step buffers (a GroupByKey waiting for its window to close
holds the watermark at the window's end). The evaluator passes the earliest
such hold to the read, which commits the offsets of elements whose windows
all end before it (LocalKafkaReader.commit). A final commit follows a
successful drain. At-least-once, never commit-before-output. Caveat: a
stateful DoFn that keeps elements in user state across bundles without a
watermark hold is invisible to this check; the project's jobs do not buffer
elements that way.
"""

import contextlib
import inspect
import logging
import sys
import threading
import time
import types
import weakref
from typing import Any, Callable, Optional

import apache_beam as beam
from apache_beam import pvalue
from apache_beam import version as beam_version
from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.options.value_provider import RuntimeValueProvider
from apache_beam.pipeline import PTransformOverride
from apache_beam.runners import common as beam_common
from apache_beam.runners.direct import direct_runner
from apache_beam.runners.direct import executor as direct_executor
from apache_beam.runners.direct import transform_evaluator as direct_evaluators
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.direct.transform_evaluator import (
    TransformEvaluatorRegistry, _TransformEvaluator)
from apache_beam.runners.direct.util import TransformResult
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.runners.worker import statesampler
from apache_beam.transforms import core as beam_core
from apache_beam.transforms import userstate
from apache_beam.transforms.window import GlobalWindow, GlobalWindows
from apache_beam.utils import counters
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP

from transforms.kafka.local_read import LocalKafkaReader, LocalReadTuning
from transforms.kafka.read import ReadFromKafka
from transforms.kafka.reader_core import ReadSettings

_LOGGER = logging.getLogger(__name__)

# Beam releases (major.minor) whose internals this module was verified on:
# the contract tests (tests/local_streaming_it_test.py,
# tests/local_runner_it_test.py, tests/score_stream_sinks_it_test.py,
# tests/reliability_it_test.py, tests/hot_swap_it_test.py) passed on them.
VERIFIED_BEAM_VERSIONS = ('2.77',)


class UnverifiedBeamVersion(RuntimeError):
  """The installed Beam is not one the local runner was verified on."""


def check_beam_version(version: Optional[str] = None) -> None:
  """Refuses a Beam release the runner's internals were not verified on.

  Args:
    version: the version to check; default: the installed apache-beam.

  Raises:
    UnverifiedBeamVersion: naming the installed and the verified versions,
      and what to run instead.
  """
  version = version or beam_version.__version__
  if '.'.join(version.split('.')[:2]) in VERIFIED_BEAM_VERSIONS:
    return
  verified = ', '.join(f'{v}.x' for v in VERIFIED_BEAM_VERSIONS)
  raise UnverifiedBeamVersion(
      f'LocalStreamingRunner relies on internals of Beam\'s bundle-based '
      f'DirectRunner that were verified on apache-beam {verified} only; '
      f'this is apache-beam {version}. Run with --runner PrismRunner '
      f'(offline: --prism_location PATH to a prism binary), or install '
      f'apache-beam {verified} (constraints.txt). To verify this version, '
      f'see "Verifying a new Beam version" in docs/local_streaming.md.')


# The introspection cache.


def _memoized_introspection(args_defaults: Callable, dofn_specs: Callable
                            ) -> tuple[Callable, Callable]:
  """Memoizing stand-ins for Beam's ``get_function_args_defaults`` and
  ``get_dofn_specs`` (wrapping ``args_defaults`` and ``dofn_specs``).

  The bundle-based runner unpickles each step's DoFn for every bundle and
  then introspects it again: ``is_stateful_dofn`` / ``get_dofn_specs`` walk
  every method and build an ``inspect.signature`` for each, and so does the
  DoFnRunner (docs/local_streaming.md has the cost). The result depends only
  on the function, so it is cached per function object: methods of DoFn
  classes (unpickled by reference) hit the cache; functions recreated by
  each unpickle (lambdas) miss it and drop out with their DoFn (weak keys).
  ``get_dofn_specs`` also walks dir(dofn): its result is fixed by the DoFn's
  class and the methods the instance carries, cached per class and those
  methods' functions when each is a function of a class (Beam's
  exception-handling wrapper, which RunInference's dead letters use, binds
  its own ``process`` on every instance; the Kafka write binds methods of
  its record fitter); an instance method of a closure is not cached.
  """
  args_cache: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
  specs_cache: 'weakref.WeakKeyDictionary' = weakref.WeakKeyDictionary()
  lock = threading.Lock()

  def get_function_args_defaults(f):
    func = getattr(f, '__func__', None)
    bound = func is not None and getattr(f, '__self__', None) is not None
    key = func if bound else f
    if not isinstance(key, types.FunctionType):
      return args_defaults(f)  # partials, callable objects: may carry state
    with lock:
      hit = args_cache.get(key)
    if hit is None or hit[0] != bound:
      args, defaults = args_defaults(f)
      hit = (bound, tuple(args), tuple(defaults))
      with lock:
        args_cache[key] = hit
    # Fresh lists: callers may modify what they get.
    return list(hit[1]), list(hit[2])

  def get_dofn_specs(dofn):
    own = _own_class_methods(dofn)
    if own is None:
      return dofn_specs(dofn)
    cls = type(dofn)
    with lock:
      hit = specs_cache.setdefault(cls, {}).get(own)
    if hit is None:
      hit = dofn_specs(dofn)
      with lock:
        specs_cache[cls][own] = hit
    return set(hit[0]), set(hit[1])

  return get_function_args_defaults, get_dofn_specs


def _own_class_methods(dofn) -> Optional[tuple]:
  """The methods ``dofn`` carries on the instance, as (attribute, function)
  pairs sorted by attribute, when each is a function of the class of the
  object it is bound to (so that the DoFn's class and these fix its specs);
  None otherwise (a closure or a callable made per instance)."""
  own = []
  for name, value in getattr(dofn, '__dict__', {}).items():
    if not isinstance(value, types.MethodType):
      continue
    func = value.__func__
    if inspect.getattr_static(type(value.__self__), func.__name__,
                              None) is not func:
      return None
    own.append((name, func))
  return tuple(sorted(own, key=lambda pair: pair[0]))


class _Once:
  """Calls a function on the first call only (thread-safe)."""

  def __init__(self, fn: Callable[[], None]):
    self._fn = fn
    # Reentrant: a finalizer (garbage collection) may call it on a thread
    # that is inside it already.
    self._lock = threading.RLock()
    self._done = False

  def __call__(self) -> None:
    with self._lock:
      if self._done:
        return
      self._done = True
    self._fn()


class _RunPatches:
  """The introspection cache, installed while local
  pipelines run.

  Reference-counted: installed by the first run of the process that starts,
  restored by the last one that finishes, so that two local pipelines
  running at once both keep it, and nothing built after them sees it. A
  function replaced by someone else meanwhile is left alone (and logged).
  """

  def __init__(self):
    # Reentrant: a result's finalizer may release on a thread that is
    # acquiring (garbage collection runs at any allocation).
    self._lock = threading.RLock()
    self._runs = 0
    # (module, attribute, Beam's function, ours) while installed.
    self._installed: list[tuple[types.ModuleType, str, Callable,
                                Callable]] = []

  @property
  def active_runs(self) -> int:
    return self._runs

  def acquire(self) -> Callable[[], None]:
    """Installs the patches for one run; returns its (idempotent) release."""
    with self._lock:
      if self._runs == 0:
        self._install()
      self._runs += 1
    return _Once(self._release)

  def _release(self) -> None:
    with self._lock:
      self._runs -= 1
      if self._runs == 0:
        self._restore()

  def _install(self) -> None:
    args_defaults, dofn_specs = _memoized_introspection(
        beam_core.get_function_args_defaults, userstate.get_dofn_specs)
    self._installed = [
        (beam_core, 'get_function_args_defaults',
         beam_core.get_function_args_defaults, args_defaults),
        (userstate, 'get_dofn_specs', userstate.get_dofn_specs, dofn_specs),
        # Imported by name there.
        (direct_evaluators, 'get_dofn_specs', direct_evaluators.get_dofn_specs,
         dofn_specs),
    ]
    for module, name, _, ours in self._installed:
      setattr(module, name, ours)

  def _restore(self) -> None:
    for module, name, original, ours in reversed(self._installed):
      if getattr(module, name) is ours:
        setattr(module, name, original)
      else:
        _LOGGER.warning('%s.%s was replaced while a local pipeline ran; '
                        'left as it is', module.__name__, name)
    self._installed = []


_RUN_PATCHES = _RunPatches()


# The read: override, replacement transform and evaluator.


class _DirectReadFromKafka(beam.PTransform):
  """Native stand-in for ReadFromKafka on the local streaming runner."""

  def __init__(self, settings: ReadSettings, tuning: LocalReadTuning):
    super().__init__()
    self.settings = settings
    self.reader = LocalKafkaReader(settings, tuning)
    weakref.finalize(self, self.reader.close)

  def get_windowing(self, unused_inputs):
    return beam.Windowing(GlobalWindows())

  def expand(self, pbegin):
    # Evaluated natively by _KafkaReadEvaluator.
    return pvalue.PCollection(self.pipeline,
                              is_bounded=self.settings.is_bounded)


# A hold at or above this (micros) belongs to an element in the GlobalWindow
# (hold = the window's max timestamp - 1 us): its records cannot be located
# in event time, so nothing is committed while one exists.
_GLOBAL_WINDOW_HOLD_US = GlobalWindow().max_timestamp().micros - 10


def _downstream_state(evaluation_context,
                      own_transform) -> tuple[bool, Optional[int]]:
  """What the steps after the read hold: (whether any has input pending or
  timers firing, the earliest watermark hold in micros or None if none).

  A GroupByKey holds its output watermark at each buffered element's output
  time (here the end of its window, minus a microsecond or two), so the
  earliest hold tells which windows may still have unwritten elements.
  Reads the bundle-based runner's watermark manager: ``_pending`` (bundles
  scheduled for a step and not yet processed), ``_fired_timers`` (timers
  fired and not yet processed), ``_keyed_earliest_holds`` (per key, the
  earliest output time of what the step buffers). Verified on
  VERIFIED_BEAM_VERSIONS by tests/local_runner_it_test.py.
  """
  manager = evaluation_context._watermark_manager  # pylint: disable=protected-access
  earliest = None
  for transform, tw in manager._transform_to_watermarks.items():  # pylint: disable=protected-access
    if transform is own_transform:
      continue
    if tw._pending or tw._fired_timers:  # pylint: disable=protected-access
      return True, None
    for hold in tw._keyed_earliest_holds.values():  # pylint: disable=protected-access
      micros = hold.micros
      if earliest is None or micros < earliest:
        earliest = micros
  if earliest is not None and earliest >= _GLOBAL_WINDOW_HOLD_US:
    earliest = MIN_TIMESTAMP.micros
  return False, earliest


# The marker element of the read's own scheduling bundle (at the end of time,
# so that it holds back no watermark).
_NEXT_READ = GlobalWindows.windowed_value(None, timestamp=MAX_TIMESTAMP)


class _KafkaReadEvaluator(_TransformEvaluator):
  """Transform evaluator for _DirectReadFromKafka (cf. _PubSubReadEvaluator)."""

  def __init__(self, evaluation_context, applied_ptransform,
               input_committed_bundle, side_inputs):
    assert not side_inputs
    super().__init__(evaluation_context, applied_ptransform,
                     input_committed_bundle, side_inputs)
    self._reader: LocalKafkaReader = applied_ptransform.transform.reader

  def process_element(self, element):
    pass  # the input is the empty root bundle; all work is in finish_bundle

  def finish_bundle(self) -> TransformResult:
    reader = self._reader
    pending, earliest_hold = _downstream_state(self._evaluation_context,
                                               self._applied_ptransform)
    if not pending:
      # Everything emitted before has been processed by every step; what a
      # windowed sink still holds is above the earliest hold.
      reader.maybe_commit(None if earliest_hold is None else
                          earliest_hold + 1)
    elements = reader.read(wait=not pending)
    bundles = []
    if elements:
      bundle = self._evaluation_context.create_bundle(
          list(self._outputs)[0])
      for wv in elements:
        bundle.output(wv)
      bundles.append(bundle)
    if reader.finished:
      # No more input: the watermark goes to the end of time so every window
      # fires; the final commit happens when the pipeline has drained
      # (LocalStreamingResult.wait_until_finish).
      return TransformResult(self, bundles, [], None, {None: MAX_TIMESTAMP})
    unprocessed = self._evaluation_context.create_bundle(
        pvalue.PBegin(self._applied_ptransform.transform.pipeline))
    # One marker element in the bundle that schedules the next read: the
    # runner drops an evaluated bundle from the read's pending set only if
    # it has elements, and scans every pending bundle at each watermark
    # update, so empty ones would pile up, one per read, and every read
    # would cost more than the one before (docs/latency.md).
    unprocessed.add(_NEXT_READ)
    return TransformResult(self, bundles, [unprocessed], None,
                           {None: reader.watermark()})


_PER_ELEMENT_COUNTER = 'outputs_per_element_counter'


class _Forward(beam_common.Receiver):
  """An output of a reused DoFnRunner: adds what it receives to the output
  bundle of the bundle being processed."""

  __slots__ = ('bundle',)

  def __init__(self):
    self.bundle = None

  def receive(self, windowed_value) -> None:
    self.bundle.add(windowed_value)


class _Copy:
  """A step's DoFn copy, set up, and (for a DoFn without state or side
  inputs) its DoFnRunner with the outputs it writes through.

  The runner is built once, as Beam's portable workers build theirs: its
  construction (a DoFnSignature and an invoker, from the DoFn's methods)
  cost more per bundle than most steps' work. A stateful DoFn gets a
  runner per bundle (its state context is the bundle's); a DoFn with side
  inputs too (their values can change between bundles).
  """

  __slots__ = ('dofn', 'runner', 'outputs')

  def __init__(self, dofn):
    self.dofn = dofn
    self.runner = None
    self.outputs: dict = {}


class _DoFnCopies:
  """Each ParDo step's set-up DoFn copies that no bundle is using, for one
  run.

  Beam's bundle-based runner makes a fresh copy of a step's DoFn for every
  bundle and calls setup and teardown around each bundle; the Beam model
  (and every production runner) sets a DoFn up once and reuses it for many
  bundles. Reusing copies here takes that cost, paid per step and bundle,
  off the path of every record (docs/latency.md). A copy whose bundle
  failed is not reused (the runner then fails the pipeline anyway).
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._idle: dict[object, list[_Copy]] = {}
    self._closed = False

  def take(self, applied_ptransform) -> Optional[_Copy]:
    """An idle copy of the step's DoFn (already set up), or None."""
    with self._lock:
      idle = self._idle.get(applied_ptransform)
      return idle.pop() if idle else None

  def give_back(self, applied_ptransform, copy: _Copy) -> None:
    with self._lock:
      if not self._closed:
        self._idle.setdefault(applied_ptransform, []).append(copy)
        return
    _teardown(copy.dofn, applied_ptransform.full_label)

  def teardown_all(self) -> None:
    """Tears down every idle copy (when the run has ended)."""
    with self._lock:
      self._closed = True
      idle, self._idle = self._idle, {}
    for applied_ptransform, copies in idle.items():
      for copy in copies:
        _teardown(copy.dofn, applied_ptransform.full_label)


def _teardown(dofn, label: str) -> None:
  try:
    dofn.teardown()
  except Exception:  # pylint: disable=broad-except
    _LOGGER.warning('teardown of a DoFn of %s failed', label, exc_info=True)


class _ReusingParDoEvaluator(direct_evaluators._ParDoEvaluator):  # pylint: disable=protected-access
  """Beam's ParDo evaluator, with the step's DoFn copies (and runners)
  reused across bundles (_DoFnCopies, _Copy): set up once, torn down when
  the run ends.

  ``copies`` is set per run on a subclass (_run_construction). The steps
  are Beam's ``_ParDoEvaluator.start_bundle`` with the copy taken from the
  idle ones when there is one.
  """

  copies: _DoFnCopies

  def start_bundle(self):
    applied = self._applied_ptransform
    self._outputs_of_bundle = {}
    for tag in applied.outputs:
      output = pvalue.PCollection(None, tag=tag)
      output.producer = applied
      bundle = self._evaluation_context.create_bundle(output)
      bundle.tag = tag
      self._outputs_of_bundle[tag] = bundle
    self._counter_factory = counters.CounterFactory()

    copy = self.copies.take(applied)
    fresh = copy is None
    if fresh:
      copy = _Copy(direct_evaluators.pickler.roundtrip(applied.transform.dofn))
    self._copy = copy

    self.user_state_context = None
    self.user_timer_map = {}
    stateful = direct_evaluators.is_stateful_dofn(copy.dofn)
    if stateful:
      kv_hint = applied.inputs[0].element_type
      coder = (beam.coders.registry.get_coder(kv_hint)
               if kv_hint and kv_hint != Any else None)
      self.key_coder = (coder.key_coder() if coder is not None else
                        beam.coders.registry.get_coder(Any))
      self.user_state_context = direct_evaluators.DirectUserStateContext(
          self._step_context, copy.dofn, self.key_coder)
      for spec in direct_evaluators.get_dofn_specs(copy.dofn)[1]:
        self.user_timer_map[f'user/{spec.name}'] = spec
    # (The per-element counter experiment binds a counter of the runner's
    # first bundle.)
    if stateful or self._side_inputs or _PER_ELEMENT_COUNTER in (
        RuntimeValueProvider.experiments or ()):
      self.runner = self._new_runner(copy.dofn, self._receivers(
          self._outputs_of_bundle))
    else:
      if copy.runner is None:
        copy.outputs = {tag: _Forward() for tag in self._outputs_of_bundle}
        copy.runner = self._new_runner(copy.dofn,
                                       self._receivers(copy.outputs))
      for tag, forward in copy.outputs.items():
        forward.bundle = self._outputs_of_bundle[tag]
      self.runner = copy.runner
    if fresh:
      self.runner.setup()
    self.runner.start()

  def _receivers(self, by_tag: dict):
    receivers = direct_evaluators._TaggedReceivers(self._evaluation_context)  # pylint: disable=protected-access
    receivers.update(by_tag)
    return receivers

  def _new_runner(self, dofn, receivers):
    transform = self._applied_ptransform.transform
    return direct_evaluators.DoFnRunner(
        dofn, getattr(transform, 'args', []), getattr(transform, 'kwargs', {}),
        self._side_inputs, self._applied_ptransform.inputs[0].windowing,
        tagged_receivers=receivers,
        step_name=self._applied_ptransform.full_label,
        state=direct_evaluators.DoFnState(self._counter_factory),
        user_state_context=self.user_state_context)

  def finish_bundle(self):
    self.runner.finish()
    # Empty output bundles are left out: Beam's evaluator commits one per
    # output tag, and the runner schedules every consumer step for each
    # (a dead-letter output, empty nearly always, cost every step after it
    # a bundle per read; docs/latency.md). No element, no watermark hold:
    # nothing downstream depends on them.
    outputs = [bundle for bundle in self._outputs_of_bundle.values()
               if bundle.has_elements()]
    result = TransformResult(self, outputs, [],
                             self._counter_factory.get_counters(), None)
    if self.user_state_context:
      self.user_state_context.commit()
      self.user_state_context.reset()
    for forward in self._copy.outputs.values():
      forward.bundle = None
    self.copies.give_back(self._applied_ptransform, self._copy)
    return result


class _ReadFromKafkaOverride(PTransformOverride):

  def __init__(self, tuning: LocalReadTuning):
    self._tuning = tuning
    self.replaced: list[_DirectReadFromKafka] = []

  def matches(self, applied_ptransform):
    return isinstance(applied_ptransform.transform, ReadFromKafka)

  def get_replacement_transform_for_applied_ptransform(self,
                                                       applied_ptransform):
    replacement = _DirectReadFromKafka(applied_ptransform.transform.settings,
                                       self._tuning)
    self.replaced.append(replacement)
    return replacement


# The executor's workers.


class _PerTaskSamplerWorker(
    direct_executor._ExecutorService._ExecutorServiceWorker):  # pylint: disable=protected-access
  """An executor worker thread with a fresh state sampler per task.

  Works around a bug in Beam 2.77's bundle-based runner: its worker keeps one
  StateSampler, which caches a ScopedState per step name together with the
  MetricsContainer of the *first* bundle of that step. Later bundles update
  that stale container while the runner commits their own, empty, one: user
  metrics stop counting after a step's first bundle. A sampler per task binds
  each bundle's updates to the container the runner commits.
  """

  def run(self):
    while not self.shutdown_requested:
      task = self._get_task_or_none()
      if not task:
        continue
      try:
        if not self.shutdown_requested:
          sampler = statesampler.StateSampler('', counters.CounterFactory())
          statesampler.set_current_tracker(sampler)
          self._update_name(task)
          task.call(sampler)
          self._update_name()
      finally:
        self.queue.task_done()


_CONSTRUCTION_LOCK = threading.Lock()


@contextlib.contextmanager
def _run_construction(copies: _DoFnCopies):
  """While a run builds its executor: our evaluators in the table its
  registry copies (the ParDo one bound to this run's ``copies``), and our
  workers in the executor it starts."""
  service = direct_executor._ExecutorService  # pylint: disable=protected-access
  table = TransformEvaluatorRegistry._test_evaluators_overrides  # pylint: disable=protected-access
  ours = {
      _DirectReadFromKafka: _KafkaReadEvaluator,
      beam_core.ParDo: type('_ReusingParDoEvaluatorOfRun',
                            (_ReusingParDoEvaluator,), {'copies': copies}),
  }
  with _CONSTRUCTION_LOCK:
    worker = service._ExecutorServiceWorker  # pylint: disable=protected-access
    listed = {key: table[key] for key in ours if key in table}
    service._ExecutorServiceWorker = _PerTaskSamplerWorker  # pylint: disable=protected-access
    table.update(ours)
    try:
      yield
    finally:
      service._ExecutorServiceWorker = worker  # pylint: disable=protected-access
      for key in ours:
        table.pop(key, None)
      table.update(listed)


_STREAMING_GBK_OVERRIDES = ('StreamingGroupByKeyOverride',
                            'StreamingGroupAlsoByWindowOverride')


def _apply_overrides_in_working_order(pipeline, options) -> None:
  """Applies the bundle-based runner's own overrides, streaming ones last.

  Works around a Beam 2.77 bug: in streaming mode the runner applies its
  streaming GroupByKey overrides before overrides that add GroupByKeys of
  their own (CombinePerKey lifting in the global window, splittable DoFn
  expansion), and pipeline construction fails with "... _GroupByKeyOnly was
  not replaced as expected". Applied in this order first, the runner's own
  pass afterwards finds nothing left to replace.
  """
  overrides = direct_runner._get_transform_overrides(options)  # pylint: disable=protected-access
  last = [o for o in overrides
          if type(o).__name__ in _STREAMING_GBK_OVERRIDES]
  pipeline.replace_all([o for o in overrides if o not in last] + last)


# The runner and its result.


class LocalStreamingResult(PipelineResult):
  """The pipeline result, plus a clean stop and the final offset commit.

  Also ends the run's hold on the introspection cache (_RunPatches) when
  the pipeline finishes, fails or is cancelled.
  """

  def __init__(self, inner: PipelineResult, reads: list[_DirectReadFromKafka],
               release: Callable[[], None]):
    super().__init__(inner.state)
    self._inner = inner
    self._reads = reads
    self._release = release
    self._waiter: Optional[threading.Thread] = None
    self._finished = threading.Event()
    self._outcome: dict = {}
    # A result dropped without a wait still ends its hold.
    weakref.finalize(self, release)

  @property
  def state(self):
    return self._inner.state

  def stop_reading(self) -> None:
    """Ends every Kafka read; windows fire, sinks flush, offsets commit."""
    for read in self._reads:
      read.reader.request_stop()

  def _wait_inner(self) -> None:
    try:
      self._outcome['state'] = self._inner.wait_until_finish()
    except:  # pylint: disable=bare-except
      # Bare: librdkafka can raise KafkaError objects (not exceptions).
      error = sys.exc_info()[1]
      self._outcome['error'] = (error if isinstance(error, BaseException)
                                else RuntimeError(str(error)))
    finally:
      # The executor's threads have ended: no bundle runs any more.
      self._release()
      self._finished.set()

  def wait_until_finish(self, duration=None):
    """Waits for the pipeline; on success commits what was read.

    The runner's own wait shuts its executor down when an exception such as
    KeyboardInterrupt reaches it, killing the pipeline mid-stream. It runs
    on a thread of its own here, so Ctrl-C or SIGTERM only interrupts the
    caller, who can call stop_reading() and wait again for a clean drain.
    """
    if self._waiter is None:
      self._waiter = threading.Thread(target=self._wait_inner,
                                      name='local-streaming-wait',
                                      daemon=True)
      self._waiter.start()
    deadline = None if duration is None else time.monotonic() + duration
    while not self._finished.wait(0.5):
      if deadline is not None and time.monotonic() >= deadline:
        return self.state
    if 'error' in self._outcome:
      self._close()
      raise self._outcome['error']
    state = self._outcome['state']
    if state == PipelineState.DONE:
      # Everything read has been processed by every step: commit it all.
      for read in self._reads:
        read.reader.commit()
    self._close()
    return state

  def _close(self):
    for read in self._reads:
      read.reader.close()

  def cancel(self):
    state = self._inner.cancel()
    self._close()
    self._release()
    return state

  def metrics(self):
    return self._inner.metrics()


class LocalStreamingRunner(BundleBasedDirectRunner):
  """Beam's bundle-based DirectRunner with ReadFromKafka read natively.

  The runner itself is Beam's; this adds one override and its evaluator, as
  Beam does for Pub/Sub, and the fenced workarounds of the module
  docstring. Use it for ``--streaming`` pipelines locally when Prism is not
  available (beam_jobs/engine.py picks it).
  """

  def __init__(self, *,
               records_per_call: int = LocalReadTuning.records_per_call,
               call_budget_s: float = LocalReadTuning.call_budget_s,
               commit_interval_s: float = LocalReadTuning.commit_interval_s):
    super().__init__()
    self._tuning = LocalReadTuning(records_per_call=records_per_call,
                                   call_budget_s=call_budget_s,
                                   commit_interval_s=commit_interval_s)

  def run_pipeline(self, pipeline, options):
    check_beam_version()
    # The bundle-based runner only fires event-time windows in streaming mode.
    options.view_as(StandardOptions).streaming = True
    override = _ReadFromKafkaOverride(self._tuning)
    pipeline.replace_all([override])
    _apply_overrides_in_working_order(pipeline, options)
    patches = _RUN_PATCHES.acquire()
    copies = _DoFnCopies()

    def release():
      copies.teardown_all()
      patches()

    try:
      with _run_construction(copies):
        result = super().run_pipeline(pipeline, options)
    except BaseException:
      release()
      for read in override.replaced:
        read.reader.close()
      raise
    return LocalStreamingResult(result, override.replaced, _Once(release))


__all__ = ['LocalStreamingResult', 'LocalStreamingRunner',
           'UnverifiedBeamVersion', 'VERIFIED_BEAM_VERSIONS',
           'check_beam_version']
