"""Hot swap in the running scoring job, on a real broker.

The job runs unbounded on the local streaming engine while a thread produces
events continuously. Mid-stream a new model version is exported (atomically,
by models/export.py), then a corrupt one. The test checks, from the output
topic: every event scored exactly once across the swap; scores from version
1 until the swap and from version 2 after it, each equal to that version's
offline score; the corrupt version refused (logged; counted when the poll
refuses it) while version 2 keeps serving.

Known quirk, measured here: on the local (bundle-based) runner the model
object can be rebuilt between bundles (Beam's per-process model sharing
holds it by weak reference, and the runner's per-bundle DoFn copies may drop
the last strong one). A rebuilt model starts with the newest loadable
version, so the served versions stay right, but that load is not a logged
"swap", and a refusal during it is logged without being counted.
"""

import collections
import logging
import os
import threading
import time

import keras
import numpy as np
import orjson
import pytest
import tensorflow as tf
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineState
from confluent_kafka import Producer

from beam_jobs import score_stream
from kafka_helpers import read_topic
from model_fixtures import write_corrupt_version
from models import export, susy
from models import handler as handler_lib

pytestmark = [pytest.mark.it, pytest.mark.slow]

SEED = 31
RATE = 400.0          # events per second, produced while the job runs
POLL_S = 0.5          # --model_poll_s
# Longest expected time from a version becoming visible to serving it:
# the poll interval, plus loading and smoke-testing the SavedModel, plus the
# pipeline's latency, on a busy 2-core machine.
SWAP_DEADLINE_S = 8.0

_LOGGER = logging.getLogger(__name__)


def _linear_model(weights: np.ndarray, bias: float) -> keras.Model:
  inputs = keras.Input(shape=(susy.NUM_FEATURES,), name='features')
  dense = keras.layers.Dense(1, activation='sigmoid', name='score')
  model = keras.Model(inputs, dense(inputs))
  dense.set_weights([weights.reshape(-1, 1).astype(np.float32),
                     np.asarray([bias], np.float32)])
  return model


def _export(root: str, version: int, weights: np.ndarray, bias: float) -> str:
  return export.export_model(
      _linear_model(weights, bias), root, feature_names=susy.FEATURE_NAMES,
      metrics={'accuracy': 0.5, 'auc': 0.5, 'loss': 0.7, 'examples': 0},
      version=version, config_name=f'hot-swap-v{version}')


class _ContinuousProducer(threading.Thread):
  """Produces SUSY events at RATE with event time = produce time, until
  stopped; remembers how many it produced."""

  def __init__(self, broker, topic: str):
    super().__init__(daemon=True)
    self._broker = broker
    self._topic = topic
    self._stop_event = threading.Event()
    self.produced = 0
    self.failed = 0
    self.error = None

  def stop(self):
    self._stop_event.set()
    self.join(30)

  def run(self):
    try:
      producer = Producer(self._broker.client_config(**{'linger.ms': 5}))

      def on_delivery(err, unused_msg):
        if err is not None:
          self.failed += 1

      started = time.time()
      for event in susy.iter_encoded_events(10_000_000, seed=SEED,
                                            start_time=started, rate=RATE,
                                            chunk_rows=256):
        if self._stop_event.is_set():
          break
        wait = event.timestamp_ms / 1000.0 - time.time()
        if wait > 0:
          producer.poll(0)
          time.sleep(wait)
        producer.produce(self._topic, key=event.key, value=event.value,
                         timestamp=event.timestamp_ms, on_delivery=on_delivery)
        self.produced += 1
      self.failed += producer.flush(30)
    except Exception as e:  # pylint: disable=broad-except
      self.error = e


def _offline_scores(root: str, version: int, features: np.ndarray):
  signature = tf.saved_model.load(os.path.join(root, str(version))).signatures[
      'serving_default']
  return signature(features=tf.constant(features))['score'].numpy()


def test_swap_mid_stream_loses_nothing_and_refuses_a_corrupt_version(
    broker, make_topic, tmp_path, caplog, monkeypatch):
  caplog.set_level(logging.INFO, logger='models.handler')
  # A spy on model construction (when it began, first version served).
  instances = []
  original_init = handler_lib.VersionedModel.__init__

  def spy_init(self, *args, **kwargs):
    started = time.time()
    original_init(self, *args, **kwargs)
    if self.versioned:
      instances.append((started, self.current.version))

  monkeypatch.setattr(handler_lib.VersionedModel, '__init__', spy_init)
  root = str(tmp_path / 'models')
  w1 = np.linspace(-1.0, 1.0, susy.NUM_FEATURES).astype(np.float32)
  _export(root, 1, w1, 0.0)
  topics = {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  args = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'],
          '--consumer_group', f'g-{topics["in"]}', '--start', 'earliest',
          '--model_dir', root, '--model_poll_s', str(POLL_S),
          '--window_size_s', '5', '--idle_timeout_s', '1']
  args += [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
           if k != 'bootstrap.servers']

  result = score_stream.run(args, block=False)
  producer = _ContinuousProducer(broker, topics['in'])
  producer.start()
  try:
    time.sleep(6)
    # Version 2: the opposite weights, so every score s becomes ~1 - s.
    v2_started = time.time()
    _export(root, 2, -w1, 0.25)
    v2_visible = time.time()
    time.sleep(6)
    v3_visible = time.time()
    write_corrupt_version(root, 3)
    time.sleep(5)
  finally:
    producer.stop()
    time.sleep(1)
    result.stop_reading()
    state = result.wait_until_finish()
  assert producer.error is None and producer.failed == 0
  assert state == PipelineState.DONE
  n = producer.produced
  assert n >= 0.8 * RATE * 17, n

  predictions = [orjson.loads(m.value()) for m in
                 read_topic(broker, topics['out'], n)]
  # Every produced event exactly once: nothing lost or scored twice.
  by_id = collections.Counter(p['event_id'] for p in predictions)
  # A missing id is usually a dead letter: its reason says why.
  dead = {m.key().decode(): dict(m.headers() or []).get('dlq.reason')
          for m in read_topic(broker, topics['dlq'], 0)}
  missing = {f'e{i}' for i in range(n)} - set(by_id)
  assert not missing, {i: dead.get(i) for i in sorted(missing)[:10]}
  assert max(by_id.values()) == 1

  # Each score is its version's offline score.
  features = susy.generate(n, seed=SEED).features
  offline = {v: _offline_scores(root, v, features) for v in (1, 2)}
  versions = collections.Counter(p['model_version'] for p in predictions)
  assert set(versions) == {1, 2}, versions
  for p in predictions:
    i = int(p['event_id'][1:])
    assert abs(p['score'] - offline[p['model_version']][i]) <= 1e-6, p
  # The two versions really differ on these events.
  assert np.mean(np.abs(offline[1] - offline[2])) > 0.2

  # Version 1 until the swap, version 2 from then on (one worker thread
  # scores in order): the versions never interleave in scoring time.
  ordered = sorted(predictions, key=lambda p: p['scored_time'])
  switch = next(i for i, p in enumerate(ordered) if p['model_version'] == 2)
  assert all(p['model_version'] == 1 for p in ordered[:switch])
  assert all(p['model_version'] == 2 for p in ordered[switch:])
  swapped_at = ordered[switch]['scored_time']
  assert v2_started <= swapped_at <= v2_visible + SWAP_DEADLINE_S, (
      swapped_at - v2_visible)
  # Version 3 appeared while version 2 served; version 2 kept serving to
  # the end, through events produced after version 3.
  after_v3 = [p for p in ordered if p['scored_time'] > v3_visible]
  assert len(after_v3) > RATE * 2
  assert {p['model_version'] for p in after_v3} == {2}

  # The refusal, logged and counted. How many times depends on how often
  # the job built its model: Beam shares the model per process through a
  # weak reference, and the local runner's per-bundle DoFn copies can drop
  # the last strong one between bundles; the next bundle then loads the
  # newest loadable version afresh (instances below). A refusal by the poll
  # ("still serving 2") is counted; one while loading afresh is logged.
  messages = [r.getMessage() for r in caplog.records
              if r.name == 'models.handler']
  refusals = [m for m in messages if m.startswith('refusing model version')]
  assert refusals and all(m.startswith('refusing model version 3')
                          for m in refusals), refusals
  polled = [m for m in refusals if '(still serving 2)' in m]
  swaps = [m for m in messages if m.startswith('model swap')]
  assert all('version 1 -> 2' in m for m in swaps), swaps
  counters = result.metrics().query(MetricsFilter().with_name(
      'model_versions_refused'))['counters']
  assert sum(c.committed for c in counters) == len(polled), counters
  swap_counters = result.metrics().query(
      MetricsFilter().with_name('model_swaps'))['counters']
  assert sum(c.committed for c in swap_counters) == len(swaps)
  # Every model instance started with the newest loadable version of its
  # time: 1 before version 2 existed, 2 once it did (never the corrupt 3).
  assert instances and instances[0][1] == 1
  for built_at, version in instances:
    if built_at < v2_started:
      assert version == 1, instances
    elif built_at > v2_visible:
      assert version == 2, instances
  # Version 2 got served either by a swap or by a fresh load.
  assert swaps or any(v == 2 for _, v in instances), (swaps, instances)

  first_v2 = ordered[switch]
  print(f'\nhot swap: {n} events, {versions[1]} scored by version 1, '
        f'{versions[2]} by version 2; version 2 visible at +'
        f'{v2_visible - v2_started:.2f} s after its export began, first '
        f'served {swapped_at - v2_visible:.2f} s later (event '
        f'{first_v2["event_id"]}); last version-1 event '
        f'{ordered[switch - 1]["event_id"]}; {len(instances)} model '
        f'instances built (seconds from the start of the version 2 export, '
        f'first version served): '
        f'{[(round(t - v2_started, 1), v) for t, v in instances]}\n'
        + '\n'.join(m[:200] for m in swaps + refusals))
