"""Versioned model directories: which versions exist and are complete.

A model root (``--model_dir``) holds one directory per version, named by an
integer (TF Serving's layout)::

  <model_dir>/<version>/saved_model.pb    (or saved_model.pbtxt)
  <model_dir>/<version>/variables/variables.index, variables.data-*
  <model_dir>/<version>/metrics.json       written last

**A version is complete when its graph, its variables index and
metrics.json exist**: exporters (models/export.py) write metrics.json last,
so a version being written, or one whose export failed half way, is never
served, listed or promoted. This module is the one definition of that, for
the exporters, the serving handler, the jobs and the operator tools (the
status page too). Local paths are read with ``os``, remote ones (gs://) with
Beam's FileSystems (imported only then), paths on filesystems only
TensorFlow knows (e.g. ``ram://``) with ``tf.io.gfile``: nothing here
imports TensorFlow or Beam for a local directory.
"""

import glob
import json
import os
import posixpath
from typing import Optional

METRICS_FILE = 'metrics.json'
GRAPH_FILES = ('saved_model.pb', 'saved_model.pbtxt')
# TensorFlow writes a variables index even for a model without variables.
VARIABLES_INDEX = posixpath.join('variables', 'variables.index')


def join(base: str, *parts: str) -> str:
  """``base/parts...`` for a local path or a URL (gs://...)."""
  base = os.fspath(base)
  if '://' in base:
    return posixpath.join(base, *parts)
  return os.path.join(base, *parts)


def _is_local(path: str) -> bool:
  return '://' not in path or path.startswith('file://')


def _local(path: str) -> str:
  return path[len('file://'):] if path.startswith('file://') else path


def _beam():
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  return FileSystems


def _beam_reads(path: str) -> bool:
  try:
    _beam().get_filesystem(path)
    return True
  except ValueError:
    return False


def _gfile():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  return tf.io.gfile


def exists(path: str) -> bool:
  try:
    if _is_local(path):
      return os.path.exists(_local(path))
    if _beam_reads(path):
      return _beam().exists(path)
    return _gfile().exists(path)
  except Exception:  # pylint: disable=broad-except
    return False


def _glob(pattern: str) -> list[str]:
  if _is_local(pattern):
    return glob.glob(_local(pattern))
  if _beam_reads(pattern):
    return [m.path for m in _beam().match([pattern])[0].metadata_list]
  return list(_gfile().glob(pattern))


def version_dir(model_dir: str, version: int) -> str:
  """The directory of ``version`` under ``model_dir``."""
  return join(model_dir, str(int(version)))


def is_saved_model(path: str) -> bool:
  """Whether ``path`` holds a SavedModel graph (complete or not)."""
  return any(exists(join(path, name)) for name in GRAPH_FILES)


def is_complete_version(path: str) -> bool:
  """Whether a version directory is complete and safe to load (module
  docstring)."""
  return (is_saved_model(path) and exists(join(path, VARIABLES_INDEX)) and
          exists(join(path, METRICS_FILE)))


def list_versions(model_dir: str) -> list[int]:
  """Complete versions under ``model_dir``, ascending ([] if none/absent)."""
  model_dir = os.fspath(model_dir)
  try:
    paths = _glob(join(model_dir, '*', METRICS_FILE))
  except Exception:  # pylint: disable=broad-except
    return []
  versions = []
  for path in paths:
    name = posixpath.basename(posixpath.dirname(path.rstrip('/')))
    if name.isdigit() and is_complete_version(join(model_dir, name)):
      versions.append(int(name))
  return sorted(versions)


def list_version_dirs(model_dir: str) -> list[int]:
  """Every integer-named directory under ``model_dir``, complete or not,
  ascending (for listings that show incomplete versions too)."""
  model_dir = os.fspath(model_dir)
  try:
    if _is_local(model_dir):
      names = set(os.listdir(_local(model_dir)))
    else:
      # Object stores hold files, not directories: a version directory is
      # the first path segment of the files below model_dir.
      prefix = model_dir.rstrip('/') + '/'
      names = {p[len(prefix):].split('/', 1)[0]
               for p in _glob(join(model_dir, '*', '*'))
               if p.startswith(prefix)}
  except Exception:  # pylint: disable=broad-except
    return []
  return sorted(int(n) for n in names if n.isdigit())


def latest_version(model_dir: str) -> Optional[int]:
  """The highest complete version, or None."""
  versions = list_versions(model_dir)
  return versions[-1] if versions else None


def read_metrics(path: str) -> dict:
  """metrics.json of a version directory."""
  path = join(os.fspath(path), METRICS_FILE)
  if _is_local(path):
    with open(_local(path), encoding='utf-8') as f:
      return json.load(f)
  if _beam_reads(path):
    with _beam().open(path) as f:
      return json.loads(f.read().decode('utf-8'))
  with _gfile().GFile(path, 'r') as f:
    return json.loads(f.read())


__all__ = ['METRICS_FILE', 'is_complete_version', 'is_saved_model', 'join',
           'latest_version', 'list_version_dirs', 'list_versions',
           'read_metrics', 'version_dir']
