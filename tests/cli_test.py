"""Command lines: every --help lists the flags, unknown flags fail fast."""

import argparse
import pathlib
import re
import subprocess
import sys
import time

import pytest
from apache_beam.options.pipeline_options import (DebugOptions,
                                                  GoogleCloudOptions,
                                                  PipelineOptions,
                                                  StandardOptions,
                                                  WorkerOptions)

from beam_jobs import backfill, cli, demo, ingest_examples, score_stream
from beam_jobs import spelling
from beam_jobs import options as opts

REPO = pathlib.Path(__file__).resolve().parents[1]
JOBS = {'beam_jobs.score_stream': score_stream,
        'beam_jobs.backfill': backfill,
        'beam_jobs.ingest_examples': ingest_examples}
# Modules meant to be run (python -m ...), found by their __main__ guard;
# bench/ is left out: benchmarks run when started.
RUNNABLE = sorted(
    str(path.relative_to(REPO).with_suffix('')).replace('/', '.')
    for folder in ('beam_jobs', 'models', 'transforms', 'examples')
    for path in (REPO / folder).rglob('*.py')
    if "__name__ == '__main__'" in path.read_text())


def run_module(module, *args, timeout=120):
  # -X importtime: what --help imports, on stderr.
  return subprocess.run(
      [sys.executable, '-X', 'importtime', '-m', module, *args], cwd=REPO,
      capture_output=True, text=True, timeout=timeout, check=False)


def declared_flags(groups) -> list[str]:
  parser = argparse.ArgumentParser(add_help=False)
  for _, classes in groups:
    for cls in classes:
      cls._add_argparse_args(parser)  # pylint: disable=protected-access
  return [s for a in parser._actions for s in a.option_strings  # pylint: disable=protected-access
          if s.startswith('--')]


def test_the_runnable_modules_are_found():
  assert set(JOBS) | {'beam_jobs.demo', 'beam_jobs.lag', 'models.train',
                      'models.susy'} <= set(RUNNABLE)


@pytest.mark.parametrize('module', RUNNABLE)
def test_help_works_without_tensorflow_a_broker_or_a_model(module):
  started = time.monotonic()
  result = run_module(module, '--help')
  seconds = time.monotonic() - started
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout.startswith('usage:')
  imported = {line.rsplit('|', 1)[-1].strip()
              for line in result.stderr.splitlines() if '|' in line}
  assert 'tensorflow' not in imported, f'{module} --help imports TensorFlow'
  # No TensorFlow/CUDA start-up lines, no warnings: --help prints help.
  noise = [l for l in result.stderr.splitlines()
           if not l.startswith('import time:')]
  assert noise == []
  # Generous for a shared 2-core machine; measured ~1.4 s for the jobs.
  assert seconds < 15, f'{module} --help took {seconds:.1f} s'
  if module in JOBS:
    flags = declared_flags(JOBS[module].FLAG_GROUPS)
    for flag in flags:
      assert re.search(rf'^\s+{re.escape(flag)}\b', result.stdout, re.M), (
          f'{module} --help does not list {flag}')
    for title, _ in JOBS[module].FLAG_GROUPS:
      assert f'\n{title}:\n' in result.stdout, title
    assert '--runner, --project, --region' in ' '.join(result.stdout.split())


@pytest.mark.parametrize('module', sorted(JOBS))
def test_help_groups_hold_every_options_class_the_job_reads(module):
  # A job reading options.view_as(X) must list X's flags in its --help.
  source = (REPO / (module.replace('.', '/') + '.py')).read_text()
  used = set(re.findall(r'view_as\((?:opts\.)?(\w+)\)', source))
  listed = {cls.__name__ for _, classes in JOBS[module].FLAG_GROUPS
            for cls in classes}
  beams = {'StandardOptions', 'TestOptions', 'KafkaStreamsRunnerOptions',
           'PrismRunnerOptions', 'GoogleCloudOptions'}
  assert used - beams <= listed, used - beams - listed


@pytest.mark.parametrize('module, typo, nearest', [
    ('beam_jobs.score_stream', '--max_recods', '--max_records'),
    ('beam_jobs.score_stream', '--model_signture', '--model_signature'),
    ('beam_jobs.backfill', '--file-format', '--file_format'),
    ('beam_jobs.ingest_examples', '--split-by', '--split_by'),
])
def test_an_unknown_flag_fails_fast_naming_the_nearest(module, typo, nearest,
                                                      capsys):
  for argv in ([typo, '10'], [f'{typo}=10']):
    with pytest.raises(SystemExit) as exit_:
      JOBS[module].parse_options(['--input_topic', 'x', *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f'error: unknown flag {typo} (did you mean {nearest}?)' in err
    assert '10' not in err.split('error:')[1]  # never the value


def test_the_typo_of_the_issue_exits_2_before_anything_starts():
  started = time.monotonic()
  result = run_module('beam_jobs.score_stream', '--input_topic', 'events',
                      '--model_dir', '/nowhere', '--max_recods', '10')
  assert result.returncode == 2
  assert ('error: unknown flag --max_recods (did you mean --max_records?)'
          in result.stderr)
  assert time.monotonic() - started < 15


def test_a_flag_nobody_knows_points_to_help(capsys):
  with pytest.raises(SystemExit):
    score_stream.parse_options(['--colour', 'blue'])
  assert ('unknown flag --colour (python -m beam_jobs.score_stream --help '
          'lists the flags)') in capsys.readouterr().err


def test_a_value_without_a_flag_fails(capsys):
  with pytest.raises(SystemExit) as exit_:
    score_stream.parse_options(['--kafka_config', 'a=1', 'b=2'])
  assert exit_.value.code == 2
  assert "unexpected value 'b=2'" in capsys.readouterr().err


def test_bad_values_of_the_jobs_flags_fail_with_argparse(capsys):
  with pytest.raises(SystemExit) as exit_:
    score_stream.parse_options(['--max_records', 'ten'])
  assert exit_.value.code == 2
  assert "argument --max_records: invalid int value: 'ten'" in (
      capsys.readouterr().err)
  with pytest.raises(SystemExit):
    backfill.parse_options(['--window', 'weekly'])


def test_one_job_does_not_accept_another_jobs_flags(capsys):
  # Beam registers every imported options class; each job checks its own.
  with pytest.raises(SystemExit):
    score_stream.parse_options(['--file_format', 'jsonl'])
  assert 'unknown flag --file_format' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    backfill.parse_options(['--dedup_horizon_s', '60'])


def test_beam_and_dataflow_options_pass_through_in_both_forms():
  argv = ['--input_topic', 'events', '--runner', 'DataflowRunner',
          '--project=p', '--region', 'r', '--temp_location=gs://b/tmp',
          '--experiments=use_runner_v2', '--experiments', 'shuffle_mode=service',
          '--dataflow_service_options=enable_prime', '--labels', 'team=ml',
          '--labels=env=dev', '--no_use_public_ips', '--streaming',
          '--max_num_workers', '4', '--sdk_location=container',
          '--bootstrap_servers=b:9092', '--kafka_config', 'acks=all',
          '--kafka_config=linger.ms=5', '--log_level=warning']
  options = score_stream.parse_options(argv)
  assert options.view_as(StandardOptions).runner == 'DataflowRunner'
  assert options.view_as(StandardOptions).streaming
  cloud = options.view_as(GoogleCloudOptions)
  assert (cloud.project, cloud.region) == ('p', 'r')
  assert cloud.labels == ['team=ml', 'env=dev']
  assert cloud.dataflow_service_options == ['enable_prime']
  assert options.view_as(DebugOptions).experiments == [
      'use_runner_v2', 'shuffle_mode=service']
  assert options.view_as(WorkerOptions).use_public_ips is False
  assert options.view_as(WorkerOptions).max_num_workers == 4
  assert opts.bootstrap_servers(options) == 'b:9092'
  assert options.view_as(opts.KafkaOptions).kafka_config == [
      'acks=all', 'linger.ms=5']
  assert options.view_as(opts.LogOptions).log_level == 'WARNING'
  # What the jobs used before: PipelineOptions(argv), the same values.
  assert options.get_all_options() == PipelineOptions(argv).get_all_options()


def test_nearest_flag_prefers_the_jobs_own_flags():
  assert cli.nearest_flag('--kafka-config', ['--kafka_config'],
                          ['--kafka_topic']) == '--kafka_config'
  assert cli.nearest_flag('--projet', ['--kafka_config'],
                          ['--project', '--region']) == '--project'
  assert cli.nearest_flag('--zzz', ['--kafka_config'], ['--project']) is None


def test_scripts_take_the_jobs_spelling_and_keep_the_old_one():
  parser = argparse.ArgumentParser()
  parser.add_argument('--model_dir')
  sub = parser.add_subparsers(dest='command')
  sub.add_parser('start').add_argument('--data_dir')
  assert spelling.underscore_spellings(
      ['--model-dir', 'm', 'start', '--data-dir=d', '--other-flag', 'x'],
      parser) == ['--model_dir', 'm', 'start', '--data_dir=d',
                  '--other-flag', 'x']


def test_run_local_help_lists_underscore_flags_only():
  result = run_module('beam_jobs.demo', '--help')
  assert '--model_dir' in result.stdout and '--malformed_fraction' in (
      result.stdout)
  assert '--model-dir' not in result.stdout
  assert '--window-s' not in result.stdout
  broker_help = run_module('beam_jobs.local_broker', 'start', '--help')
  assert '--data_dir' in broker_help.stdout


def test_run_local_accepts_the_old_hyphen_spellings(monkeypatch):
  seen = []

  def stop_here(model_dir):
    seen.append(model_dir)
    raise SystemExit(0)

  monkeypatch.setattr(demo, 'ensure_demo_model', stop_here)
  monkeypatch.setattr(demo.logs, 'configure', lambda *a, **k: None)
  for argv in (['--model-dir', 'a', '--malformed-fraction', '0.1',
                '--window-s', '3', '--broker-kind', 'tansu'],
               ['--model_dir=b', '--window_size_s', '3']):
    with pytest.raises(SystemExit):
      demo.main(argv)
  assert seen == ['a', 'b']
