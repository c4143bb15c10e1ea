"""Training CLI, span data IO and versioned SavedModel export, end to end."""

import os

import numpy as np
import pytest
import tensorflow as tf

from models import examples_io, export, registry, susy, train, versions
from transforms import example_coder

_TRAIN_ROWS, _EVAL_ROWS = 20_000, 10_000


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('data'))
  examples_io.write_span(root, 0, {
      'train': susy.generate(_TRAIN_ROWS, seed=1),
      'eval': susy.generate(_EVAL_ROWS, seed=2),
  })
  return root


@pytest.fixture(scope='module')
def trained(data_root, tmp_path_factory):
  """Runs the CLI twice: mlp_small (version 1), then logreg (version 2)."""
  model_dir = str(tmp_path_factory.mktemp('models'))
  first = train.main(['--data', data_root, '--model_dir', model_dir,
                      '--config', 'mlp_small', '--epochs', '3'])
  versions_after_first = versions.list_versions(model_dir)
  second = train.main(['--data', data_root, '--model_dir', model_dir,
                       '--config', 'logreg', '--epochs', '2'])
  return {'model_dir': model_dir, 'codes': (first, second),
          'versions_after_first': versions_after_first}


def _examples(rows: np.ndarray) -> list[bytes]:
  return example_coder.Encoder().encode(
      example_coder.float_features(susy.FEATURE_NAMES, rows))


def test_first_run_exports_version_1(trained):
  model_dir = trained['model_dir']
  assert trained['codes'][0] == 0
  assert trained['versions_after_first'] == [1]
  version = os.path.join(model_dir, '1')
  assert versions.is_complete_version(version)
  metrics = versions.read_metrics(version)
  assert metrics['config'] == 'mlp_small'
  assert metrics['examples'] == _EVAL_ROWS
  assert metrics['train_examples'] == _TRAIN_ROWS
  assert metrics['span'] == 0 and metrics['spans'] == [0]
  assert metrics['code_version'] and metrics['created']
  assert metrics['accuracy'] >= 0.74, metrics
  assert 0.5 < metrics['auc'] <= 1.0 and metrics['loss'] > 0
  meta = export.read_model_meta(version)
  assert meta['feature_names'] == list(susy.FEATURE_NAMES)
  assert meta['config'] == 'mlp_small'
  assert meta['signatures']['serving_default'] == {
      'inputs': {'features': {'dtype': 'float32', 'shape': [None, 18]}},
      'outputs': {'score': {'dtype': 'float32', 'shape': [None]}}}
  assert meta['signatures']['serve_examples']['inputs'] == {
      'examples': {'dtype': 'string', 'shape': [None]}}
  # Nothing temporary left behind.
  assert not [n for n in os.listdir(model_dir) if n.startswith('.tmp-')]


def test_signatures_agree_and_match_the_metrics(trained):
  version = os.path.join(trained['model_dir'], '1')
  loaded = tf.saved_model.load(version)
  assert [n.decode() for n in loaded.feature_names.numpy()] == list(
      susy.FEATURE_NAMES)
  data = susy.generate(2000, seed=2)  # the eval rows
  dense = loaded.signatures['serving_default'](
      features=tf.constant(data.features))['score'].numpy()
  parsed = loaded.signatures['serve_examples'](
      examples=tf.constant(_examples(data.features[:500])))['score'].numpy()
  assert dense.shape == (2000,) and dense.dtype == np.float32
  np.testing.assert_allclose(parsed, dense[:500], atol=1e-5, rtol=0)
  assert np.all((dense >= 0) & (dense <= 1))
  accuracy = np.mean((dense >= 0.5) == (data.labels == 1))
  assert abs(accuracy - versions.read_metrics(version)['accuracy']) < 0.03


def test_second_config_is_version_2(trained):
  assert trained['codes'][1] == 0
  model_dir = trained['model_dir']
  assert versions.list_versions(model_dir) == [1, 2]
  assert versions.latest_version(model_dir) == 2
  assert versions.read_metrics(os.path.join(model_dir, '2'))['config'] == (
      'logreg')


def test_incomplete_version_is_not_listed(trained, tmp_path):
  import shutil
  model_dir = str(tmp_path / 'models')
  shutil.copytree(trained['model_dir'], model_dir)
  # A version being written in place (gs:// style): no metrics.json yet.
  shutil.copytree(os.path.join(model_dir, '2'), os.path.join(model_dir, '3'))
  os.remove(os.path.join(model_dir, '3', 'metrics.json'))
  os.makedirs(os.path.join(model_dir, '.tmp-4-abcdef'))
  assert not versions.is_complete_version(os.path.join(model_dir, '3'))
  assert versions.list_versions(model_dir) == [1, 2]
  assert versions.latest_version(model_dir) == 2
  # The next automatic version skips the incomplete number.
  model = registry.build('logreg', 18,
                         adapt_data=susy.generate(500).features)
  metrics = {'accuracy': 0.5, 'auc': 0.5, 'loss': 0.7, 'examples': 1}
  path = export.export_model(model, model_dir, metrics=metrics,
                             feature_names=susy.FEATURE_NAMES)
  assert path.endswith('/4')
  assert versions.list_versions(model_dir) == [1, 2, 4]
  with pytest.raises(FileExistsError):
    export.export_model(model, model_dir, version=4, metrics=metrics,
                        feature_names=susy.FEATURE_NAMES)
  with pytest.raises(ValueError, match='metrics'):
    export.export_model(model, model_dir, metrics={'accuracy': 1.0},
                        feature_names=susy.FEATURE_NAMES)
  assert versions.list_versions(str(tmp_path / 'absent')) == []
  assert versions.latest_version(str(tmp_path / 'absent')) is None


def test_no_spans_is_a_clear_error(tmp_path, capsys):
  code = train.main(['--data', str(tmp_path / 'empty'), '--model_dir',
                     str(tmp_path / 'm')])
  assert code == 2
  assert 'no spans' in capsys.readouterr().err
  code = train.main(['--data', str(tmp_path), '--model_dir',
                     str(tmp_path / 'm'), '--config', 'nope'])
  assert code == 2
  assert 'unknown config' in capsys.readouterr().err


def test_dataset_reads_all_spans_by_default(tmp_path):
  root = str(tmp_path)
  events = susy.to_events(susy.generate(30, seed=3), start_index=0)
  examples_io.write_span(root, 0, {'train': susy.generate(100, seed=1),
                                   'eval': susy.generate(40, seed=2)})
  examples_io.write_span(root, 3, {'train': events, 'eval': events[:5]},
                         shards=1)
  assert examples_io.list_spans(root) == [0, 3]
  schema = examples_io.read_schema(root, 3)
  assert examples_io.model_inputs(schema) == list(susy.FEATURE_NAMES)
  label = next(f for f in schema.feature if f.name == 'label')
  assert list(label.not_in_environment) == ['SERVING']
  # An incomplete newer version (no schema yet) is not read.
  tf.io.gfile.makedirs(examples_io.version_dir(root, 3, 1) + '/Split-train')
  assert examples_io.find_span(root, 3).version == 0

  def rows(**kwargs):
    return sum(int(y.shape[0]) for _, y in
               examples_io.make_dataset(root, 'train', batch_size=64,
                                        **kwargs))

  assert rows() == 130
  assert rows(spans=[3]) == 30
  x, y = examples_io.read_arrays(root, 'train', spans=[3], batch_size=7,
                                 num_parallel_reads=1)
  np.testing.assert_array_equal(x, susy.generate(30, seed=3).features)
  np.testing.assert_array_equal(y, susy.generate(30, seed=3).labels)
  with pytest.raises(FileNotFoundError):
    examples_io.make_dataset(root, 'train', spans=[1])
  # Records carry the id, detector and event time too.
  record = next(iter(tf.data.TFRecordDataset(
      examples_io.split_files(root, 'eval', [3]), compression_type='GZIP')))
  example = tf.train.Example.FromString(record.numpy())
  assert example.features.feature['event_id'].bytes_list.value == [b'e0']
  assert example.features.feature['detector'].bytes_list.value == [b'det-0']
  assert example.features.feature['label'].int64_list.value == [
      events[0]['label']]


def _write_legacy_span(root, span, rows_by_split):
  """A span as written before the TFX layout: <split>/*.tfrecord.gz with a
  hand-built proto per row, and schema.json."""
  import gzip
  import json
  from transforms import tfrecord
  directory = os.path.join(root, f'span-{span}')
  for split, data in rows_by_split.items():
    os.makedirs(os.path.join(directory, split))
    records = []
    for event in susy.to_events(data):
      ex = tf.train.Example()
      for name in susy.FEATURE_NAMES:
        ex.features.feature[name].float_list.value.append(event[name])
      ex.features.feature['label'].int64_list.value.append(event['label'])
      ex.features.feature['event_id'].bytes_list.value.append(
          event['event_id'].encode())
      ex.features.feature['detector'].bytes_list.value.append(
          event['detector'].encode())
      ex.features.feature['event_time'].float_list.value.append(
          event['event_time'])
      records.append(ex.SerializeToString())
    with open(os.path.join(directory, split, 'part-00000-of-00001.tfrecord.gz'),
              'wb') as f:
      f.write(gzip.compress(tfrecord.frame_all(records)))
  with open(os.path.join(directory, 'schema.json'), 'w') as f:
    json.dump({'features': list(susy.FEATURE_NAMES), 'label': 'label',
               'id': 'event_id'}, f)


def test_legacy_spans_are_still_read_beside_new_ones(tmp_path):
  root = str(tmp_path)
  legacy = susy.generate(40, seed=8)
  _write_legacy_span(root, 0, {'train': legacy, 'eval': legacy})
  examples_io.write_span(root, 1, {'train': susy.generate(60, seed=9),
                                   'eval': susy.generate(10, seed=9)})
  assert examples_io.list_spans(root) == [0, 1]
  assert examples_io.find_span(root, 0).legacy
  assert examples_io.model_inputs(examples_io.read_schema(root, 0)) == list(
      susy.FEATURE_NAMES)
  x, y = examples_io.read_arrays(root, 'train', spans=[0],
                                 num_parallel_reads=1)
  np.testing.assert_array_equal(x, legacy.features)
  np.testing.assert_array_equal(y, legacy.labels)
  assert sum(len(y) for _, y in examples_io.make_dataset(root, 'train')) == 100
  with pytest.raises(FileNotFoundError, match='legacy layout'):
    examples_io.read_statistics(root, 0, 'train')
  stats = examples_io.read_statistics(root, 1, 'train')
  assert stats.datasets[0].num_examples == 60


def test_binary_metrics_exact_auc():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 300)
  scores = np.round(rng.random(300), 1)  # many ties
  got = train.binary_metrics(labels, scores)
  pos, neg = scores[labels == 1], scores[labels == 0]
  brute = np.mean((pos[:, None] > neg[None, :])
                  + 0.5 * (pos[:, None] == neg[None, :]))
  assert got['auc'] == pytest.approx(brute, abs=1e-12)
  assert got['accuracy'] == pytest.approx(
      np.mean((scores >= 0.5) == (labels == 1)))
  assert got['examples'] == 300


def test_registry():
  assert {'mlp_small', 'logreg', 'mlp_wide'} <= set(registry.names())
  assert registry.DEFAULT_CONFIG == 'mlp_small'
  with pytest.raises(KeyError, match='known'):
    registry.get('nope')
  with pytest.raises(ValueError):
    registry.register('logreg')(lambda n: None)

  @registry.register('test_tiny', replace=True)
  def tiny(num_features, *, adapt_data=None):
    del adapt_data
    import keras  # pylint: disable=import-outside-toplevel
    model = keras.Sequential([keras.Input((num_features,)),
                              keras.layers.Dense(1, activation='sigmoid')])
    model.compile('adam', 'binary_crossentropy')
    return model

  assert registry.build('test_tiny', 4)(np.zeros((2, 4), np.float32)).shape \
      == (2, 1)
  small = registry.build('mlp_small', 18,
                         adapt_data=susy.generate(200).features)
  assert [l.__class__.__name__ for l in small.layers[1:]] == [
      'Normalization', 'Dense', 'Dropout', 'Dense', 'Dropout', 'Dense',
      'Dropout', 'Dense']
  assert [l.units for l in small.layers if hasattr(l, 'units')] == [
      128, 256, 128, 1]


def test_version_loads_in_a_tf1_session_and_as_keras(trained):
  """TF1-session loaders (tfx-bsl) can restore it; the Keras copy matches."""
  version = os.path.join(trained['model_dir'], '1')
  data = susy.generate(64, seed=2)
  expected = tf.saved_model.load(version).signatures['serving_default'](
      features=tf.constant(data.features))['score'].numpy()
  graph = tf.Graph()
  with graph.as_default(), tf.compat.v1.Session(graph=graph) as sess:
    meta_graph = tf.compat.v1.saved_model.loader.load(sess, ['serve'],
                                                      version)
    signature = meta_graph.signature_def['serving_default']
    scores = sess.run(signature.outputs['score'].name,
                      {signature.inputs['features'].name: data.features})
  np.testing.assert_allclose(scores, expected, atol=1e-5, rtol=0)
  keras_model = export.load_keras_model(version)
  np.testing.assert_allclose(
      np.asarray(keras_model(data.features, training=False)).ravel(),
      expected, atol=1e-5, rtol=0)


def _tiny_model():
  return registry.build('logreg', 18, adapt_data=susy.generate(500).features)


_METRICS = {'accuracy': 0.5, 'auc': 0.5, 'loss': 0.7, 'examples': 1}


def test_object_store_branch_writes_in_place_metrics_last():
  """Non-local URIs (gs://) write in place; ram:// runs that path here."""
  import uuid
  model_dir = f'ram://models-{uuid.uuid4().hex[:8]}'
  model = _tiny_model()
  first = export.export_model(model, model_dir, metrics=_METRICS, span=2,
                              feature_names=susy.FEATURE_NAMES)
  assert first == f'{model_dir}/1'
  second = export.export_model(model, model_dir, metrics=_METRICS,
                               feature_names=susy.FEATURE_NAMES)
  assert versions.list_versions(model_dir) == [1, 2]
  assert versions.read_metrics(first)['span'] == 2
  # Without its metrics.json (a writer still at work) a version is not listed.
  tf.io.gfile.remove(f'{second}/metrics.json')
  assert versions.list_versions(model_dir) == [1]
  scores = tf.saved_model.load(first).signatures['serving_default'](
      features=tf.zeros([3, 18]))['score'].numpy()
  assert scores.shape == (3,)


def test_concurrent_exporter_takes_the_next_version(tmp_path, monkeypatch):
  model_dir = str(tmp_path)
  model = _tiny_model()
  export.export_model(model, model_dir, metrics=_METRICS,
                      feature_names=susy.FEATURE_NAMES)
  # As if version 1 appeared between our listing and our rename.
  monkeypatch.setattr(export, '_integer_dirs', lambda unused_dir: [])
  path = export.export_model(model, model_dir, metrics=_METRICS,
                             feature_names=susy.FEATURE_NAMES)
  assert path == os.path.join(model_dir, '2')
  assert sorted(os.listdir(model_dir)) == ['1', '2']
