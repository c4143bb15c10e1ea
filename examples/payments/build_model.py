"""Trains and exports the payments fraud model: a tf.Module SavedModel.

Not the demo's shape: the model takes **named inputs** (one float32 [B]
tensor per feature, ``serving_default``) and, as a second signature,
**serialized tf.Example** protos (``serve_examples``); both return two
outputs, ``fraud_probability`` and ``logit``, so the jobs are told which one
is the score with ``--model_output fraud_probability``.

The model is a logistic regression on standardized features, fitted with
numpy on generated events (examples/payments/events.py). Its parameters are
also written to ``params.json`` so that tests can recompute every score
without TensorFlow (``expected_scores``).

  python -m examples.payments.build_model --model_dir .run/models/payments

writes ``<model_dir>/<version>/`` (saved_model.pb, variables/, params.json,
metrics.json last: a complete version the jobs can serve and hot-swap to).
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np

from examples.payments import events

DEFAULT_MODEL_DIR = os.path.join('.run', 'models', 'payments')
PARAMS_FILE = 'params.json'
METRICS_FILE = 'metrics.json'  # written last: marks the version complete


def fit(x: np.ndarray, y: np.ndarray, *, steps: int = 400,
        learning_rate: float = 0.5) -> dict:
  """Logistic regression on standardized ``x`` by gradient descent."""
  x = x.astype(np.float64)
  mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
  z = (x - mean) / std
  w, b = np.zeros(z.shape[1]), 0.0
  for _ in range(steps):
    p = 1.0 / (1.0 + np.exp(-(z @ w + b)))
    w -= learning_rate * (z.T @ (p - y)) / len(y)
    b -= learning_rate * float(np.mean(p - y))
  return {'features': list(events.FEATURES), 'mean': mean.tolist(),
          'std': std.tolist(), 'weights': w.tolist(), 'bias': b}


def expected_scores(params: dict, x: np.ndarray) -> np.ndarray:
  """What the exported model computes, in numpy (float64)."""
  z = (x.astype(np.float64) - np.asarray(params['mean'])) / np.asarray(
      params['std'])
  return 1.0 / (1.0 + np.exp(-(z @ np.asarray(params['weights']) +
                               params['bias'])))


def _auc(y: np.ndarray, score: np.ndarray) -> float:
  order = np.argsort(score)
  ranks = np.empty(len(score))
  ranks[order] = np.arange(1, len(score) + 1)
  positives = y.sum()
  negatives = len(y) - positives
  return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) /
               max(positives * negatives, 1))


def _module(params: dict):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  names = list(params['features'])
  as_tensor = lambda v: tf.constant(np.asarray(v, np.float32))

  class FraudModel(tf.Module):
    """sigmoid(w . (x - mean) / std + b), fed two ways."""

    def __init__(self):
      super().__init__()
      self.mean, self.std = as_tensor(params['mean']), as_tensor(params['std'])
      self.w = tf.Variable(as_tensor(params['weights']))
      self.b = tf.Variable(np.float32(params['bias']))

    def _score(self, x):
      logit = tf.linalg.matvec((x - self.mean) / self.std, self.w) + self.b
      return {'fraud_probability': tf.sigmoid(logit), 'logit': logit}

    @tf.function(input_signature=[
        {n: tf.TensorSpec([None], tf.float32, name=n) for n in names}])
    def serve(self, inputs):
      return self._score(tf.stack([inputs[n] for n in names], axis=1))

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.string, name='examples')])
    def serve_examples(self, serialized):
      spec = {n: tf.io.FixedLenFeature([], tf.float32) for n in names}
      parsed = tf.io.parse_example(serialized, spec)
      return self._score(tf.stack([parsed[n] for n in names], axis=1))

  return FraudModel()


def export(params: dict, path: str, metrics: Optional[dict] = None) -> str:
  """Writes the SavedModel, params.json and (last) metrics.json to ``path``."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  module = _module(params)
  # A dict-argument signature is exported with one named input per key.
  tf.saved_model.save(module, path, signatures={
      'serving_default': module.serve.get_concrete_function(),
      'serve_examples': module.serve_examples.get_concrete_function()})
  with open(os.path.join(path, PARAMS_FILE), 'w') as f:
    json.dump(params, f, indent=2)
  with open(os.path.join(path, METRICS_FILE), 'w') as f:
    json.dump(metrics or {}, f, indent=2)
  return path


def build(model_dir: str, *, version: int = 1, n: int = 20_000,
          seed: int = 1) -> dict:
  """Fits on ``n`` generated events, exports ``<model_dir>/<version>``.

  Returns:
    The parameters (as in params.json) with the eval metrics.
  """
  x, y = events.features(n, seed=seed), events.labels(n, seed=seed)
  cut = int(n * 0.8)
  params = fit(x[:cut], y[:cut])
  score = expected_scores(params, x[cut:])
  metrics = {'accuracy': float(np.mean((score > 0.5) == y[cut:])),
             'auc': _auc(y[cut:], score), 'eval_rows': n - cut}
  export(params, os.path.join(model_dir, str(version)), metrics)
  return dict(params, metrics=metrics)


def load_params(version_dir: str) -> dict:
  with open(os.path.join(version_dir, PARAMS_FILE)) as f:
    return json.load(f)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m examples.payments.build_model',
      description='Trains and exports the payments fraud model.')
  parser.add_argument('--model_dir', default=DEFAULT_MODEL_DIR,
                      help=f'model root; the version goes to '
                      f'<model_dir>/<version> (default: {DEFAULT_MODEL_DIR})')
  parser.add_argument('--version', type=int, default=1,
                      help='version number (default: 1)')
  parser.add_argument('--n', type=int, default=20_000,
                      help='generated events to fit on (default: 20000)')
  args = parser.parse_args(argv)
  from beam_jobs import logs  # pylint: disable=import-outside-toplevel
  logs.configure()  # before TensorFlow starts: its start-up lines hidden
  built = build(args.model_dir, version=args.version, n=args.n)
  print(f'exported {os.path.join(args.model_dir, str(args.version))}: eval '
        f'accuracy {built["metrics"]["accuracy"]:.3f}, AUC '
        f'{built["metrics"]["auc"]:.3f}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
