"""Effectively-once steps: what they drop, what they remember, and when.

The seed is faked here (tests/dedup_it_test.py reads real topics)."""

import time
import uuid

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs import engine
from transforms import dead_letters as dl
from transforms import dedup, dedup_seed
from transforms.dead_letters import DeadLetter, KafkaFit
from transforms.events import EventBatch
from transforms.seen_ids import fingerprints


def _settings(**kw) -> dedup.DedupSettings:
  return dedup.DedupSettings('out', 'dlq', 600.0, **kw)


@pytest.fixture
def config(monkeypatch):
  """A client config whose seed is given by ``config.seed(ids, letters)``
  instead of read from topics (a new one per test: memory is per
  process, by cluster and topics)."""
  seed = {'ids': [], 'letters': []}

  def fake_read_back(unused_config, *, predictions, dead_letters,
                     **unused_kw):
    now = time.time()
    predictions(fingerprints(seed['ids']), np.full(len(seed['ids']), now))
    dead_letters(np.array([hash(d.identity()) for d in seed['letters']],
                          dtype=np.int64), np.full(len(seed['letters']), now))
    return dedup_seed.SeedStats(len(seed['ids']), len(seed['letters']), 0.0,
                                60.0)

  monkeypatch.setattr(dedup_seed, 'read_back', fake_read_back)

  class Config(dict):

    def seed(self, ids=(), letters=()):
      seed['ids'], seed['letters'] = list(ids), list(letters)

  return Config({'bootstrap.servers': f'fake-{uuid.uuid4().hex[:8]}'})


def _batch(ids):
  n = len(ids)
  return EventBatch(
      source='kafka:in/0', positions=np.arange(n), raw=[b'{}'] * n,
      ids=list(ids), keys=['k'] * n, event_time=np.full(n, 1e9),
      features=np.zeros((n, 1), np.float32),
      window_values=np.zeros((n, 0), np.float32), labels=None,
      read_time=np.zeros(n))


def _letter(position=7, *, payload=b'\xff not json', stage=dl.PARSE,
            reason=dl.MALFORMED, source='kafka:in/2', event_id=None):
  return DeadLetter(stage=stage, reason=reason, detail='', payload=payload,
                    source=source, position=position, event_id=event_id)


class _Finalizer:
  """What a runner's BundleFinalizerParam does, run by hand."""

  def __init__(self):
    self.callbacks = []

  def register(self, callback):
    self.callbacks.append(callback)

  def finalize(self):
    for callback in self.callbacks:
      callback()
    self.callbacks = []


def _ids(outputs):
  out = []
  for o in outputs:
    out += getattr(o, 'value', o).ids
  return out


def test_scored_events_are_dropped_and_what_passed_is_remembered(config):
  config.seed(ids=['e1'])
  fn = dedup._DropScoredEventsFn(config, _settings(
      remember_on_finalize=False))
  fn.setup()
  fn.start_bundle()
  out = list(fn.process(_batch(['e1', 'e2', 'e2', 'e3']), _Finalizer()))
  assert _ids(out) == ['e2', 'e3']
  # Within the bundle already; in the process's memory once it finished.
  assert _ids(fn.process(_batch(['e3', 'e4']), _Finalizer())) == ['e4']
  memory = dedup.memory_for(config, _settings())
  assert memory.predictions.unseen(fingerprints(['e2'])).all()
  fn.finish_bundle()
  assert not memory.predictions.unseen(fingerprints(['e2', 'e4'])).any()
  fn.start_bundle()
  assert _ids(fn.process(_batch(['e2', 'e5']), _Finalizer())) == ['e5']


def test_a_retried_bundle_does_not_find_its_own_events_seen(config):
  # Where steps are fused, the writes downstream may fail after this step
  # let events through: they are remembered only when the runner finalizes
  # the bundle, i.e. after everything in it succeeded.
  fn = dedup._DropScoredEventsFn(config, _settings())
  fn.setup()
  failed = _Finalizer()
  fn.start_bundle()
  assert _ids(fn.process(_batch(['e1', 'e2']), failed)) == ['e1', 'e2']
  fn.finish_bundle()   # then a write failed: never finalized
  retry = _Finalizer()
  fn.start_bundle()
  assert _ids(fn.process(_batch(['e1', 'e2']), retry)) == ['e1', 'e2']
  fn.finish_bundle()
  retry.finalize()
  fn.start_bundle()
  assert _ids(fn.process(_batch(['e1', 'e2', 'e3']), _Finalizer())) == ['e3']


def test_dead_letters_of_records_already_dead_lettered_are_dropped(config):
  written = _letter(7)
  config.seed(letters=[written])
  fn = dedup._DropWrittenDeadLettersFn(config, _settings(
      remember_on_finalize=False))
  fn.setup()
  fn.start_bundle()
  again = _letter(7, stage=dl.VALIDATE, reason=dl.WRONG_TYPE)
  replayed = _letter(41, source='kafka:in/0')   # replayed: new coordinates
  reused = _letter(7, payload=b'another record at a reused offset')
  rejected = [_letter(-1, source='bigquery:p.d.t', stage='sink',
                      reason='bigquery_insert_error', event_id=e)
              for e in ('e1', 'e2', 'e1')]
  out = [d for letter in [again, replayed, reused, replayed] + rejected
         for d in fn.process(letter, _Finalizer())]
  assert out == [replayed, reused, rejected[0], rejected[1]]
  fn.finish_bundle()
  fn.start_bundle()
  assert not list(fn.process(replayed, _Finalizer()))


@pytest.mark.parametrize('size', [100, 100_000])
@pytest.mark.parametrize('position', [12, -1])
def test_a_dead_letter_and_its_record_on_the_topic_have_one_identity(
    size, position):
  letter = DeadLetter(stage=dl.INFERENCE, reason=dl.INFERENCE_ERROR,
                      detail='nan', payload=b'x' * size, source='kafka:in/1',
                      position=position, event_id='r9', record_key=b'r9',
                      record_headers=(('trace', b'1'),))
  fit = KafkaFit(10_000)   # the large one is cut to fit

  class _Message:

    def headers(self):
      return fit.headers(letter)

    def value(self):
      return fit.value(letter)

    def timestamp(self):
      return (0, -1)

  identity, at = dedup_seed.dead_letter_record_identity(_Message())
  assert identity == letter.identity()
  assert at == pytest.approx(letter.time, abs=1e-3)


def _pipeline_memory(config, runner, remember_on_finalize):
  settings = _settings(remember_on_finalize=remember_on_finalize)
  first, again, other = _letter(1), _letter(1, reason=dl.EXTRA_FIELD), _letter(2)
  with beam.Pipeline(runner=runner) as p:
    out = (p | beam.Create([first, again, other])
           | 'Drop' >> dedup.DropWrittenDeadLetters(config, settings))
    assert_that(out | beam.Map(lambda d: d.position), equal_to([1, 2]))
  memory = dedup.memory_for(config, settings)
  return memory.dead_letters.unseen(np.array(
      [hash(first.identity()), hash(other.identity())], dtype=np.int64))


def test_on_a_portable_runner_what_passed_is_remembered_on_finalization(
    config):
  runner = FnApiRunner()
  assert engine.finalizes_bundles(runner)
  assert not _pipeline_memory(config, runner, True).any()


def test_on_the_bundle_based_runner_it_is_remembered_at_finish_bundle(config):
  runner = BundleBasedDirectRunner()
  assert not engine.finalizes_bundles(runner)
  assert not _pipeline_memory(config, runner, False).any()


def test_a_horizon_must_be_positive():
  with pytest.raises(ValueError, match='horizon'):
    dedup.DropScoredEvents({}, dedup.DedupSettings('out', 'dlq', 0))
  with pytest.raises(ValueError, match='dead_letter_topic'):
    dedup.DropWrittenDeadLetters({}, dedup.DedupSettings('out', None, 60))
