"""The local streaming runner's fences around Beam internals (no broker).

Pipelines here have no Kafka read: they only need the runner. What is
checked: the introspection cache answers as Beam does; every patch is in
place only while a local pipeline runs (reference-counted across pipelines
running at once) and Beam's own functions are back afterwards; a Beam
release the runner was not verified on is refused before anything is
patched. The watermark-manager reads are covered with a broker in
tests/local_runner_it_test.py.
"""

import threading

import apache_beam as beam
import pytest
from apache_beam.coders import VarIntCoder
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct import executor as direct_executor
from apache_beam.runners.direct import transform_evaluator
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms import core, userstate

from beam_jobs import engine as engine_lib
from beam_jobs import local_runner
from beam_jobs.local_runner import (LocalStreamingRunner,
                                    UnverifiedBeamVersion, check_beam_version)

# Beam's own functions and classes, as imported (nothing patches at import).
_BEAMS_OWN = {
    (core, 'get_function_args_defaults'): core.get_function_args_defaults,
    (userstate, 'get_dofn_specs'): userstate.get_dofn_specs,
    (transform_evaluator, 'get_dofn_specs'): transform_evaluator.get_dofn_specs,
    (transform_evaluator, 'pickler'): transform_evaluator.pickler,
}
_BEAMS_WORKER = direct_executor._ExecutorService._ExecutorServiceWorker  # pylint: disable=protected-access


def _patched() -> list[str]:
  """What of Beam is not Beam's own right now."""
  out = [f'{m.__name__}.{n}' for (m, n), f in _BEAMS_OWN.items()
         if getattr(m, n) is not f]
  if direct_executor._ExecutorService._ExecutorServiceWorker is not _BEAMS_WORKER:  # pylint: disable=protected-access
    out.append('executor worker')
  if transform_evaluator.TransformEvaluatorRegistry._test_evaluators_overrides:  # pylint: disable=protected-access
    out.append('evaluator table')
  return out


class _Counting(beam.DoFn):
  COUNT = userstate.ReadModifyWriteStateSpec('count', VarIntCoder())

  def process(self, element, count=beam.DoFn.StateParam(COUNT)):
    yield element


class _Plain(beam.DoFn):

  def process(self, element, scale=2):
    yield element * scale


def test_introspection_cache_gives_beams_answers():
  args_defaults, dofn_specs = local_runner._memoized_introspection(  # pylint: disable=protected-access
      core.get_function_args_defaults, userstate.get_dofn_specs)
  plain, counting = _Plain(), _Counting()
  for _ in range(2):  # computed, then cached
    assert args_defaults(plain.process) == (['element', 'scale'], [2])
  # Cached answers are fresh lists: a caller's changes do not stick.
  args, _ = args_defaults(plain.process)
  args.append('junk')
  assert args_defaults(plain.process)[0] == ['element', 'scale']
  # Unbound functions keep their first parameter.
  assert args_defaults(_Plain.process)[0] == ['self', 'element', 'scale']
  assert dofn_specs(plain) == userstate.get_dofn_specs(plain)
  states, timers = dofn_specs(_Counting())
  assert [s.name for s in states] == ['count'] and not timers
  # A DoFn with methods of its own on the instance is not served from the
  # class's cache entry.
  odd = _Plain()
  odd.process = counting.process
  assert dofn_specs(odd) == userstate.get_dofn_specs(counting)


def _exception_handling_wrapper(fn, *, unsafe_userstate=False):
  """Beam's wrapper of ``ParDo(...).with_exception_handling()``, as each
  bundle's unpickled copy of it looks."""
  wrapper = core._ExceptionHandlingWrapperDoFn(  # pylint: disable=protected-access
      fn, 'bad', (Exception,), False, None, unsafe_userstate)
  return pickler.roundtrip(wrapper)


def test_introspection_cache_serves_exception_handling_wrappers():
  calls = []

  def counted_specs(dofn):
    calls.append(dofn)
    return userstate.get_dofn_specs(dofn)

  _, dofn_specs = local_runner._memoized_introspection(  # pylint: disable=protected-access
      core.get_function_args_defaults, counted_specs)
  # RunInference's dead letters wrap its DoFn so: the wrapper binds its own
  # process on the instance, a function of its class.
  copies = [_exception_handling_wrapper(_Plain()) for _ in range(3)]
  for copy in copies:
    assert dofn_specs(copy) == userstate.get_dofn_specs(copy)
  assert len(calls) == 1
  # Methods of another object's class (the Kafka write's record fitter).
  bound_elsewhere = []
  for _ in range(2):
    plain = _Plain()
    plain.helper = _Tally().process
    bound_elsewhere.append(plain)
  for copy in bound_elsewhere:
    assert dofn_specs(copy) == userstate.get_dofn_specs(copy)
  assert len(calls) == 2
  # Bound to a closure made per instance: computed every time.
  closures = [_exception_handling_wrapper(_Plain(), unsafe_userstate=True)
              for _ in range(2)]
  for copy in closures:
    assert dofn_specs(copy) == userstate.get_dofn_specs(copy)
  assert len(calls) == 4


class _Tally(beam.DoFn):

  def __init__(self):
    self.seen = []

  def process(self, element):
    self.seen.append(element)
    yield element


# What DoFns saw while they ran: whether introspection was Beam's own.
_SAW_BEAMS_OWN: list = []
_GATES: dict = {}


def _probe(x):
  _SAW_BEAMS_OWN.append(not _patched())
  return x


def _wait_for_gate(x):
  assert _GATES[x].wait(60)
  return x


def _local_pipeline():
  return beam.Pipeline(runner=LocalStreamingRunner(),
                       options=PipelineOptions(streaming=True))


def test_patches_hold_only_while_a_local_pipeline_runs():
  assert not _patched()
  _SAW_BEAMS_OWN.clear()
  p = _local_pipeline()
  _ = p | beam.Create([1, 2, 3]) | beam.Map(_probe)
  assert p.run().wait_until_finish() == PipelineState.DONE
  # Inside the run: the introspection cache was installed.
  assert _SAW_BEAMS_OWN and not any(_SAW_BEAMS_OWN)
  # After it: Beam's own functions, for every pipeline built afterwards.
  assert not _patched()
  _SAW_BEAMS_OWN.clear()
  with beam.Pipeline(runner=FnApiRunner()) as after:
    _ = after | beam.Create([1, 2, 3]) | beam.Map(_probe)
  assert _SAW_BEAMS_OWN and all(_SAW_BEAMS_OWN)


def test_two_local_pipelines_at_once_keep_the_patches_until_the_last_ends():
  _GATES.clear()
  _GATES.update({'first': threading.Event(), 'second': threading.Event()})
  results = {}
  for name in ('first', 'second'):
    p = _local_pipeline()
    _ = p | beam.Create([name]) | beam.Map(_wait_for_gate)
    results[name] = p.run()
  assert local_runner._RUN_PATCHES.active_runs == 2  # pylint: disable=protected-access
  _GATES['second'].set()
  assert results['second'].wait_until_finish() == PipelineState.DONE
  # The first is still running: its cache stays.
  assert _patched() == ['apache_beam.transforms.core.get_function_args_defaults',
                        'apache_beam.transforms.userstate.get_dofn_specs',
                        'apache_beam.runners.direct.transform_evaluator.'
                        'get_dofn_specs']
  _GATES['first'].set()
  assert results['first'].wait_until_finish() == PipelineState.DONE
  assert local_runner._RUN_PATCHES.active_runs == 0  # pylint: disable=protected-access
  assert not _patched()


def test_a_cancelled_pipeline_ends_its_hold():
  _GATES.clear()
  _GATES['cancelled'] = threading.Event()
  p = _local_pipeline()
  _ = p | beam.Create(['cancelled']) | beam.Map(_wait_for_gate)
  result = p.run()
  assert _patched()
  _GATES['cancelled'].set()  # cancel() waits for the running bundle
  result.cancel()
  assert not _patched()
  assert local_runner._RUN_PATCHES.active_runs == 0  # pylint: disable=protected-access


def test_a_function_replaced_meanwhile_is_left_alone_on_restore():
  beams = core.get_function_args_defaults
  theirs = lambda f: ([], [])  # pylint: disable=unnecessary-lambda-assignment
  release = local_runner._RUN_PATCHES.acquire()  # pylint: disable=protected-access
  try:
    core.get_function_args_defaults = theirs
    release()
    release()  # idempotent
    assert core.get_function_args_defaults is theirs
    assert local_runner._RUN_PATCHES.active_runs == 0  # pylint: disable=protected-access
  finally:
    core.get_function_args_defaults = beams
  assert not _patched()


@pytest.mark.parametrize('version', ['2.77.0', '2.77.3', '2.77.0rc1'])
def test_verified_beam_versions_pass(version):
  check_beam_version(version)


@pytest.mark.parametrize('version', ['2.76.0', '2.78.0', '3.0.0'])
def test_unverified_beam_is_refused_naming_versions_and_prism(version):
  with pytest.raises(UnverifiedBeamVersion) as raised:
    check_beam_version(version)
  message = str(raised.value)
  assert version in message and '2.77.x' in message
  assert '--runner PrismRunner' in message


def test_runner_and_engine_refuse_an_unverified_beam_before_patching(
    monkeypatch):
  monkeypatch.setattr(local_runner.beam_version, '__version__', '2.78.0')
  p = _local_pipeline()
  _ = p | beam.Create([1]) | beam.Map(_probe)
  with pytest.raises(UnverifiedBeamVersion, match='2.78.0'):
    p.run()
  assert not _patched()
  assert local_runner._RUN_PATCHES.active_runs == 0  # pylint: disable=protected-access
  # The jobs learn it when the engine is chosen, before building anything.
  monkeypatch.setattr(engine_lib.shutil, 'which', lambda name: None)
  monkeypatch.setattr(engine_lib.glob, 'glob', lambda pattern: [])
  with pytest.raises(UnverifiedBeamVersion, match='PrismRunner'):
    engine_lib.select_engine(PipelineOptions(['--streaming']))
  # With a Prism binary at hand, Prism runs, whatever the Beam version.
  prism = engine_lib.select_engine(PipelineOptions(
      ['--streaming', '--prism_location', '/opt/prism']))
  assert prism.runner == 'PrismRunner'
