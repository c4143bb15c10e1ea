"""Trains model configs on span data, evaluates them, exports new versions.

  python -m models.train --data ROOT --model_dir DIR \\
      [--config mlp_small] [--config logreg ...] [--epochs 5] \\
      [--batch_size 256] [--spans 0,1]

Reads the train and eval splits of ``<ROOT>/span-<N>/`` (models/
examples_io.py: TFX's ExampleGen layout, or the legacy one; all spans unless
``--spans``) through tfx-bsl's TFXIO with each span's schema, whose tagged
model inputs are the features; trains each config of models/registry.py on
the train split, evaluates it on the eval split (accuracy, ROC AUC, log
loss, computed exactly over the whole split), exports each as a new version
under ``DIR`` (models/export.py; metrics.json records the config) and prints
a comparison table. Exits with status 2 and a message when the data has no
spans, a split is empty or a config is unknown.
"""

import argparse
import dataclasses
import logging
import sys
import time
from typing import Optional, Sequence

import numpy as np

_LOGGER = logging.getLogger(__name__)

_EPS = 1e-7


class UsageError(Exception):
  """Bad input the user can fix: reported as a message, exit status 2."""


@dataclasses.dataclass
class TrainResult:
  """One trained and exported config."""
  config: str
  accuracy: float
  auc: float
  loss: float
  eval_examples: int
  train_examples: int
  train_seconds: float
  version: int
  path: str
  spans: list


def binary_metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
  """Accuracy (threshold 0.5), exact ROC AUC and mean log loss.

  AUC is the Mann-Whitney statistic with tied scores sharing their average
  rank; it is NaN when the labels hold a single class.
  """
  labels = np.asarray(labels).astype(np.float64).ravel()
  scores = np.asarray(scores).astype(np.float64).ravel()
  n = labels.size
  if n == 0:
    raise ValueError('no examples to evaluate')
  clipped = np.clip(scores, _EPS, 1.0 - _EPS)
  loss = -np.mean(labels * np.log(clipped)
                  + (1.0 - labels) * np.log(1.0 - clipped))
  accuracy = np.mean((scores >= 0.5) == (labels == 1.0))
  positives = labels.sum()
  negatives = n - positives
  if positives == 0 or negatives == 0:
    auc = float('nan')
  else:
    _, inverse, counts = np.unique(scores, return_inverse=True,
                                   return_counts=True)
    # Average 1-based rank of each distinct score value.
    upper = np.cumsum(counts)
    mean_rank = upper - (counts - 1) / 2.0
    rank_sum = mean_rank[inverse][labels == 1.0].sum()
    auc = (rank_sum - positives * (positives + 1) / 2.0) / (
        positives * negatives)
  return {'accuracy': float(accuracy), 'auc': float(auc), 'loss': float(loss),
          'examples': int(n)}


def evaluate(model, dataset) -> dict:
  """``binary_metrics`` of ``model`` over a (features, label) dataset."""
  labels, scores = [], []
  for features, label in dataset:
    scores.append(np.asarray(model(features, training=False)).reshape(-1))
    labels.append(label.numpy().reshape(-1))
  if not labels:
    raise UsageError('the eval split is empty')
  return binary_metrics(np.concatenate(labels), np.concatenate(scores))


def _count(dataset) -> int:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return int(dataset.reduce(
      tf.constant(0, tf.int64),
      lambda n, batch: n + tf.cast(tf.shape(batch[1])[0], tf.int64)))


def _feature_names(data_root: str, spans: Sequence[int]) -> list[str]:
  """The feature columns, which every span's schema must agree on."""
  from models import examples_io  # pylint: disable=import-outside-toplevel
  names = None
  for span in spans:
    try:
      features = examples_io.model_inputs(examples_io.read_schema(data_root,
                                                                  span))
    except ValueError as e:
      raise UsageError(f'span {span}: {e}') from e
    if names is None:
      names = features
    elif features != names:
      raise UsageError(f'span {span} has different features than span '
                       f'{spans[0]}: train on compatible spans only')
  return names


def train_and_export(data_root: str, model_dir: str, configs: Sequence[str],
                     *, epochs: int = 5, batch_size: int = 256,
                     spans: Optional[Sequence[int]] = None, seed: int = 0,
                     shuffle_buffer: int = 10_000, verbose: int = 0
                     ) -> list[TrainResult]:
  """Trains, evaluates and exports each config; returns one row per config.

  Raises:
    UsageError: no spans, missing spans, empty splits or unknown configs.
  """
  # TensorFlow is imported here so ``--help`` and usage errors stay fast.
  import keras  # pylint: disable=import-outside-toplevel
  from models import examples_io  # pylint: disable=import-outside-toplevel
  from models import export  # pylint: disable=import-outside-toplevel
  from models import registry  # pylint: disable=import-outside-toplevel

  unknown = [c for c in configs if c not in registry.names()]
  if unknown:
    raise UsageError(f'unknown config(s) {unknown}; known: '
                     f'{registry.names()}')
  try:
    spans = examples_io.resolve_spans(data_root, spans)
    names = _feature_names(data_root, spans)
    reading = dict(spans=spans, feature_names=names)
    train_ds = examples_io.make_dataset(
        data_root, 'train', batch_size=batch_size,
        shuffle_buffer=shuffle_buffer, seed=seed, **reading)
    # Unshuffled, large batches: for counting and Normalization.adapt.
    plain_train = examples_io.make_dataset(data_root, 'train',
                                           batch_size=4096, **reading)
    eval_ds = examples_io.make_dataset(data_root, 'eval', batch_size=4096,
                                       **reading)
  except FileNotFoundError as e:
    raise UsageError(str(e)) from e
  train_examples = _count(plain_train)
  if train_examples == 0:
    raise UsageError(f'the train split of spans {spans} is empty')
  _LOGGER.info('Training on spans %s: %d train examples, %d features',
               spans, train_examples, len(names))

  results = []
  for config in configs:
    keras.utils.set_random_seed(seed)
    model = registry.build(config, len(names),
                           adapt_data=plain_train.map(lambda x, y: x))
    started = time.monotonic()
    # The file-backed dataset has unknown length: give Keras exact epochs.
    model.fit(train_ds.repeat(), epochs=epochs, verbose=verbose,
              steps_per_epoch=-(-train_examples // batch_size), shuffle=False)
    train_seconds = time.monotonic() - started
    metrics = evaluate(model, eval_ds)
    _LOGGER.info('%s: %s after %.1f s of training', config, metrics,
                 train_seconds)
    metrics.update(train_examples=train_examples,
                   train_seconds=round(train_seconds, 3), epochs=epochs,
                   batch_size=batch_size)
    path = export.export_model(model, model_dir, feature_names=names,
                               metrics=metrics, span=spans,
                               config_name=config)
    results.append(TrainResult(
        config=config, accuracy=metrics['accuracy'], auc=metrics['auc'],
        loss=metrics['loss'], eval_examples=metrics['examples'],
        train_examples=train_examples, train_seconds=train_seconds,
        version=int(path.rstrip('/').rsplit('/', 1)[-1]), path=path,
        spans=list(spans)))
  return results


def format_table(results: Sequence[TrainResult]) -> str:
  """The comparison table: one row per config."""
  header = ('config', 'accuracy', 'auc', 'loss', 'train_s', 'version')
  rows = [(r.config, f'{r.accuracy:.4f}', f'{r.auc:.4f}', f'{r.loss:.4f}',
           f'{r.train_seconds:.1f}', str(r.version)) for r in results]
  widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]

  def line(cells):
    return '  '.join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                     for i, (c, w) in enumerate(zip(cells, widths)))

  return '\n'.join([line(header), line(['-' * w for w in widths])]
                   + [line(r) for r in rows])


def _spans_arg(text: str) -> list[int]:
  try:
    return [int(s) for s in text.split(',') if s.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'--spans takes comma-separated integers, got {text!r}') from None


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m models.train',
      description='Train model configs on span data and export versions.')
  parser.add_argument('--data', required=True,
                      help='data root holding span-<N>/ directories')
  parser.add_argument('--model_dir', required=True,
                      help='model base directory (local or gs://)')
  parser.add_argument('--config', action='append', default=None,
                      help='registry config name; repeat (or comma-separate) '
                      'to compare several (default: mlp_small)')
  parser.add_argument('--epochs', type=int, default=5)
  parser.add_argument('--batch_size', type=int, default=256)
  parser.add_argument('--spans', type=_spans_arg, default=None,
                      help='e.g. 0,1 (default: all spans)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--shuffle_buffer', type=int, default=10_000)
  parser.add_argument('--verbose', type=int, default=0,
                      help='Keras fit verbosity (0, 1 or 2)')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  args = _build_parser().parse_args(argv)
  configs = [c.strip() for arg in (args.config or ['mlp_small'])
             for c in arg.split(',') if c.strip()]
  try:
    results = train_and_export(
        args.data, args.model_dir, configs, epochs=args.epochs,
        batch_size=args.batch_size, spans=args.spans, seed=args.seed,
        shuffle_buffer=args.shuffle_buffer, verbose=args.verbose)
  except UsageError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'data {args.data} spans {results[0].spans}: '
        f'{results[0].train_examples} train / '
        f'{results[0].eval_examples} eval examples; models in '
        f'{args.model_dir}')
  print(format_table(results))
  return 0


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO,
                      format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  sys.exit(main())
