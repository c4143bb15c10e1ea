"""The latency benches run and print what docs/latency.md cites.

Small runs (a few seconds of input each) of ``bench.step_costs`` and
``bench.latency_bench`` with their own embedded broker and a fixture
SavedModel: the figures are not checked (they are the benches' business),
only that each bench runs to the end and prints its rows.
"""

import os
import re
import subprocess
import sys

import pytest

import model_fixtures

pytestmark = pytest.mark.it

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, timeout_s=420) -> str:
  env = dict(os.environ, PYTHONPATH=_ROOT)
  env.pop('KAFKA_BOOTSTRAP_SERVERS', None)  # each bench starts its broker
  proc = subprocess.run([sys.executable, '-m'] + args, cwd=_ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout_s)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout


def test_step_costs_prints_a_row_per_step(tmp_path):
  root = str(tmp_path / 'model')
  model_fixtures.write_versioned(root, 1)
  out = _run(['bench.step_costs', '--rate', '500', '--seconds', '8',
              '--warmup_s', '3', '--model_dir', root])
  reads = int(re.search(r'([\d,]+) reads in', out).group(1).replace(',', ''))
  assert reads > 10, out
  for step in ('ReadFromKafka', 'ParseEvents/', 'AggregatePerKeyWindow',
               'RunInference', 'WritePredictions/ProduceToKafka'):
    assert step in out, out
  assert re.search(r'all steps per read cycle: [\d.]+ ms', out), out
  assert re.search(r'p50 [\d.]+ ms, p99 \d+ ms', out), out


def test_latency_bench_prints_its_table(tmp_path):
  root = str(tmp_path / 'model')
  model_fixtures.write_versioned(root, 1)
  out = _run(['bench.latency_bench', '--rounds', '1', '--rates', '500',
              '--seconds', '4', '--cpu_events', '2000', '--model_dir', root])
  for row in ('hand at 500/s', 'job at 500/s', 'event->read',
              'start-up to first prediction', 'CPU-s per million'):
    assert row in out, out
