"""A second event domain for tests: wind-turbine telemetry, not the demo's.

Its own schema (millisecond integer times, a string key, an optional label,
integer and float features), its own model (a tf.Module taking one named
tensor per feature, output ``fault_probability``), and a numpy reference of
that model. Tests that must not pass only on the SUSY demo use it.
"""

import json
import os
from typing import Optional

import numpy as np
import orjson

FEATURES = ('wind_speed', 'rotor_rpm', 'power_kw', 'blade_pitch',
            'nacelle_temp')
WEIGHTS = np.asarray([0.08, -0.01, 0.002, 0.05, 0.03], dtype=np.float64)
BIAS = -1.5

SCHEMA = {
    'name': 'turbine',
    'fields': [
        {'name': 'reading_id', 'type': 'string'},
        {'name': 'ts_ms', 'type': 'int'},
        {'name': 'turbine', 'type': 'string'},
        {'name': 'fault', 'type': 'int', 'required': False},
        {'name': 'wind_speed', 'type': 'float'},
        {'name': 'rotor_rpm', 'type': 'int'},
        {'name': 'power_kw', 'type': 'float'},
        {'name': 'blade_pitch', 'type': 'float'},
        {'name': 'nacelle_temp', 'type': 'float'},
    ],
    'id_field': 'reading_id',
    'time_field': 'ts_ms',
    'time_unit': 'ms',
    'key_field': 'turbine',
    'label_field': 'fault',
    'features': list(FEATURES),
    'window_features': ['power_kw', 'wind_speed'],
}


def write_schema(directory: str) -> str:
  path = os.path.join(directory, 'turbine.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(SCHEMA, f)
  return path


def write_domain(root) -> dict:
  """The schema and a versioned model (v1) under ``root``, for jobs:
  {'model_root': ..., 'schema': ...}."""
  model_root = os.path.join(str(root), 'models')
  write_model(model_root, version=1)
  return {'model_root': model_root, 'schema': write_schema(str(root))}


def reading(i: int, t: float, turbine: str, **overrides) -> dict:
  """Reading ``r<i>`` at epoch seconds ``t`` with deterministic values."""
  rng = np.random.default_rng(i)
  doc = {
      'reading_id': f'r{i}', 'ts_ms': int(round(t * 1000)),
      'turbine': turbine,
      'wind_speed': round(float(rng.uniform(2, 25)), 3),
      'rotor_rpm': int(rng.integers(5, 20)),
      'power_kw': round(float(rng.uniform(0, 3000)), 2),
      'blade_pitch': round(float(rng.uniform(-2, 30)), 2),
      'nacelle_temp': round(float(rng.uniform(10, 60)), 2),
  }
  if i % 3 == 0:
    doc['fault'] = int(i % 2)
  doc.update(overrides)
  return doc


def encode(doc: dict) -> bytes:
  return orjson.dumps(doc)


def expected_score(doc: dict, weights=WEIGHTS, bias=BIAS) -> float:
  """The model's score for a reading, computed with numpy (a model written
  with other ``weights``/``bias``: pass them)."""
  x = np.asarray([float(doc[n]) for n in FEATURES], dtype=np.float32)
  z = float(x.astype(np.float64) @ np.asarray(weights, np.float64)) + bias
  return float(1.0 / (1.0 + np.exp(-z)))


def write_model(path: str, version: Optional[int] = None, *,
                weights=WEIGHTS, bias=BIAS) -> str:
  """Exports the model as a tf.Module SavedModel with named inputs; with
  ``version``, into ``<path>/<version>`` with a metrics.json (complete).
  Other ``weights``/``bias``: another version of the same model."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  class _Turbine(tf.Module):

    def __init__(self):
      super().__init__()
      self.w = tf.Variable(np.asarray(weights, np.float32))
      self.b = tf.Variable(np.float32(bias))

  module = _Turbine()
  specs = {n: tf.TensorSpec([None], tf.float32, name=n) for n in FEATURES}

  @tf.function(input_signature=[specs])
  def serve(inputs):
    x = tf.stack([inputs[n] for n in FEATURES], axis=1)
    z = tf.linalg.matvec(x, module.w) + module.b
    return {'fault_probability': tf.sigmoid(z)}

  target = path if version is None else os.path.join(path, str(version))
  tf.saved_model.save(module, target, signatures={
      'serving_default': serve.get_concrete_function()})
  if version is not None:
    with open(os.path.join(target, 'metrics.json'), 'w') as f:
      f.write('{"auc": 0.5}')
  return target
