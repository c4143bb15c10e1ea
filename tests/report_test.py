"""Report module: the curve table and PNG, the versions table, the CLI."""

import json

import keras
import numpy as np
import pytest

from models import export, report, susy

_DOC = {
    'warm_start_version': 1,
    'history': [
        {'version': 2, 'examples': 4096, 'accuracy': 0.79},
        {'version': 3, 'examples': 8192, 'accuracy': 0.69},
        {'version': 4, 'examples': 12288, 'accuracy': 0.78},
    ],
    'heldout': {'drift 1': {'1': 0.52, '2': 0.51, '3': 0.69, '4': 0.80}},
}


def test_curve_table_has_a_row_per_version():
  text = report.format_curve(_DOC)
  lines = text.splitlines()
  assert lines[0].split() == ['version', 'examples', 'prequential',
                              'acc[drift', '1]']
  assert lines[1].split() == ['1', '0', '-', '0.5200']
  assert lines[3].split() == ['3', '8192', '0.6900', '0.6900']
  assert len(lines) == 5


def test_curve_png_and_cli(tmp_path, capsys):
  png = report.plot_online_curve(_DOC, str(tmp_path / 'a' / 'curve.png'))
  with open(png, 'rb') as f:
    assert f.read(8) == b'\x89PNG\r\n\x1a\n'
  path = tmp_path / 'history.json'
  path.write_text(json.dumps({'history': _DOC['history']}))
  out = tmp_path / 'cli.png'
  assert report.main(['--online', str(path), '--out', str(out)]) == 0
  assert out.stat().st_size > 10_000
  assert f'wrote {out}' in capsys.readouterr().out
  assert report.main(['--online', str(path)]) == 2
  assert report.main([]) == 2
  (tmp_path / 'bad.json').write_text('{"nope": 1}')
  assert report.main(['--online', str(tmp_path / 'bad.json'), '--out',
                      str(out)]) == 2


def test_versions_table_and_heldout_accuracy(tmp_path, capsys):
  inputs = keras.Input(shape=(susy.NUM_FEATURES,))
  dense = keras.layers.Dense(1, activation='sigmoid')
  model = keras.Model(inputs, dense(inputs))
  dense.set_weights([np.zeros((susy.NUM_FEATURES, 1), np.float32),
                     np.asarray([1.0], np.float32)])  # always "signal"
  root = str(tmp_path / 'models')
  for config in ('logreg', 'logreg+online'):
    export.export_model(model, root, feature_names=susy.FEATURE_NAMES,
                        metrics={'accuracy': 0.5, 'auc': 0.5, 'loss': 0.7,
                                 'examples': 10}, config_name=config)
  table = report.versions_table(root).splitlines()
  assert table[0].split()[:4] == ['config', 'accuracy', 'auc', 'loss']
  assert [r.split()[0] for r in table[2:]] == ['logreg', 'logreg+online']
  assert [r.split()[-1] for r in table[2:]] == ['1', '2']
  data = susy.generate(1000, seed=3)
  scored = report.evaluate_versions(root, [1, 2], {'d': data})
  assert scored == {'d': {'1': pytest.approx(data.labels.mean()),
                          '2': pytest.approx(data.labels.mean())}}
  assert report.main(['--model_dir', root]) == 0
  assert 'logreg+online' in capsys.readouterr().out
  path = tmp_path / 'h.json'
  path.write_text(json.dumps({'warm_start_version': 1, 'history': [
      {'version': 2, 'examples': 5, 'accuracy': 0.5}]}))
  assert report.main(['--online', str(path), '--out', str(tmp_path / 'c.png'),
                      '--model_dir', root, '--eval_drift', '0,1',
                      '--eval_n', '500']) == 0
  assert 'acc[drift 1]' in capsys.readouterr().out
