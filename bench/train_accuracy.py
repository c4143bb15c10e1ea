"""Eval accuracy of the model configs on SUSY-like data (not a test).

Generates ``--train`` / ``--eval`` rows with models/susy.py (different seeds),
writes them as span 0 in the training layout (models/examples_io.py), runs
the same code as ``python -m models.train`` for every registered config (or
``--config``), and prints the comparison table. Then, from the exported
SavedModels:

  * drift: the first config's score on drift=0 vs drift=1 eval rows (the
    online-learning demo's premise: accuracy falls when the boundary moves);
  * features (``--ablation``): ``mlp_small`` fit in memory on the low-level,
    high-level and all features (high-level features carry information, as
    in the real SUSY set).

The generator is tuned so ``mlp_small`` lands at ~77-81% with the defaults
(the TensorFlow-IO Kafka tutorial reports ~78% on 100k real SUSY rows).

  python -m bench.train_accuracy                 # 100k / 50k rows, 5 epochs
  python -m bench.train_accuracy --train 20000 --eval 10000 --epochs 3
"""

import argparse
import logging
import os
import sys
import tempfile
import time

import numpy as np

from models import examples_io, registry, susy, train

_LOGGER = logging.getLogger(__name__)


def _accuracy_table(rows) -> str:
  width = max(len(case) for case, _ in rows)
  lines = [f'{"case":<{width}}  {"accuracy":>8}',
           f'{"-" * width}  {"-" * 8}']
  lines += [f'{case:<{width}}  {acc:>8.4f}' for case, acc in rows]
  return '\n'.join(lines)


def _drift_rows(path: str, n: int, config: str):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  score = tf.saved_model.load(path).signatures['serving_default']
  rows = []
  for drift in (0.0, 0.5, 1.0):
    data = susy.generate(n, seed=3, drift=drift)
    scores = score(features=tf.constant(data.features))['score'].numpy()
    rows.append((f'{config} (drift 0) on drift={drift}',
                 float(np.mean((scores >= 0.5) == (data.labels == 1)))))
  return rows


def _ablation_rows(train_data, eval_data, epochs: int, batch_size: int):
  import keras  # pylint: disable=import-outside-toplevel
  rows = []
  for name, columns in (('low-level (8)', slice(0, 8)),
                        ('high-level (10)', slice(8, 18)),
                        ('all (18)', slice(0, 18))):
    keras.utils.set_random_seed(0)
    x = train_data.features[:, columns]
    model = registry.build('mlp_small', x.shape[1], adapt_data=x)
    model.fit(x, train_data.labels, epochs=epochs, batch_size=batch_size,
              verbose=0)
    scores = np.asarray(model(eval_data.features[:, columns],
                              training=False)).ravel()
    rows.append((f'mlp_small on {name} features',
                 float(np.mean((scores >= 0.5) == (eval_data.labels == 1)))))
  return rows


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--train', type=int, default=100_000)
  parser.add_argument('--eval', type=int, default=50_000)
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--config', action='append', default=None,
                      help='config(s) to compare (default: all registered)')
  parser.add_argument('--ablation', action='store_true',
                      help='also fit mlp_small on feature subsets')
  parser.add_argument('--workdir', default=None,
                      help='keep data and models here (default: a temp dir)')
  args = parser.parse_args(argv)
  configs = args.config or [registry.DEFAULT_CONFIG] + [
      c for c in registry.names() if c != registry.DEFAULT_CONFIG]

  with tempfile.TemporaryDirectory() as tmp:
    workdir = args.workdir or tmp
    data_root = os.path.join(workdir, 'data')
    model_dir = os.path.join(workdir, 'models')
    started = time.monotonic()
    train_data = susy.generate(args.train, seed=1)
    eval_data = susy.generate(args.eval, seed=2)
    examples_io.write_span(data_root, 0, {'train': train_data,
                                          'eval': eval_data})
    print(f'wrote {args.train} train / {args.eval} eval rows in '
          f'{time.monotonic() - started:.1f} s; {args.epochs} epochs, '
          f'batch {args.batch_size}, {os.cpu_count()} cores')
    results = train.train_and_export(data_root, model_dir, configs,
                                     epochs=args.epochs,
                                     batch_size=args.batch_size)
    print()
    print(train.format_table(results))
    print()
    rows = _drift_rows(results[0].path, args.eval, results[0].config)
    if args.ablation:
      rows += _ablation_rows(train_data, eval_data, args.epochs,
                             args.batch_size)
    print(_accuracy_table(rows))
  return 0


if __name__ == '__main__':
  logging.basicConfig(level=logging.WARNING)
  sys.exit(main())
