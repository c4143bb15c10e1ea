"""Quiet, useful logs: levels, TensorFlow's C++ noise, secrets masked."""

import io
import logging
import os
import subprocess
import sys

import pytest

from beam_jobs import logs

FAKE = 'hunter2-FAKE'


@pytest.fixture
def handler_out():
  """configure() writing to a buffer; root logger restored after."""
  root = logging.getLogger()
  saved = (root.level, list(root.handlers),
           {n: logging.getLogger(n).level for n in logs.PROJECT_LOGGERS},
           os.environ.get('TF_CPP_MIN_LOG_LEVEL'), list(sys.meta_path))
  out = io.StringIO()
  yield out
  for h in [h for h in root.handlers if getattr(h, '_kbi', False)]:
    root.removeHandler(h)
  root.setLevel(saved[0])
  for name, level in saved[2].items():
    logging.getLogger(name).setLevel(level)
  if saved[3] is None:
    os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None)
  sys.meta_path[:] = saved[4]


def test_info_shows_this_projects_lines_and_only_library_warnings(
    handler_out):
  logs.configure('INFO', stream=handler_out, fmt='%(name)s %(message)s')
  logging.getLogger('beam_jobs.score_stream').info('ours')
  logging.getLogger('apache_beam.runners').info('beam chatter')
  logging.getLogger('apache_beam.runners').warning('beam warning')
  logging.getLogger('librdkafka').error('FAIL: refused')
  assert handler_out.getvalue().splitlines() == [
      'beam_jobs.score_stream ours', 'apache_beam.runners beam warning',
      'librdkafka FAIL: refused']


def test_debug_shows_everything_and_error_little(handler_out):
  logs.configure('debug', stream=handler_out, fmt='%(message)s')
  logging.getLogger('apache_beam.runners').debug('beam detail')
  logs.configure('ERROR', stream=handler_out, fmt='%(message)s')
  logging.getLogger('beam_jobs.x').warning('hidden')
  logging.getLogger('beam_jobs.x').error('shown')
  assert handler_out.getvalue().splitlines() == ['beam detail', 'shown']
  # configure() replaces its handler: one line per record.
  assert sum(getattr(h, '_kbi', False)
             for h in logging.getLogger().handlers) == 1


def test_every_line_has_secrets_masked(handler_out):
  logs.configure('INFO', stream=handler_out, fmt='%(message)s')
  log = logging.getLogger('beam_jobs.x')
  log.info('config %s', {'bootstrap.servers': 'b:1', 'sasl.password': FAKE})
  log.warning(f'Unparseable argument: --kafka-config=sasl.password={FAKE}')
  text = handler_out.getvalue()
  assert FAKE not in text and "'sasl.password': '***'" in text


def test_beams_false_resource_warning_is_dropped(handler_out):
  logs.configure('INFO', stream=handler_out, fmt='%(message)s')
  logging.warning('Resource module is not available for current platform, '
                  'memory usage cannot be fetched.')
  logging.getLogger('beam_jobs.x').warning('kept')
  assert handler_out.getvalue() == 'kept\n'


def test_an_unknown_level_names_the_flag(handler_out):
  with pytest.raises(ValueError, match='--log_level must be one of'):
    logs.configure('LOUD')


_TF_START = '''
import sys
from beam_jobs import logs
logs.configure(sys.argv[1])
import tensorflow as tf
tf.constant(1.0) + 1
'''


@pytest.mark.parametrize('level, env, quiet', [
    ('INFO', {}, True),
    ('DEBUG', {}, False),
    ('INFO', {'TF_CPP_MIN_LOG_LEVEL': '0'}, False),  # the user's setting wins
])
def test_tensorflow_start_up_lines_only_when_asked(level, env, quiet):
  full = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  full.update(env)
  result = subprocess.run([sys.executable, '-c', _TF_START, level],
                          capture_output=True, text=True, env=full,
                          timeout=120, check=True)
  native = [l for l in result.stderr.splitlines()
            if 'cuda' in l.lower() or 'cpu_feature_guard' in l or
            'oneDNN' in l or 'absl::InitializeLog' in l]
  assert (native == []) == quiet, result.stderr
