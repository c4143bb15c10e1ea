"""Deployments on a running scoring job: real broker, real SavedModels.

The job runs unbounded on the local streaming engine with
``--control_topic`` while a thread produces events continuously, and the
operator's CLI (python -m models.deploy, called in-process) changes what
serves. Each test reads the prediction topic afterwards and checks, phase by
phase (a phase starts when its record was acknowledged):

* the switch took effect within SWITCH_DEADLINE_S (first row of the new
  state), and rows never go back to the old state after it;
* canary: the share of keys on the canary is its fraction (+- a few
  points), the keys are exactly those models/routing.py puts there, and no
  key is ever split between versions;
* shadow: rows carry both scores, each equal to its version's offline score;
* every event is scored exactly once across every switch;
* the gate refuses a worse candidate (exit 1, nothing published), the CLI
  and the job refuse a corrupt version, the guard rolls back a canary that
  underperforms live.
"""

import collections
import contextlib
import threading
import time

import numpy as np
import orjson
import pytest
from confluent_kafka import Producer

import model_fixtures as mf
import turbine_fixtures as tf_
from beam_jobs import score_stream
from kafka_helpers import read_topic
from models import control_topic as ct
from models import deploy
from models import deployments as dep
from models import examples_io, routing, susy
from models.handler import release_models

pytestmark = [pytest.mark.it, pytest.mark.slow]

RATE = 400.0
# From a record's acknowledgement to the first row scored under it: the
# follower's fetch (~0.1 s), loading new versions, the pipeline's latency,
# on a busy 2-core machine.
SWITCH_DEADLINE_S = 8.0
PHASE_S = 7.0


class _Producer(threading.Thread):
  """Produces encoded events (``.key``, ``.value``, ``.timestamp_ms``) at
  their event times until stopped or exhausted."""

  def __init__(self, broker, topic: str, events):
    super().__init__(daemon=True)
    self._broker, self._topic, self._events = broker, topic, events
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

      for key, value, ts_ms in self._events:
        if self._stop_event.is_set():
          break
        wait = ts_ms / 1000.0 - time.time()
        if wait > 0:
          producer.poll(0)
          time.sleep(wait)
        producer.produce(self._topic, key=key, value=value, timestamp=ts_ms,
                         on_delivery=on_delivery)
        self.produced += 1
      self.failed += producer.flush(30)
    except Exception as e:  # pylint: disable=broad-except
      self.error = e


@pytest.fixture(autouse=True)
def _release_models():
  yield
  release_models()  # the jobs' control topic followers stop with the test


def _job_args(broker, topics, model_root, *extra):
  args = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'],
          '--consumer_group', f'g-{topics["in"]}', '--start', 'earliest',
          '--model_dir', model_root, '--control_topic', topics['ctl'],
          '--window_size_s', '5', '--idle_timeout_s', '1']
  args += [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
           if k != 'bootstrap.servers']
  return args + list(extra)


def _cli(broker, topics, model_root, capsys, *argv) -> tuple[int, str]:
  """Runs python -m models.deploy in-process; returns (status, output)."""
  args = list(argv) + ['--bootstrap_servers', broker.bootstrap_servers,
                       '--control_topic', topics['ctl']]
  if argv[0] not in ('status', 'guard', 'history', 'list'):
    args += ['--actor', 'test@ci']
  if model_root and argv[0] not in ('status', 'guard', 'history'):
    args += ['--model_dir', model_root]
  args += [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
           if k not in ('bootstrap.servers',)]
  status = deploy.main(args)
  out = capsys.readouterr()
  text = out.out + out.err
  print(f'$ models.deploy {" ".join(argv)}\n{text}', end='')
  return status, text


def _topics(make_topic) -> dict:
  return {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
          'dlq': make_topic(1, suffix='-dlq'),
          'ctl': make_topic(1, suffix='-ctl',
                            config=dict(ct.TOPIC_CONFIG))}


@contextlib.contextmanager
def _running_job(broker, topics, args, producer):
  result = score_stream.run(args, block=False)
  producer.start()
  try:
    yield result
  finally:
    producer.stop()
    # The job catches up with what was produced before it stops reading.
    try:
      _wait_for_rows(broker, topics['out'], producer.produced)
    finally:
      result.stop_reading()
      result.wait_until_finish()


def _wait_for_rows(broker, topic, n, timeout_s=90):
  deadline = time.monotonic() + timeout_s
  from transforms.kafka import admin
  while time.monotonic() < deadline:
    if sum(admin.end_offsets(broker.client_config(), topic).values()) >= n:
      return
    time.sleep(0.2)
  raise AssertionError(f'{topic}: fewer than {n} rows in {timeout_s} s')


class Phase:
  """A deployment state from ``start`` (its record's acknowledgement) to
  the next phase's start, and how to tell its rows."""

  def __init__(self, name, start, primary, canary=None, fraction=0.0,
               shadow=None):
    self.name, self.start = name, start
    self.primary, self.canary, self.fraction = primary, canary, fraction
    self.shadow = shadow

  def expects(self, row) -> bool:
    """Whether ``row`` was scored under this state."""
    key = row['key']
    to_canary = self.canary is not None and routing.in_canary(
        key or row['event_id'], self.fraction)
    version, role = ((self.canary, 'canary') if to_canary else
                     (self.primary, 'primary'))
    return (row['model_version'] == version and row['model_role'] == role
            and row['shadow_version'] == self.shadow)


def _check_phases(rows, phases, end):
  """Switch latency per phase (to its first row that the state before could
  not have scored), and no row of an old state after a switch. Returns
  [(phase, latency)]."""
  ordered = sorted(rows, key=lambda r: r['scored_time'])
  latencies = []
  for i, phase in enumerate(phases):
    until = phases[i + 1].start if i + 1 < len(phases) else end
    window = [r for r in ordered if phase.start <= r['scored_time'] < until]
    before = phases[i - 1] if i else None
    first = next((j for j, r in enumerate(window) if phase.expects(r) and (
        before is None or not before.expects(r))), None)
    assert first is not None, f'{phase.name}: never served'
    latency = window[first]['scored_time'] - phase.start if i else 0.0
    assert latency <= SWITCH_DEADLINE_S, (phase.name, latency)
    stray = [r for r in window[first:] if not phase.expects(r)]
    assert not stray, (phase.name, stray[:3])
    if before is not None:
      assert all(before.expects(r) for r in window[:first]), phase.name
    latencies.append((phase.name, latency))
  return latencies


def _exactly_once(rows, produced_ids):
  by_id = collections.Counter(r['event_id'] for r in rows)
  missing = set(produced_ids) - set(by_id)
  assert not missing, sorted(missing)[:10]
  assert max(by_id.values()) == 1, by_id.most_common(3)
  assert set(by_id) == set(produced_ids)


# --- The demo domain: gate, canary, shadow, promote, rollback, guard ---------


def _susy_weights() -> np.ndarray:
  """A linear model that ranks SUSY events well (Fisher's discriminant)."""
  data = susy.generate(20_000, seed=3)
  x, y = data.features.astype(np.float64), data.labels
  mean_diff = x[y == 1].mean(axis=0) - x[y == 0].mean(axis=0)
  cov = np.cov(x.T) + 1e-3 * np.eye(x.shape[1])
  w = np.linalg.solve(cov, mean_diff)
  return (w / np.abs(w).max()).astype(np.float32)


@pytest.fixture(scope='module')
def susy_setup(tmp_path_factory):
  root = tmp_path_factory.mktemp('deploy')
  models = str(root / 'models')
  good = _susy_weights()
  weights = {1: good, 2: good * 1.5, 3: good * 0.5 + 0.05, 4: -good}
  for version, w in weights.items():
    mf.write_versioned(models, version, weights=w)
  mf.write_corrupt_version(models, 5)
  data = str(root / 'spans')
  examples_io.write_span(data, 0, {
      'train': susy.generate(2000, seed=21),
      'eval': susy.generate(8000, seed=22)})
  return {'models': models, 'weights': weights, 'data': data}


def test_canary_shadow_gate_promote_rollback_guard_on_a_running_job(
    broker, make_topic, susy_setup, capsys):
  models, weights = susy_setup['models'], susy_setup['weights']
  topics = _topics(make_topic)
  cli = lambda *a: _cli(broker, topics, models, capsys, *a)  # pylint: disable=unnecessary-lambda-assignment

  # Before the job: a deployment must exist; the first one is a pin.
  status, text = cli('pin', '1', '--reason', 'first model')
  assert status == 0, text
  keys = [f'det-{i}' for i in range(500)]
  start = time.time() + 1
  events = ((e.key, e.value, e.timestamp_ms) for e in susy.iter_encoded_events(
      10_000_000, seed=41, start_time=start, rate=RATE, keys=keys,
      chunk_rows=256))
  producer = _Producer(broker, topics['in'], events)
  phases = []
  published = {}
  with _running_job(broker, topics, _job_args(broker, topics, models),
                    producer) as result:
    _wait_for_rows(broker, topics['out'], 400)
    phases.append(Phase('pin 1', 0.0, primary=1))

    def change(name, *argv, expect=0, **state):
      status, text = cli(*argv)
      assert status == expect, text
      if expect == 0:
        phases.append(Phase(name, time.time(), **state))
      published[name] = text
      time.sleep(PHASE_S)
      return text

    change('canary 2 20%', 'canary', '2', '--fraction', '0.2', primary=1,
           canary=2, fraction=0.2)
    change('shadow 3', 'shadow', '3', primary=1, canary=2, fraction=0.2,
           shadow=3)
    # A worse candidate: refused by the gate, nothing published.
    refused = change('promote 4 (refused)', 'promote', '4', '--data',
                     susy_setup['data'], expect=1)
    assert 'decision: refuse' in refused and 'refused by the gate' in refused
    # The canary's version: as good, so promoted; the canary ends.
    promoted = change('promote 2', 'promote', '--data', susy_setup['data'],
                      primary=2, shadow=3)
    assert 'decision: accept' in promoted
    change('rollback', 'rollback', primary=1, canary=2, fraction=0.2,
           shadow=3)
    # A corrupt version: the CLI refuses it ...
    status, text = cli('pin', '5')
    assert status == 2 and 'version 5 does not load' in text, text
    # ... and a job given it anyway (a record written by other means)
    # refuses it and keeps serving.
    control = ct.ControlTopic(broker.client_config(), topics['ctl'])
    current = control.latest('default')
    control.publish(current.successor(primary=5, action=dep.PIN,
                                      reason='corrupt, written directly'))
    time.sleep(PHASE_S)
    # Back to the record before it (what the job kept serving all along).
    status, text = cli('rollback')
    assert status == 0, text
    # A worse canary, caught by the guard on live labels.
    change('canary 4 50%', 'canary', '4', '--fraction', '0.5', primary=1,
           canary=4, fraction=0.5, shadow=3)
    status, guard_text = cli('guard', '--output_topic', topics['out'],
                             '--once', '--min_count', '300', '--margin',
                             '0.05')
    assert status == 0 and 'canary rolled back' in guard_text, guard_text
    phases.append(Phase('guard rollback', time.time(), primary=1, shadow=3))
    time.sleep(PHASE_S)
    status, status_text = cli('status', '--output_topic', topics['out'],
                              '--window_s', '600')
    assert status == 0
    end = time.time()
  assert producer.error is None and producer.failed == 0
  n = producer.produced
  assert n >= RATE * 40, n

  rows = [orjson.loads(m.value()) for m in read_topic(broker, topics['out'],
                                                      n)]
  _exactly_once(rows, {f'e{i}' for i in range(n)})
  latencies = _check_phases(rows, phases, float('inf'))

  # Scores: each row's version offline, the shadow's beside it.
  data = susy.generate(n, seed=41)
  offline = {v: mf.scores_of(data.features, w) for v, w in weights.items()}
  for r in rows:
    i = int(r['event_id'][1:])
    assert abs(r['score'] - offline[r['model_version']][i]) <= 1e-5, r
    if r['shadow_version'] is not None:
      assert abs(r['shadow_score'] - offline[3][i]) <= 1e-5, r

  # Canary at 20%: the keys routing puts there, +- a few points, none split.
  # Phases 1 (canary) and 2 (shadow added) route the same; together they
  # last longer than the switch deadline even when the CLI is quick.
  canary_phase = phases[1]
  assert (phases[1].canary, phases[2].canary) == (2, 2)
  in_phase = [r for r in rows if canary_phase.start + SWITCH_DEADLINE_S
              <= r['scored_time'] < phases[3].start]
  assert in_phase, 'no rows scored during the canary'
  versions_by_key = collections.defaultdict(set)
  for r in in_phase:
    versions_by_key[r['key']].add(r['model_version'])
  assert all(len(v) == 1 for v in versions_by_key.values())
  on_canary = {k for k, v in versions_by_key.items() if v == {2}}
  share = len(on_canary) / len(versions_by_key)
  assert abs(share - 0.2) <= 0.05, share
  assert on_canary == {k for k in versions_by_key
                       if routing.in_canary(k, 0.2)}
  # No key ever split between versions while a canary of 2 at 20% ran.
  split = collections.defaultdict(set)
  for p_index in (1, 2, 4):
    p = phases[p_index]
    nxt = phases[p_index + 1].start if p_index + 1 < len(phases) else end
    for r in rows:
      if p.start + SWITCH_DEADLINE_S <= r['scored_time'] < nxt:
        split[r['key']].add(r['model_version'])
  assert all(len(v) == 1 for v in split.values())

  # The records: the audit log, the gate's numbers, the corrupt refusal.
  history = ct.ControlTopic(broker.client_config(),
                            topics['ctl']).history('default')
  actions = [r.record.action for r in history]
  assert actions == ['pin', 'canary', 'shadow', 'promote', 'rollback', 'pin',
                     'rollback', 'canary', 'guard_rollback'], actions
  promote = history[3].record
  assert promote.gate['decision'] == 'accept' and promote.gate['metric'] == (
      'auc')
  assert promote.gate['candidate']['version'] == 2
  assert promote.gate['serving']['version'] == 1
  assert promote.gate['span'] == [0] and promote.gate['examples'] == 8000
  guard = history[-1].record
  assert guard.canary is None and guard.primary == 1 and guard.shadow == 3
  assert guard.gate['canary']['value'] < guard.gate['primary']['value'] - 0.05
  # The job refused version 5 (logged and counted) and kept serving.
  from apache_beam.metrics.metric import MetricsFilter
  refused_count = sum(c.committed for c in result.metrics().query(
      MetricsFilter().with_name('model_versions_refused'))['counters'])
  assert refused_count >= 1
  assert not [r for r in rows if r['model_version'] == 5]
  assert 'canary' in status_text and 'shadow' in status_text
  print(f'\n{n} events, {len(rows)} predictions; switch latency per phase: '
        + ', '.join(f'{name} {lat:.2f} s' for name, lat in latencies)
        + f'; canary share of keys {share:.3f} ({len(on_canary)} of '
        f'{len(versions_by_key)})\n{status_text}')


# --- A non-demo domain: turbines, named model inputs -------------------------


TURBINES = [f'turbine-{i}' for i in range(300)]
T_WEIGHTS = {1: (tf_.WEIGHTS, tf_.BIAS), 2: (tf_.WEIGHTS * -1.0, 0.5),
             3: (tf_.WEIGHTS * 0.5, -0.5)}


def _readings(start: float, rate: float):
  i = 0
  while True:
    doc = tf_.reading(i, start + i / rate, TURBINES[(i * 7) % len(TURBINES)])
    yield (doc['reading_id'].encode(), tf_.encode(doc), doc['ts_ms'])
    i += 1


def test_turbine_canary_and_shadow_follow_the_control_topic(
    broker, make_topic, tmp_path, capsys):
  models = str(tmp_path / 'models')
  for version, (w, b) in T_WEIGHTS.items():
    tf_.write_model(models, version, weights=w, bias=b)
  schema = tf_.write_schema(str(tmp_path))
  topics = _topics(make_topic)
  cli = lambda *a: _cli(broker, topics, models, capsys, *a)  # pylint: disable=unnecessary-lambda-assignment
  common = ('--deployment', 'turbines', '--schema', schema)
  assert cli('pin', '1', *common)[0] == 0
  producer = _Producer(broker, topics['in'], _readings(time.time() + 1, RATE))
  phases = [Phase('pin 1', 0.0, primary=1)]
  args = _job_args(broker, topics, models, '--schema', schema,
                   '--deployment', 'turbines', '--max_delay_s', '0')
  with _running_job(broker, topics, args, producer):
    _wait_for_rows(broker, topics['out'], 400)
    for name, argv, state in (
        ('canary 2 30%', ('canary', '2', '--fraction', '0.3'),
         dict(primary=1, canary=2, fraction=0.3)),
        ('shadow 3', ('shadow', '3'),
         dict(primary=1, canary=2, fraction=0.3, shadow=3)),
        ('rollback', ('rollback',), dict(primary=1, canary=2, fraction=0.3)),
        ('canary off', ('canary', '--off'), dict(primary=1))):
      extra = common if argv[0] != 'rollback' else common[:2]
      status, text = cli(*argv, *extra)
      assert status == 0, text
      phases.append(Phase(name, time.time(), **state))
      time.sleep(PHASE_S)
    end = time.time()
  n = producer.produced
  assert producer.error is None and producer.failed == 0 and n > RATE * 20
  rows = [orjson.loads(m.value()) for m in read_topic(broker, topics['out'],
                                                      n)]
  _exactly_once(rows, {f'r{i}' for i in range(n)})
  latencies = _check_phases(rows, phases, float('inf'))
  docs = {}
  for r in rows:
    i = int(r['event_id'][1:])
    doc = docs.get(i) or tf_.reading(i, 0.0, r['key'])
    w, b = T_WEIGHTS[r['model_version']]
    assert abs(r['score'] - tf_.expected_score(doc, w, b)) <= 1e-5, r
    if r['shadow_version'] is not None:
      w3, b3 = T_WEIGHTS[3]
      assert abs(r['shadow_score'] - tf_.expected_score(doc, w3, b3)) <= 1e-5
  canary_rows = [r for r in rows if phases[1].start + SWITCH_DEADLINE_S <=
                 r['scored_time'] < phases[3].start]
  keys = {r['key'] for r in canary_rows}
  on_canary = {r['key'] for r in canary_rows if r['model_role'] == 'canary'}
  assert on_canary == {k for k in keys if routing.in_canary(k, 0.3)}
  assert abs(len(on_canary) / len(keys) - 0.3) <= 0.07
  print(f'\nturbines: {n} readings, {len(rows)} predictions; '
        + ', '.join(f'{name} {lat:.2f} s' for name, lat in latencies)
        + f'; canary keys {len(on_canary)}/{len(keys)}')
