"""Tiny real SavedModels for tests, one per kind the handler must serve."""

import os

import numpy as np
import tensorflow as tf

WEIGHTS = np.linspace(-1.0, 1.0, 18).astype(np.float32)


def expected_scores(features: np.ndarray) -> np.ndarray:
  """What every fixture model computes: sigmoid(x . WEIGHTS)."""
  return (1.0 / (1.0 + np.exp(-(features.astype(np.float64) @ WEIGHTS))
          )).astype(np.float32)


class _Linear(tf.Module):

  def __init__(self, weights=None):
    super().__init__()
    self.w = tf.Variable(WEIGHTS if weights is None else
                         np.asarray(weights, np.float32))

  @tf.function(input_signature=[tf.TensorSpec([None, 18], tf.float32)])
  def tensor_fn(self, features):
    return {'score': tf.sigmoid(tf.linalg.matvec(features, self.w))}


def write_module_tensor(path: str, *, raise_above=None, weights=None) -> str:
  """A tf.Module export: serving_default(features [B, 18]) -> score.

  With ``raise_above``, the call fails when any feature exceeds it (a model
  that raises on some inputs); ``weights`` replace WEIGHTS (a different, or
  worse, model of the same architecture).
  """
  module = _Linear(weights)
  if raise_above is None:
    fn = module.tensor_fn
  else:
    @tf.function(input_signature=[tf.TensorSpec([None, 18], tf.float32)])
    def fn(features):
      tf.debugging.assert_less(features, tf.constant(raise_above, tf.float32),
                               message='feature too large for this model')
      return {'score': tf.sigmoid(tf.linalg.matvec(features, module.w))}
  tf.saved_model.save(module, path, signatures={'serving_default': fn})
  return path


def write_module_dict(path: str, feature_names) -> str:
  """A tf.Module export taking one named [B] tensor per feature."""
  module = _Linear()
  specs = {n: tf.TensorSpec([None], tf.float32, name=n) for n in feature_names}

  @tf.function(input_signature=[specs])
  def fn(inputs):
    x = tf.stack([inputs[n] for n in feature_names], axis=1)
    return {'probability': tf.sigmoid(tf.linalg.matvec(x, module.w))}

  # A signature with a dict argument is exported with one input per key.
  concrete = fn.get_concrete_function()
  tf.saved_model.save(module, path, signatures={'serving_default': concrete})
  return path


def write_keras_export(path: str) -> str:
  """A Keras 3 model saved with model.export() (output 'output_0')."""
  import keras
  inputs = keras.Input(shape=(18,), name='features')
  dense = keras.layers.Dense(1, activation='sigmoid', use_bias=False)
  model = keras.Model(inputs, dense(inputs))
  dense.set_weights([WEIGHTS[:, None]])
  model.export(path, verbose=False)
  return path


def write_versioned(root: str, version: int, *, complete=True, weights=None,
                    raise_above=None) -> str:
  """A version directory of a TF-Serving root; metrics.json marks it
  complete. ``weights``/``raise_above``: see write_module_tensor."""
  path = os.path.join(root, str(version))
  write_module_tensor(path, weights=weights, raise_above=raise_above)
  if complete:
    with open(os.path.join(path, 'metrics.json'), 'w') as f:
      f.write('{"accuracy": 0.5}')
  return path


def scores_of(features: np.ndarray, weights) -> np.ndarray:
  """What a fixture model with ``weights`` computes."""
  z = features.astype(np.float64) @ np.asarray(weights, np.float64)
  return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def write_corrupt_version(root: str, version: int) -> str:
  """A version that looks complete (graph, variables index, metrics.json)
  but does not load; written aside and renamed into place, like an
  export."""
  tmp = os.path.join(root, f'.tmp-{version}-corrupt')
  os.makedirs(os.path.join(tmp, 'variables'))
  with open(os.path.join(tmp, 'variables', 'variables.index'), 'wb') as f:
    f.write(b'not an index')
  with open(os.path.join(tmp, 'saved_model.pb'), 'wb') as f:
    f.write(b'\x08\x01 this is not a SavedModel protobuf \xff\xfe')
  with open(os.path.join(tmp, 'metrics.json'), 'w') as f:
    f.write('{"accuracy": 0.99, "auc": 0.99, "loss": 0.01, "examples": 1}')
  final = os.path.join(root, str(version))
  os.rename(tmp, final)
  return final


def _parse_spec(feature_names):
  # The TFX Trainer way: the serving parse spec is the training one minus
  # the label. 'detector' is parsed too (and must be there), as a model
  # using a non-feature column of the examples would.
  spec = {n: tf.io.FixedLenFeature([1], tf.float32) for n in feature_names}
  spec['detector'] = tf.io.FixedLenFeature([1], tf.string)
  return spec


def write_tfx_examples(path: str, feature_names) -> str:
  """A model exported the TFX Trainer way: serving_default(examples: string
  [B] of serialized tf.Example) parses the examples inside the serving
  function and returns {'outputs': [B, 1]}."""
  module = _Linear()
  spec = _parse_spec(feature_names)

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string,
                                              name='examples')])
  def serve_tf_examples_fn(serialized):
    parsed = tf.io.parse_example(serialized, spec)
    x = tf.concat([parsed[n] for n in feature_names], axis=1)
    return {'outputs': tf.sigmoid(tf.linalg.matvec(x, module.w))[:, None]}

  tf.saved_model.save(module, path,
                      signatures={'serving_default': serve_tf_examples_fn})
  return path


def write_classify_regress(path: str, feature_names) -> str:
  """A TF1-style SavedModel (as TFX's Estimator trainers export) with
  'classification' (classes/scores [B, 2]) and 'regression' (outputs
  [B, 1]) signatures on serialized tf.Examples; serving_default =
  classification."""
  graph = tf.Graph()
  with graph.as_default():
    serialized = tf.compat.v1.placeholder(tf.string, [None],
                                          name='input_example_tensor')
    parsed = tf.io.parse_example(serialized, _parse_spec(feature_names))
    x = tf.concat([parsed[n] for n in feature_names], axis=1)
    w = tf.compat.v1.get_variable('w', initializer=WEIGHTS)
    p = tf.sigmoid(tf.linalg.matvec(x, w))
    scores = tf.stack([1.0 - p, p], axis=1)
    classes = tf.tile(tf.constant([['0', '1']]), [tf.shape(p)[0], 1])
    classify = tf.compat.v1.saved_model.classification_signature_def(
        serialized, classes, scores)
    regress = tf.compat.v1.saved_model.regression_signature_def(
        serialized, p[:, None])
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      builder = tf.compat.v1.saved_model.Builder(path)
      builder.add_meta_graph_and_variables(
          sess, ['serve'], signature_def_map={
              'classification': classify, 'regression': regress,
              'serving_default': classify})
      builder.save()
  return path
