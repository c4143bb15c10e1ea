"""Online learning loop without a broker: export cadence, commits, warm start.

Kafka consumption is covered in online_learning_it_test.py.
"""

import numpy as np
import pytest
import tensorflow as tf

from models import export, online, susy, versions


class _Batches:
  """An in-memory stand-in for KafkaMiniBatches that logs what happens."""

  def __init__(self, batches):
    self._batches = batches
    self.log = []
    self.skipped = sum(b.skipped for b in batches)

  def __iter__(self):
    for i, batch in enumerate(self._batches):
      self.log.append(('yield', i))
      yield batch

  def commit(self, batch):
    self.log.append(('commit', dict(batch.next_offsets)))


def _batches(n, size=128, *, seed=0, drift=0.0, start=0):
  out = []
  for i in range(n):
    data = susy.generate(size, seed=seed, drift=drift,
                         start_index=start + i * size)
    out.append(online.MiniBatch(
        data.features, data.labels.astype(np.float32),
        np.full(size, 1.7e9 + i), [f'e{start + i * size + j}'
                                   for j in range(size)],
        {('t', 0): start + (i + 1) * size}))
  return out


def test_exports_every_n_batches_and_commits_after_each(tmp_path):
  root = str(tmp_path / 'models')
  source = _Batches(_batches(7))
  result = online.learn(source, root, feature_names=susy.FEATURE_NAMES,
                        config='logreg', export_every=3)
  assert result.warm_start_version is None
  assert result.versions == [1, 2, 3] and versions.list_versions(root) == [1, 2,
                                                                         3]
  assert result.batches == 7 and result.examples == 7 * 128
  # Each batch is committed before the next one is read.
  assert source.log[:4] == [('yield', 0), ('commit', {('t', 0): 128}),
                            ('yield', 1), ('commit', {('t', 0): 256})]
  assert source.log[-1] == ('commit', {('t', 0): 7 * 128})
  windows = [(e['version'], e['window_examples'], e['examples'])
             for e in result.history]
  assert windows == [(1, 384, 384), (2, 384, 768), (3, 128, 896)]
  metrics = versions.read_metrics(versions.version_dir(root, 3))
  assert metrics['online'] is True and metrics['config'] == 'logreg+online'
  assert metrics['examples'] == 128 and metrics['train_examples'] == 896
  assert 0.0 <= metrics['accuracy'] <= 1.0
  assert export.read_model_meta(versions.version_dir(root, 3))[
      'feature_names'] == list(susy.FEATURE_NAMES)


def test_warm_start_continues_the_latest_version(tmp_path):
  root = str(tmp_path / 'models')
  online.learn(_Batches(_batches(2)), root, feature_names=susy.FEATURE_NAMES,
               config='logreg', export_every=2)
  model, version, config = online.load_or_build(
      root, config='mlp_small', feature_names=susy.FEATURE_NAMES,
      first_features=None)
  assert version == 1 and config == 'logreg+online'
  probe = susy.generate(64, seed=9).features
  served = tf.saved_model.load(versions.version_dir(root, 1)).signatures[
      'serving_default'](features=tf.constant(probe))['score'].numpy()
  np.testing.assert_allclose(model.predict_on_batch(probe).reshape(-1),
                             served, atol=1e-6)
  result = online.learn(_Batches(_batches(2, start=256)), root,
                        feature_names=susy.FEATURE_NAMES, export_every=2)
  assert result.warm_start_version == 1 and result.versions == [2]
  assert versions.read_metrics(versions.version_dir(root, 2))['config'] == (
      'logreg+online')
  with pytest.raises(ValueError, match='takes features'):
    online.load_or_build(root, config='logreg',
                         feature_names=['a', 'b'], first_features=None)


def test_batches_of_skipped_records_are_committed_not_learnt(tmp_path):
  empty = online.MiniBatch(np.zeros((0, 18), np.float32),
                           np.zeros((0,), np.float32), np.zeros((0,)), [],
                           {('t', 0): 50}, skipped=50)
  source = _Batches([empty] + _batches(1, start=50))
  result = online.learn(source, str(tmp_path / 'm'),
                        feature_names=susy.FEATURE_NAMES, config='logreg',
                        export_every=5)
  assert result.examples == 128 and result.skipped == 50
  assert ('commit', {('t', 0): 50}) in source.log
  assert result.versions == [1]  # the partial run of batches, at the end


def test_reader_settings_are_checked():
  with pytest.raises(ValueError, match='group.id'):
    online.KafkaMiniBatches({'bootstrap.servers': 'x:1'}, 't')
  with pytest.raises(ValueError, match='batch_size'):
    online.KafkaMiniBatches({'group.id': 'g'}, 't', batch_size=0)
  assert online.main(['--bootstrap_servers', 'x:1', '--topic', 't',
                      '--model_dir', '/tmp/none', '--batch_size', '0']) == 2
