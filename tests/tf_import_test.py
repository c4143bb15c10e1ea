"""models/tf_import.py: TensorFlow for serving without the eager Keras
import, in a fresh interpreter (the import can happen only once)."""

import json
import os
import subprocess
import sys

import numpy as np

import model_fixtures

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_PROBE = r'''
import json, sys
import numpy as np
from models import tf_import
tf = tf_import.tensorflow()
out = {'keras_after_import': 'keras' in sys.modules}
scores = {}
for name, path in json.loads(sys.argv[1]).items():
  fn = tf.saved_model.load(path).signatures['serving_default']
  (value,) = fn(tf.constant(np.ones((2, 18), np.float32))).values()
  scores[name] = value.numpy().ravel().tolist()
out['scores'] = scores
out['keras_after_load'] = 'keras' in sys.modules
out['again'] = tf_import.tensorflow() is tf
import keras
out['keras_importable'] = hasattr(keras, 'Sequential')
out['with_keras_after'] = tf_import.with_keras()
print(json.dumps(out))
'''


def test_serving_import_skips_keras_and_still_loads_keras_exports(tmp_path):
  models = {
      'module': model_fixtures.write_module_tensor(str(tmp_path / 'module')),
      'keras_export': model_fixtures.write_keras_export(
          str(tmp_path / 'keras')),
  }
  proc = subprocess.run(
      [sys.executable, '-c', _PROBE, json.dumps(models)], cwd=_ROOT,
      env=dict(os.environ, PYTHONPATH=_ROOT), capture_output=True, text=True,
      timeout=300, check=True)
  out = json.loads(proc.stdout.strip().splitlines()[-1])
  assert out['keras_after_import'] is False
  assert out['keras_after_load'] is False
  assert out['again'] is True
  assert out['keras_importable'] is True
  # Keras imported meanwhile: nothing left to import.
  assert out['with_keras_after'] is False
  expected = model_fixtures.expected_scores(np.ones((2, 18), np.float32))
  assert sorted(out['scores']) == ['keras_export', 'module']
  for name, values in out['scores'].items():
    np.testing.assert_allclose(values, expected, rtol=1e-5, err_msg=name)
