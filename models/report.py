"""Reports: the online-learning accuracy curve (PNG) and accuracy tables.

  python -m models.report --online history.json --out curve.png \\
      [--model_dir DIR --eval_drift 0,1 [--eval_n 20000 --eval_seed 99]]
  python -m models.report --model_dir DIR          # versions x metrics table

``--online`` takes the JSON that ``python -m models.online --history_out``
writes (or the same document with held-out accuracies already attached, as
the online-learning test writes it)::

  {"warm_start_version": 1,
   "history": [{"version": 2, "examples": 4096, "accuracy": 0.61, ...}, ...],
   "heldout": {"drift 1": {"1": 0.52, "2": 0.70, ...}, ...},   (optional)
   "shade": [{"from": 4096, "to": 8192, "label": "drift"}]}      (optional)

``history[i].accuracy`` is prequential: the model's accuracy on the events
of the window before that export, scored before it learnt from them, i.e.
accuracy on recent data. With ``--model_dir`` and ``--eval_drift``, every
version in the history (and the warm-start version) is also scored on
held-out SUSY-like data generated at each drift value (models/susy.py), one
more curve per drift value. The plot is drawn with matplotlib's Agg backend
(no display needed; ``pip install '.[report]'``).

The table (``--model_dir`` alone) has one row per complete version: its
config, accuracy, AUC and log loss from metrics.json, training seconds and
version (models/train.format_table).
"""

import argparse
import json
import logging
import os
import sys
from typing import Mapping, Optional, Sequence


_LOGGER = logging.getLogger(__name__)

PREQUENTIAL_LABEL = ('recent stream events, scored before learning them '
                     '(prequential)')


def load_online(path: str) -> dict:
  """The curve document at ``path`` (see the module docstring).

  A bare list is taken as the history.
  """
  with open(path, encoding='utf-8') as f:
    doc = json.load(f)
  if isinstance(doc, list):
    doc = {'history': doc}
  if not isinstance(doc, dict) or 'history' not in doc:
    raise ValueError(f'{path}: expected {{"history": [...]}} as written by '
                     f'python -m models.online --history_out')
  doc.setdefault('warm_start_version', None)
  doc.setdefault('heldout', {})
  return doc


def _versions(doc: Mapping) -> list[int]:
  versions = [int(e['version']) for e in doc['history']]
  if doc.get('warm_start_version') is not None:
    versions.insert(0, int(doc['warm_start_version']))
  return versions


def evaluate_versions(model_dir: str, versions: Sequence[int],
                      datasets: Mapping[str, object]) -> dict:
  """Accuracy of each version's SavedModel on each data set.

  Args:
    model_dir: versioned model root.
    versions: versions to score.
    datasets: name -> ``susy.SusyData`` (features, labels).

  Returns:
    ``{name: {str(version): accuracy}}``.
  """
  # pylint: disable=import-outside-toplevel
  import tensorflow as tf
  from models import export
  from models import versions as versions_lib
  from models.train import binary_metrics
  out = {name: {} for name in datasets}
  for version in versions:
    path = versions_lib.version_dir(model_dir, version)
    signature = tf.saved_model.load(path).signatures[export.SERVING_DEFAULT]
    for name, data in datasets.items():
      scores = signature(**{export.FEATURES_INPUT: tf.constant(
          data.features)})[export.SCORE_OUTPUT].numpy()
      out[name][str(version)] = binary_metrics(data.labels,
                                               scores)['accuracy']
  return out


def attach_heldout(doc: dict, model_dir: str,
                   datasets: Mapping[str, object]) -> dict:
  """Adds held-out accuracies of every version in ``doc`` (in place)."""
  scored = evaluate_versions(model_dir, _versions(doc), datasets)
  doc.setdefault('heldout', {}).update(scored)
  return doc


def curve_rows(doc: Mapping) -> list[dict]:
  """One row per version: version, examples learnt, accuracies."""
  rows = []
  heldout = doc.get('heldout') or {}
  if doc.get('warm_start_version') is not None:
    v = int(doc['warm_start_version'])
    rows.append({'version': v, 'examples': 0, 'prequential': None,
                 **{name: acc.get(str(v)) for name, acc in heldout.items()}})
  for entry in doc['history']:
    v = int(entry['version'])
    rows.append({'version': v, 'examples': int(entry['examples']),
                 'prequential': entry.get('accuracy'),
                 **{name: acc.get(str(v)) for name, acc in heldout.items()}})
  return rows


def format_curve(doc: Mapping) -> str:
  """The curve as a text table (what the PNG shows)."""
  names = list((doc.get('heldout') or {}).keys())
  header = ['version', 'examples', 'prequential'] + [f'acc[{n}]'
                                                      for n in names]
  lines = [header]
  for row in curve_rows(doc):
    cell = lambda x: '-' if x is None else f'{x:.4f}'
    lines.append([str(row['version']), str(row['examples']),
                  cell(row['prequential'])] + [cell(row[n]) for n in names])
  widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
  return '\n'.join('  '.join(c.rjust(w) for c, w in zip(r, widths))
                   for r in lines)


def plot_online_curve(doc: Mapping, out_path: str, *,
                      title: Optional[str] = None) -> str:
  """Writes the accuracy-over-versions curve as a PNG; returns the path."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use('Agg')
  # pylint: disable-next=import-outside-toplevel
  from matplotlib import pyplot as plt
  rows = curve_rows(doc)
  if not rows:
    raise ValueError('the online history is empty: nothing to plot')
  fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=100)
  try:
    x = [r['examples'] for r in rows]
    prequential = [(r['examples'], r['prequential']) for r in rows
                   if r['prequential'] is not None]
    if prequential:
      ax.plot(*zip(*prequential), marker='o', linewidth=2,
              label=PREQUENTIAL_LABEL)
    for name in (doc.get('heldout') or {}):
      points = [(r['examples'], r[name]) for r in rows
                if r.get(name) is not None]
      if points:
        ax.plot(*zip(*points), marker='s', linestyle='--',
                label=f'held-out {name}')
    for r in rows:
      ys = [v for k, v in r.items() if k not in ('version', 'examples')
            and v is not None]
      if ys:
        ax.annotate(f"v{r['version']}", (r['examples'], max(ys)),
                    textcoords='offset points', xytext=(0, 6),
                    ha='center', fontsize=7)
    for band in doc.get('shade') or []:
      ax.axvspan(band['from'], band['to'], color='grey', alpha=0.15,
                 label=band.get('label'))
    ax.axhline(0.5, color='grey', linewidth=0.8, linestyle=':')
    ax.set_xlabel('labelled events learnt online')
    ax.set_ylabel('accuracy')
    ax.set_ylim(0.4, 0.9)
    ax.set_xlim(min(x) - max(x) * 0.02, max(x) * 1.04 + 1)
    ax.grid(alpha=0.3)
    ax.set_title(title or 'Online learning: accuracy per exported version')
    ax.legend(loc='center right', fontsize=8)
    fig.tight_layout()
    directory = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(out_path, format='png')
  finally:
    plt.close(fig)
  return out_path


def versions_table(model_dir: str) -> str:
  """configs x metrics of every complete version (train.format_table)."""
  # pylint: disable=import-outside-toplevel
  from models import versions
  from models.train import TrainResult, format_table
  results = []
  for version in versions.list_versions(model_dir):
    path = versions.version_dir(model_dir, version)
    m = versions.read_metrics(path)
    results.append(TrainResult(
        config=str(m.get('config', 'unknown')),
        accuracy=float(m['accuracy']), auc=float(m['auc']),
        loss=float(m['loss']), eval_examples=int(m['examples']),
        train_examples=int(m.get('train_examples') or 0),
        train_seconds=float(m.get('train_seconds') or 0.0), version=version,
        path=path, spans=list(m.get('spans') or [])))
  if not results:
    raise ValueError(f'no complete versions under {model_dir}')
  return format_table(results)


def _drifts(text: str) -> list[float]:
  try:
    values = [float(v) for v in text.split(',') if v.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(
        f'--eval_drift takes comma-separated numbers, got {text!r}') from None
  if not values or any(not 0.0 <= v <= 1.0 for v in values):
    raise argparse.ArgumentTypeError('--eval_drift values must lie in [0, 1]')
  return values


def _build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m models.report',
      description='Online-learning curve (PNG) and model accuracy tables.')
  parser.add_argument('--online', default=None,
                      help='curve JSON (python -m models.online '
                      '--history_out)')
  parser.add_argument('--out', default=None,
                      help='PNG to write the curve to (with --online)')
  parser.add_argument('--title', default=None, help='plot title')
  parser.add_argument('--model_dir', default=None,
                      help='versioned model root: prints the versions x '
                      'metrics table; with --eval_drift, scores versions')
  parser.add_argument('--eval_drift', type=_drifts, default=None,
                      help='with --online and --model_dir: add held-out '
                      'accuracy curves at these drift values, e.g. 0,1')
  parser.add_argument('--eval_n', type=int, default=20_000,
                      help='held-out events per drift value (default: 20000)')
  parser.add_argument('--eval_seed', type=int, default=99,
                      help='seed of the held-out events (default: 99)')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  args = _build_parser().parse_args(argv)
  if not args.online and not args.model_dir:
    print('error: give --online (curve) and/or --model_dir (table)',
          file=sys.stderr)
    return 2
  if args.online and not args.out:
    print('error: --online needs --out (the PNG path)', file=sys.stderr)
    return 2
  if args.eval_drift and not (args.online and args.model_dir):
    print('error: --eval_drift needs --online and --model_dir',
          file=sys.stderr)
    return 2
  try:
    if args.model_dir and not args.eval_drift:
      print(versions_table(args.model_dir))
    if args.online:
      doc = load_online(args.online)
      if args.eval_drift:
        from models import susy  # pylint: disable=import-outside-toplevel
        datasets = {f'drift {d:g}': susy.generate(args.eval_n,
                                                  seed=args.eval_seed,
                                                  drift=d)
                    for d in args.eval_drift}
        attach_heldout(doc, args.model_dir, datasets)
      print(format_curve(doc))
      plot_online_curve(doc, args.out, title=args.title)
      print(f'wrote {args.out}')
  except (OSError, ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO)
  sys.exit(main())
