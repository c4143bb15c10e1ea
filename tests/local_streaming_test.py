"""Unit tests of the local streaming engine's workarounds (no broker)."""

import apache_beam as beam
from apache_beam.coders import VarIntCoder
from apache_beam.transforms import core, userstate

from transforms.kafka import local_streaming


class _Counting(beam.DoFn):
  COUNT = userstate.ReadModifyWriteStateSpec('count', VarIntCoder())

  def process(self, element, count=beam.DoFn.StateParam(COUNT)):
    yield element


class _Plain(beam.DoFn):

  def process(self, element, scale=2):
    yield element * scale


def test_signature_cache_gives_beams_answers():
  # Beam's own answers, before the cache exists in this process (or with it:
  # the cached function delegates to the original for anything new).
  local_streaming._install_signature_cache()  # pylint: disable=protected-access
  local_streaming._install_signature_cache()  # idempotent
  plain, counting = _Plain(), _Counting()
  assert core.get_function_args_defaults(plain.process) == (
      ['element', 'scale'], [2])
  # Cached answers are fresh lists: a caller's changes do not stick.
  args, _ = core.get_function_args_defaults(plain.process)
  args.append('junk')
  assert core.get_function_args_defaults(plain.process)[0] == [
      'element', 'scale']
  # Unbound functions keep their first parameter.
  assert core.get_function_args_defaults(_Plain.process)[0] == [
      'self', 'element', 'scale']
  assert not userstate.is_stateful_dofn(plain)
  assert userstate.is_stateful_dofn(counting)
  states, timers = userstate.get_dofn_specs(_Counting())
  assert [s.name for s in states] == ['count'] and not timers
  # A DoFn with methods of its own on the instance is not served from the
  # class's cache entry.
  odd = _Plain()
  odd.process = counting.process
  assert userstate.is_stateful_dofn(odd)
