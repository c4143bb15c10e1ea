"""SavedModelHandler: every SavedModel kind, hot swap, per-row failures."""

import shutil

import numpy as np
import pytest

import model_fixtures as mf
from models import susy
from models.handler import ModelLoadError, SavedModelHandler
from transforms.events import EventBatch

NAMES = list(susy.FEATURE_NAMES)


def batch_of(features: np.ndarray, prefix='e') -> EventBatch:
  n = len(features)
  return EventBatch(
      source='kafka:t/0', positions=np.arange(n), raw=[b'x'] * n,
      ids=[f'{prefix}{i}' for i in range(n)], keys=['k'] * n,
      event_time=np.full(n, 1.7e9), features=features.astype(np.float32),
      window_values=np.zeros((n, 0), np.float32), labels=None,
      read_time=np.zeros(n))


def score(handler: SavedModelHandler, batches):
  model = handler.load_model()
  return list(handler.run_inference(batches, model)), model


@pytest.fixture(scope='module')
def rows():
  return np.random.default_rng(0).normal(size=(50, 18)).astype(np.float32)


@pytest.mark.parametrize('kind', ['module_tensor', 'keras_export',
                                  'module_dict', 'our_export'])
def test_each_savedmodel_kind_scores_like_the_math(kind, rows, tmp_path):
  path = str(tmp_path / kind)
  signature = 'serving_default'
  if kind == 'module_tensor':
    mf.write_module_tensor(path)
  elif kind == 'keras_export':
    mf.write_keras_export(path)
  elif kind == 'module_dict':
    mf.write_module_dict(path, NAMES)
  else:
    # models/export.py on a Keras model: tensor and tf.Example signatures.
    import keras
    from models import export
    inputs = keras.Input(shape=(18,))
    dense = keras.layers.Dense(1, activation='sigmoid', use_bias=False)
    model = keras.Model(inputs, dense(inputs))
    dense.set_weights([mf.WEIGHTS[:, None]])
    root = str(tmp_path / 'models')
    export.export_model(model, root, feature_names=NAMES, metrics={
        'accuracy': 0.5, 'auc': 0.5, 'loss': 1.0, 'examples': 1})
    path = root
  want = mf.expected_scores(rows)
  signatures = [signature] + (['serve_examples'] if kind == 'our_export'
                              else [])
  for sig in signatures:
    handler = SavedModelHandler(path, NAMES, signature=sig)
    (first, second), _ = score(handler, [batch_of(rows[:20]),
                                         batch_of(rows[20:])])
    got = np.concatenate([first.scores, second.scores])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert first.batch.ids[0] == 'e0' and second.errors is None
    assert first.model_version == (1 if kind == 'our_export' else 0)


def test_versioned_root_serves_latest_complete_and_hot_swaps(tmp_path, rows):
  root = str(tmp_path)
  mf.write_versioned(root, 1)
  mf.write_versioned(root, 2, complete=False)  # no metrics.json: ignored
  handler = SavedModelHandler(root, NAMES, poll_interval_s=0)
  (out,), model = score(handler, [batch_of(rows)])
  assert out.model_version == 1

  # A newer version without its variables is not complete: not loaded.
  partial = tmp_path / '5'
  (partial / 'variables').mkdir(parents=True)
  (partial / 'saved_model.pb').write_bytes(b'not yet')
  (partial / 'metrics.json').write_text('{}')
  # A complete-looking but corrupt newer version is refused; version 1
  # keeps serving.
  bad = tmp_path / '3'
  (bad / 'variables').mkdir(parents=True)
  (bad / 'variables' / 'variables.index').write_bytes(b'garbage')
  (bad / 'saved_model.pb').write_bytes(b'not a protobuf')
  (bad / 'metrics.json').write_text('{}')
  (out,) = handler.run_inference([batch_of(rows)], model)
  assert out.model_version == 1
  assert 3 in model._refused  # pylint: disable=protected-access
  assert 5 not in model._refused  # pylint: disable=protected-access
  shutil.rmtree(partial)

  # A complete newer version is swapped in between two batches.
  mf.write_versioned(root, 4)
  (out,) = handler.run_inference([batch_of(rows)], model)
  assert out.model_version == 4
  np.testing.assert_allclose(out.scores, mf.expected_scores(rows), rtol=1e-5)


def test_a_row_that_makes_the_model_raise_fails_alone(tmp_path, rows):
  path = mf.write_module_tensor(str(tmp_path / 'm'), raise_above=100.0)
  bad_rows = rows[:10].copy()
  bad_rows[3, 5] = 1000.0
  handler = SavedModelHandler(path, NAMES)
  (clean, mixed), _ = score(handler, [batch_of(rows[10:20], 'c'),
                                      batch_of(bad_rows, 'm')])
  assert clean.errors is None
  np.testing.assert_allclose(clean.scores, mf.expected_scores(rows[10:20]),
                             rtol=1e-5)
  assert [i for i, e in enumerate(mixed.errors) if e] == [3]
  assert 'feature too large' in mixed.errors[3]
  ok = np.arange(10) != 3
  np.testing.assert_allclose(mixed.scores[ok],
                             mf.expected_scores(bad_rows)[ok], rtol=1e-5)


def test_missing_model_and_wrong_signature_fail_clearly(tmp_path):
  with pytest.raises(ModelLoadError, match='no SavedModel at .*nowhere'):
    SavedModelHandler(str(tmp_path / 'nowhere'), NAMES).validate()
  path = mf.write_module_tensor(str(tmp_path / 'm'))
  with pytest.raises(ModelLoadError, match=r"no signature 'predict'.*"
                     r"serving_default"):
    SavedModelHandler(path, NAMES, signature='predict').validate()
  with pytest.raises(ModelLoadError, match='takes 18 features; the features '
                     'of --schema are 3'):
    SavedModelHandler(path, NAMES[:3]).validate()
  named = mf.write_module_dict(str(tmp_path / 'named'), NAMES)
  with pytest.raises(ModelLoadError, match=r"none for the --schema features "
                     r"\['x'\].*--model_signature"):
    SavedModelHandler(named, NAMES[:17] + ['x']).validate()
  with pytest.raises(ModelLoadError, match=r"no output 'p' \(--model_output"):
    SavedModelHandler(named, NAMES, output_key='p').validate()
  text = SavedModelHandler(path, NAMES).validate()
  assert 'tensor input' in text and "'score'" in text


def test_batches_are_weighed_in_rows(tmp_path):
  handler = SavedModelHandler(str(tmp_path), NAMES, min_batch_rows=64,
                              max_batch_rows=4096)
  kwargs = handler.batch_elements_kwargs()
  assert (kwargs['min_batch_size'], kwargs['max_batch_size']) == (64, 4096)
  assert kwargs['element_size_fn'](batch_of(np.zeros((7, 18)))) == 7
  # BatchElements accepts exactly these (2.77 has no max_batch_weight).
  import apache_beam as beam
  beam.BatchElements(**kwargs)
  with pytest.raises(ValueError, match='min_batch_rows 10 > max'):
    SavedModelHandler(str(tmp_path), NAMES, min_batch_rows=10,
                      max_batch_rows=5)


def _direct_examples(features: np.ndarray, ids) -> list:
  """tf.Examples built with protobuf, independently of the handler."""
  import tensorflow as tf
  out = []
  for row, eid in zip(features.tolist(), ids):
    ex = tf.train.Example()
    for name, value in zip(NAMES, row):
      ex.features.feature[name].float_list.value.append(value)
    ex.features.feature['detector'].bytes_list.value.append(b'k')
    ex.features.feature['event_id'].bytes_list.value.append(eid.encode())
    out.append(ex.SerializeToString())
  return out


@pytest.fixture(scope='module')
def tfx_models(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfx')
  return {'examples': mf.write_tfx_examples(str(root / 'examples'), NAMES),
          'tf1': mf.write_classify_regress(str(root / 'tf1'), NAMES)}


@pytest.mark.parametrize('model_handler', ['savedmodel', 'tfx_bsl'])
def test_tfx_trainer_style_model_scores_like_direct_calls(
    tfx_models, rows, model_handler):
  """serving_default takes serialized tf.Examples (label not parsed): the
  handler detects it and scores what a direct call on the same examples
  gives."""
  import tensorflow as tf
  path = tfx_models['examples']
  handler = SavedModelHandler(path, NAMES, model_handler=model_handler)
  assert 'examples input' in handler.validate()
  (first, second), _ = score(handler, [batch_of(rows[:20]),
                                       batch_of(rows[20:], 'f')])
  fn = tf.saved_model.load(path).signatures['serving_default']
  ids = [f'e{i}' for i in range(20)] + [f'f{i}' for i in range(30)]
  direct = fn(examples=tf.constant(_direct_examples(rows, ids)))[
      'outputs'].numpy()[:, 0]
  got = np.concatenate([first.scores, second.scores])
  np.testing.assert_allclose(got, direct, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got, mf.expected_scores(rows), rtol=1e-5)


@pytest.mark.parametrize('model_handler', ['savedmodel', 'tfx_bsl'])
@pytest.mark.parametrize('signature', ['classification', 'regression',
                                       'serving_default'])
def test_classify_and_regress_signatures_score_the_positive_class(
    tfx_models, rows, signature, model_handler):
  import tensorflow as tf
  path = tfx_models['tf1']
  handler = SavedModelHandler(path, NAMES, signature=signature,
                              model_handler=model_handler)
  text = handler.validate()
  if model_handler == 'savedmodel':
    assert ("'outputs'" if signature == 'regression' else "'scores'") in text
  (out,), _ = score(handler, [batch_of(rows)])
  fn = tf.saved_model.load(path).signatures[signature]
  direct = fn(inputs=tf.constant(_direct_examples(
      rows, [f'e{i}' for i in range(50)])))
  want = (direct['outputs'].numpy()[:, 0] if signature == 'regression' else
          direct['scores'].numpy()[:, 1])
  np.testing.assert_allclose(out.scores, want, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(out.scores, mf.expected_scores(rows), rtol=1e-5)


def test_tfx_bsl_handler_refuses_models_it_cannot_serve_clearly(tmp_path):
  path = mf.write_module_tensor(str(tmp_path / 'tensor'))
  with pytest.raises(ModelLoadError, match=r'tfx-bsl cannot serve signature '
                     r"'serving_default' .*one string tensor of serialized "
                     r'tf.Examples.*--model_handler savedmodel'):
    SavedModelHandler(path, NAMES, model_handler='tfx_bsl').validate()
  with pytest.raises(ValueError, match='--model_handler'):
    SavedModelHandler(path, NAMES, model_handler='keras')


def test_examples_carry_window_columns_when_the_events_have_them(tfx_models):
  from transforms import example_coder
  handler = SavedModelHandler(tfx_models['examples'], NAMES,
                              window_features=NAMES[:2])
  loaded = handler.load_model().current
  plain = batch_of(np.ones((3, 18)))
  windowed = batch_of(np.ones((3, 18)))
  windowed.window = (10.0, 15.0)
  windowed.win_count = np.array([1, 2, 3])
  windowed.win_mean = np.zeros((3, 2), np.float32)
  windowed.win_std = np.zeros((3, 2), np.float32)
  without, with_window = (example_coder.decode_dicts(loaded.examples([b]))
                          for b in (plain, windowed))
  assert 'win_count' not in without[0] and 'label' not in without[0]
  assert without[0]['event_id'] == 'e0' and without[0]['detector'] == 'k'
  assert [d['win_count'] for d in with_window] == [1, 2, 3]
  assert with_window[0]['window_start_ms'] == 10_000
  assert with_window[0]['win_mean_' + NAMES[1]] == 0.0
