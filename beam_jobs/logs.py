"""Quiet, useful logs for the command-line tools: ``--log_level`` and what
it takes to make the default readable.

What the default (INFO) hides, and why:

* TensorFlow's C++ start-up lines (CUDA probing: ``cudart_stub``,
  ``cuInit``; ``oneDNN``; ``cpu_feature_guard``) on every start: noise on a
  CPU machine. ``TF_CPP_MIN_LOG_LEVEL=3`` (set before TensorFlow is first
  imported) hides ``cuInit`` and ``cpu_feature_guard``; TensorFlow 2.21
  writes the others through absl before reading it, so while ``import
  tensorflow`` runs, file descriptor 2 goes through a filter that drops
  exactly those lines (``_NATIVE_NOISE``) and passes everything else on.
  Errors of TensorFlow ops still reach Python as exceptions. ``--log_level
  DEBUG``, or TF_CPP_MIN_LOG_LEVEL set by the user, shows them all.
* INFO lines of libraries (Beam, TensorFlow, Google clients): this
  project's own modules log at INFO, libraries from WARNING up.
* Beam 2.77's "Resource module is not available" warning, logged on every
  model load when PyTorch is not installed (``ml/inference/base.py`` imports
  ``resource`` together with a torch-only module): it is not true and not
  actionable.

Every line the handler writes has secret-looking ``KEY=VALUE`` values
masked (transforms/redact.py): a config dict or a mistyped flag that ends
up in a log line shows ``sasl.password=***``.
"""

import contextlib
import importlib.abc
import importlib.util
import logging
import os
import re
import sys
import threading
from typing import Optional

from transforms import redact

LEVELS = ('DEBUG', 'INFO', 'WARNING', 'ERROR')
DEFAULT_LEVEL = 'INFO'
# This project's loggers: at the chosen level even when libraries are not.
PROJECT_LOGGERS = ('beam_jobs', 'models', 'transforms', 'examples',
                   'librdkafka', '__main__')
FORMAT = '%(asctime)s %(levelname)s %(name)s: %(message)s'

# TF_CPP_MIN_LOG_LEVEL per --log_level: 0 shows everything, 3 only FATAL.
_TF_CPP_LEVEL = {'DEBUG': '0', 'INFO': '3', 'WARNING': '3', 'ERROR': '3'}
_BEAM_NO_RESOURCE = 'Resource module is not available'


class MaskSecrets(logging.Filter):
  """Masks secret values in the formatted message of every record."""

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    masked = redact.mask_text(message)
    if masked != message:
      record.msg, record.args = masked, None
    return True


class DropKnownNoise(logging.Filter):
  """Drops Beam's false "Resource module is not available" warning."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not (record.name == 'root' and isinstance(record.msg, str) and
                record.msg.startswith(_BEAM_NO_RESOURCE))


# What the user set before this process changed anything: theirs wins.
_USER_TF_CPP_LEVEL = os.environ.get('TF_CPP_MIN_LOG_LEVEL')


def quiet_native_logs(level: str = DEFAULT_LEVEL) -> None:
  """Sets TensorFlow's C++ log threshold for ``level`` unless the user set
  TF_CPP_MIN_LOG_LEVEL; effective only before TensorFlow is first imported
  (the jobs import it after their flags are read)."""
  if _USER_TF_CPP_LEVEL is None:
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = _TF_CPP_LEVEL[level]
  _quiet_tensorflow_import(_USER_TF_CPP_LEVEL is None and level != 'DEBUG')


# TensorFlow's start-up lines that TF_CPP_MIN_LOG_LEVEL does not reach
# (TensorFlow 2.21, written while it is imported).
_NATIVE_NOISE = re.compile(
    rb'^WARNING: All log messages before absl::InitializeLog\(\) is called'
    rb'|^I\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\]'
    rb'|^To enable the following instructions: .* rebuild TensorFlow')


@contextlib.contextmanager
def _native_stderr_filtered():
  """File descriptor 2 through a filter dropping _NATIVE_NOISE lines."""
  sys.stderr.flush()
  original = os.dup(2)
  read_end, write_end = os.pipe()
  os.dup2(write_end, 2)
  os.close(write_end)

  def forward():
    with os.fdopen(read_end, 'rb') as lines:
      for line in lines:
        if not _NATIVE_NOISE.search(line):
          os.write(original, line)

  thread = threading.Thread(target=forward, name='stderr-filter',
                            daemon=True)
  thread.start()
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(original, 2)  # closes the pipe's write end: the filter ends
    thread.join(timeout=10)
    os.close(original)


class _QuietLoader(importlib.abc.Loader):
  """Runs a module's loader with _native_stderr_filtered."""

  def __init__(self, loader):
    self._loader = loader

  def create_module(self, spec):
    return self._loader.create_module(spec)

  def exec_module(self, module):
    with _native_stderr_filtered():
      self._loader.exec_module(module)

  def __getattr__(self, name):
    return getattr(self._loader, name)


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
  """Finds ``tensorflow`` once, with a _QuietLoader."""

  def find_spec(self, name, path=None, target=None):
    if name != 'tensorflow':
      return None
    if self in sys.meta_path:
      sys.meta_path.remove(self)
    spec = importlib.util.find_spec(name)
    if spec is not None and spec.loader is not None:
      spec.loader = _QuietLoader(spec.loader)
    return spec


def _quiet_tensorflow_import(quiet: bool) -> None:
  installed = [f for f in sys.meta_path
               if isinstance(f, _QuietTensorFlowImport)]
  if quiet and not installed and 'tensorflow' not in sys.modules:
    sys.meta_path.insert(0, _QuietTensorFlowImport())
  elif not quiet:
    for finder in installed:
      sys.meta_path.remove(finder)


def configure(level: Optional[str] = None, *, stream=None,
              fmt: str = FORMAT) -> logging.Handler:
  """Sets up logging of a command-line run (idempotent).

  Args:
    level: one of LEVELS (default INFO).
    stream: where lines go (default stderr).
    fmt: the line format.

  Returns:
    The handler installed on the root logger.

  Raises:
    ValueError: naming --log_level, for an unknown level.
  """
  level = (level or DEFAULT_LEVEL).upper()
  if level not in LEVELS:
    raise ValueError(f'--log_level must be one of {", ".join(LEVELS)}, got '
                     f'{level!r}')
  quiet_native_logs(level)
  root = logging.getLogger()
  for old in [h for h in root.handlers if getattr(h, '_kbi', False)]:
    root.removeHandler(old)
  handler = logging.StreamHandler(stream or sys.stderr)
  handler._kbi = True  # pylint: disable=protected-access
  handler.setFormatter(logging.Formatter(fmt))
  handler.addFilter(MaskSecrets())
  handler.addFilter(DropKnownNoise())
  root.addHandler(handler)
  numeric = getattr(logging, level)
  # Libraries from WARNING up unless DEBUG was asked for.
  root.setLevel(numeric if numeric != logging.INFO else logging.WARNING)
  for name in PROJECT_LOGGERS:
    logging.getLogger(name).setLevel(numeric)
  return handler


__all__ = ['DEFAULT_LEVEL', 'LEVELS', 'MaskSecrets', 'configure',
           'quiet_native_logs']
