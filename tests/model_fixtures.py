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

  def __init__(self):
    super().__init__()
    self.w = tf.Variable(WEIGHTS)

  @tf.function(input_signature=[tf.TensorSpec([None, 18], tf.float32)])
  def tensor_fn(self, features):
    return {'score': tf.sigmoid(tf.linalg.matvec(features, self.w))}


def write_module_tensor(path: str, *, raise_above=None) -> str:
  """A tf.Module export: serving_default(features [B, 18]) -> score.

  With ``raise_above``, the call fails when any feature exceeds it (a model
  that raises on some inputs).
  """
  module = _Linear()
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


def write_versioned(root: str, version: int, *, complete=True) -> str:
  """A version directory of a TF-Serving root; metrics.json marks it complete."""
  path = os.path.join(root, str(version))
  write_module_tensor(path)
  if complete:
    with open(os.path.join(path, 'metrics.json'), 'w') as f:
      f.write('{"accuracy": 0.5}')
  return path
