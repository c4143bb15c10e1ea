"""Online learning on a drifting stream, on a real broker.

Version 1 is trained offline on undrifted data (models/train.py). The topic
then carries a stream whose concept drifts (models/susy.py): undrifted for
4096 events, a ramp to full drift over the next 4096, fully drifted after.
models/online.py learns from it in one pass and exports a version every
16 mini-batches of 256. Accuracy on recent data drops after the drift and
recovers over the exported versions; the test measures it on held-out data
and asserts a recovery of at least 10 points.

Set KBI_ONLINE_CURVE_JSON=path to keep the curve document, e.g. for
``python -m models.report --online path --out docs/online_learning_curve.png``.
"""

import json
import os

import orjson
import pytest

from models import examples_io, online, report, susy, train, versions
from transforms.kafka import admin

pytestmark = [pytest.mark.it, pytest.mark.slow]

N_STREAM = 40_960
DRIFT_START, DRIFT_END = 4096, 8192
BATCH = 256
EXPORT_EVERY = 16
N_UNLABELLED = 5


@pytest.fixture(scope='module')
def version_1(tmp_path_factory):
  """mlp_small trained offline on undrifted data, exported as version 1."""
  data = str(tmp_path_factory.mktemp('data'))
  examples_io.write_span(data, 0, {'train': susy.generate(20_000, seed=41),
                                   'eval': susy.generate(5_000, seed=43)})
  model_dir = str(tmp_path_factory.mktemp('models'))
  results = train.train_and_export(data, model_dir, ['mlp_small'], epochs=3)
  assert results[0].version == 1
  return model_dir


def test_accuracy_drops_after_drift_and_recovers_over_versions(
    broker, make_topic, version_1, tmp_path):
  model_dir = version_1
  # One partition: mini-batches follow the stream's order (with several,
  # they follow the consumer's fetch order across partitions).
  topic, dlq = make_topic(1), make_topic(1, suffix='-dlq')
  malformed = {}
  stats = susy.produce(
      broker.bootstrap_servers, topic, n=N_STREAM, rate=0, seed=42,
      drift=susy.drift_ramp(DRIFT_START, DRIFT_END),
      malformed_fraction=0.002, producer_config=broker.client_config(),
      on_malformed=lambda e: malformed.__setitem__(e.key.decode(), 1))
  assert stats['failed'] == 0
  unlabelled = susy.to_events(susy.generate(N_UNLABELLED, seed=44),
                              start_index=N_STREAM)
  from confluent_kafka import Producer
  producer = Producer(broker.client_config())
  for event in unlabelled:
    del event['label']
    producer.produce(topic, key=event['event_id'].encode(),
                     value=orjson.dumps(event))
  assert producer.flush(10) == 0

  group = f'online-{topic}'
  kafka_config = {k: v for k, v in broker.client_config().items()
                  if k != 'bootstrap.servers'}
  result = online.run(broker.bootstrap_servers, topic, model_dir,
                      group=group, batch_size=BATCH,
                      export_every=EXPORT_EVERY, idle_timeout_s=3.0,
                      dead_letter_topic=dlq, kafka_config=kafka_config)

  n_labelled = N_STREAM - len(malformed)
  assert result.warm_start_version == 1
  assert result.examples == n_labelled
  assert result.skipped == len(malformed) + N_UNLABELLED
  n_versions = -(-n_labelled // (BATCH * EXPORT_EVERY))
  assert result.versions == list(range(2, 2 + n_versions))
  # Single pass, offsets committed after each applied batch.
  config = broker.client_config()
  assert admin.committed_offsets(config, group, topic) == admin.end_offsets(
      config, topic)
  from kafka_helpers import read_topic
  skipped = read_topic(broker, dlq, result.skipped)
  assert len(skipped) == result.skipped
  for version in result.versions:
    metrics = versions.read_metrics(versions.version_dir(model_dir, version))
    assert metrics['online'] is True and metrics['config'] == (
        'mlp_small+online')
    assert metrics['warm_start_version'] == 1

  doc = {'warm_start_version': result.warm_start_version,
         'history': result.history,
         'shade': [{'from': DRIFT_START, 'to': DRIFT_END,
                    'label': 'stream drifts (ramp 0 -> 1)'}]}
  report.attach_heldout(doc, model_dir, {
      'drift 1': susy.generate(20_000, seed=99, drift=1.0),
      'drift 0': susy.generate(20_000, seed=99, drift=0.0)})
  print(f'\nonline learning: {result.batches} batches, {result.examples} '
        f'examples, {result.skipped} skipped, {len(result.versions)} '
        f'versions in {result.seconds:.1f} s\n' + report.format_curve(doc))
  if os.environ.get('KBI_ONLINE_CURVE_JSON'):
    with open(os.environ['KBI_ONLINE_CURVE_JSON'], 'w') as f:
      json.dump(doc, f, indent=2)
  png = report.plot_online_curve(doc, str(tmp_path / 'curve.png'))
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'

  drifted, reference = doc['heldout']['drift 1'], doc['heldout']['drift 0']
  last = str(result.versions[-1])
  # Version 1 is good before the drift and poor after it.
  assert reference['1'] >= 0.74
  assert drifted['1'] <= reference['1'] - 0.15
  # The last version recovers on drifted data by at least 10 points.
  assert drifted[last] >= drifted['1'] + 0.10, (drifted['1'], drifted[last])
  # On recent stream data (prequential): good on the undrifted first
  # window, a drop during the drift, and recovered at the end.
  prequential = [e['accuracy'] for e in result.history]
  assert prequential[0] >= 0.74
  assert min(prequential[1:3]) <= prequential[0] - 0.05
  assert prequential[-1] >= min(prequential) + 0.10

  # A second pass with the same group finds nothing new: no new version.
  assert online.main(['--bootstrap_servers', broker.bootstrap_servers,
                      '--topic', topic, '--group', group, '--model_dir',
                      model_dir, '--idle_timeout_s', '2']
                     + [f'--kafka_config={k}={v}'
                        for k, v in kafka_config.items()]) == 0
  assert versions.latest_version(model_dir) == result.versions[-1]
