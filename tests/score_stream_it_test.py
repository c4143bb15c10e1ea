"""The scoring job end to end on a real broker, with a real SavedModel."""

import collections

import orjson
import pytest
import tensorflow as tf

import model_fixtures as mf
from beam_jobs import score_stream
from kafka_helpers import read_topic
from models import susy

pytestmark = pytest.mark.it

N_EVENTS = 10_000


@pytest.fixture(scope='module')
def model_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('models')
  mf.write_versioned(str(root), 3)
  return str(root)


def _job_args(broker, topics, model_root, *extra):
  args = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'],
          '--consumer_group', f'g-{topics["in"]}', '--start', 'earliest',
          '--model_dir', model_root, '--window_size_s', '5']
  args += [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
           if k != 'bootstrap.servers']
  return args + list(extra)


def test_ten_thousand_events_one_percent_malformed(broker, make_topic,
                                                   model_root):
  topics = {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  malformed = {}
  stats = susy.produce(
      broker.bootstrap_servers, topics['in'], n=N_EVENTS, rate=0, seed=11,
      malformed_fraction=0.01, producer_config=broker.client_config(),
      on_malformed=lambda e: malformed.__setitem__(e.key.decode(),
                                                   e.malformed))
  assert stats['produced'] == N_EVENTS and stats['failed'] == 0
  assert 50 <= len(malformed) <= 150

  result = score_stream.run(_job_args(broker, topics, model_root,
                                      '--max_records', str(N_EVENTS)))
  assert str(result.state) == 'DONE'
  # The end-of-run summary, from the job's own counters and the group.
  s = result.summary
  assert (s.records_read, s.events_scored, s.dead_letters) == (
      N_EVENTS, N_EVENTS - len(malformed), len(malformed))
  assert s.balanced and s.model_versions == {3: N_EVENTS - len(malformed)}
  assert set(s.dead_letter_reasons) <= {
      'malformed', 'missing_field', 'wrong_type', 'not_an_object'}
  assert (s.offsets.committed, s.offsets.lag) == (N_EVENTS, 0)
  print('\n' + s.format())

  predictions = [orjson.loads(m.value()) for m in read_topic(
      broker, topics['out'], N_EVENTS - len(malformed))]
  dead = read_topic(broker, topics['dlq'], len(malformed))
  by_id = collections.Counter(p['event_id'] for p in predictions)
  valid_ids = {f'e{i}' for i in range(N_EVENTS)} - set(malformed)
  assert set(by_id) == valid_ids
  assert max(by_id.values()) == 1, 'an event was scored twice'
  dead_ids = {m.key().decode(): dict(m.headers()) for m in dead}
  assert len(dead) == len(malformed) == len(dead_ids)
  assert set(dead_ids) == set(malformed)
  for eid, headers in dead_ids.items():
    assert headers['dlq.stage'] in (b'parse', b'validate')
    assert headers['dlq.reason'], eid

  # Each score is what the model gives for that event offline.
  data = susy.generate(N_EVENTS, seed=11)
  signature = tf.saved_model.load(f'{model_root}/3').signatures[
      'serving_default']
  offline = signature(features=tf.constant(data.features))['score'].numpy()
  for p in predictions:
    i = int(p['event_id'][1:])
    assert abs(p['score'] - float(offline[i])) <= 1e-6, p['event_id']
    assert p['model_version'] == 3
    assert p['window_end'] - p['window_start'] == 5.0
    assert p['window_start'] <= p['event_time'] < p['window_end']
    assert p['win_count'] >= 1
    assert p['scored_time'] >= p['read_time'] > 0
  print(f'\nscore_stream: {N_EVENTS} events -> {len(predictions)} '
        f'predictions (one per valid id, offline scores within 1e-6), '
        f'{len(dead)} dead letters (every malformed one)')
  # The group's offsets are committed: nothing left to read.
  from transforms.kafka import admin
  config = broker.client_config()
  assert admin.committed_offsets(config, f'g-{topics["in"]}', topics['in']) \
      == admin.end_offsets(config, topics['in'])


def test_bad_flags_fail_before_the_pipeline_starts_naming_the_flag(
    broker, model_root, tmp_path):
  base = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', 'x', '--output_topic', 'y',
          '--dead_letter_topic', 'z', '--model_dir', model_root]
  cases = [
      (['--window', 'sliding'], '--window_period_s is required'),
      (['--window_size_s', '-3'], '--window_size_s'),
      (['--start', 'yesterday'], '--start'),
      (['--max_batch_size', '0'], '--max_batch_size must be >= 1'),
      (['--schema', str(tmp_path / 'nope.json')], '--schema'),
      (['--max_records', '0'], '--max_records must be >= 1'),
      (['--gc_gen0_threshold', '-1'], '--gc_gen0_threshold must be >= 0'),
  ]
  for extra, message in cases:
    with pytest.raises(ValueError, match=message):
      score_stream.run(base + extra)
  with pytest.raises(ValueError, match='--dead_letter_topic is required'):
    score_stream.run(base[:6] + ['--model_dir', model_root])


def test_missing_model_fails_before_reading(broker, make_topic, tmp_path):
  from models.handler import ModelLoadError
  topic = make_topic(1)
  with pytest.raises(ModelLoadError, match='no SavedModel at'):
    score_stream.run(['--bootstrap_servers', broker.bootstrap_servers,
                      '--input_topic', topic, '--output_topic', topic,
                      '--dead_letter_topic', topic,
                      '--model_dir', str(tmp_path / 'nothing-here')])
  # Nothing was read: the group has no committed offsets.
  from transforms.kafka import admin
  assert admin.committed_offsets(broker.client_config(), 'kbi-score-stream',
                                 topic) == {0: None}


@pytest.mark.parametrize('model_handler', ['savedmodel', 'tfx_bsl'])
def test_a_tfx_style_model_is_served_with_no_code(broker, make_topic,
                                                  tmp_path, model_handler):
  """A model exported the TFX Trainer way (serving_default parses
  serialized tf.Examples, label excluded, output 'outputs' [B, 1]) is
  scored by the job as it is: the handler finds the examples input."""
  import os
  n = 2000
  root = tmp_path / 'models'
  mf.write_tfx_examples(str(root / '1'), susy.FEATURE_NAMES)
  (root / '1' / 'metrics.json').write_text('{}')
  topics = {'in': make_topic(2), 'out': make_topic(1, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  susy.produce(broker.bootstrap_servers, topics['in'], n=n, rate=0, seed=12,
               producer_config=broker.client_config())
  result = score_stream.run(_job_args(
      broker, topics, str(root), '--max_records', str(n),
      '--model_handler', model_handler))
  assert str(result.state) == 'DONE'
  predictions = [orjson.loads(m.value())
                 for m in read_topic(broker, topics['out'], n)]
  assert sorted(p['event_id'] for p in predictions) == sorted(
      f'e{i}' for i in range(n))
  # Direct calls of the signature on examples built here with protobuf.
  data = susy.generate(n, seed=12)
  examples = []
  for i, row in enumerate(data.features.tolist()):
    ex = tf.train.Example()
    for name, value in zip(susy.FEATURE_NAMES, row):
      ex.features.feature[name].float_list.value.append(value)
    ex.features.feature['detector'].bytes_list.value.append(
        susy.DEFAULT_KEYS[i % 4].encode())
    examples.append(ex.SerializeToString())
  direct = tf.saved_model.load(os.path.join(root, '1')).signatures[
      'serving_default'](examples=tf.constant(examples))['outputs'].numpy()
  worst = max(abs(p['score'] - float(direct[int(p['event_id'][1:]), 0]))
              for p in predictions)
  assert worst <= 1e-6
  assert {p['model_version'] for p in predictions} == {1}
  print(f'\nscore_stream --model_handler {model_handler}, TFX-style model: '
        f'{n} events -> {len(predictions)} predictions, max |score - direct '
        f'call| = {worst:.1e}; e0 {predictions[0]}')
