"""The model directory as the page shows it: versions and their metrics.

A version is ``<model_dir>/<n>/``; whether it is complete, and can serve,
is models/versions.py's rule, the one the jobs load by. Read without
TensorFlow: local directories with ``os``, others (``gs://``) with Beam's
FileSystems, imported only then. metrics.json files are read again only
when they change.
"""

import json
import logging
import os
import posixpath
from typing import Optional

from models import versions as versions_lib

_LOGGER = logging.getLogger(__name__)

METRICS_FILE = versions_lib.METRICS_FILE
# A metrics.json larger than this is not read (it is shown as such).
MAX_METRICS_BYTES = 1 << 20


class _Local:
  join = staticmethod(os.path.join)

  @staticmethod
  def names(path):
    return os.listdir(path)

  @staticmethod
  def exists(path):
    return os.path.exists(path)

  @staticmethod
  def stamp(path):
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size)

  @staticmethod
  def read(path):
    with open(path, 'rb') as f:
      return f.read(MAX_METRICS_BYTES + 1)


class _Remote:
  """Any Beam FileSystems path (gs://...)."""
  join = staticmethod(posixpath.join)

  def __init__(self):
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    self.fs = FileSystems

  def names(self, path):
    found = set()
    for m in self.fs.match([path.rstrip('/') + '/*'])[0].metadata_list:
      rel = m.path[len(path.rstrip('/')) + 1:]
      found.add(rel.split('/', 1)[0])
    return sorted(found)

  def exists(self, path):
    return self.fs.exists(path)

  def stamp(self, path):
    m = self.fs.match([path])[0].metadata_list[0]
    return (m.last_updated_in_seconds, m.size_in_bytes)

  def read(self, path):
    with self.fs.open(path) as f:
      return f.read(MAX_METRICS_BYTES + 1)


class ModelDir:
  """Scans ``root`` for versions; ``scan()`` returns one dict per version,
  newest first: ``version``, ``complete`` and ``metrics`` (a dict; empty
  until complete)."""

  def __init__(self, root: str):
    self.root = root
    self._fs = _Remote() if '://' in root and not root.startswith(
        'file://') else _Local()
    if root.startswith('file://'):
      self.root = root[len('file://'):]
    self._cache: dict = {}   # metrics path -> (stamp, metrics)

  def _metrics(self, path: str) -> dict:
    try:
      stamp = self._fs.stamp(path)
      cached = self._cache.get(path)
      if cached and cached[0] == stamp:
        return cached[1]
      data = self._fs.read(path)
      if len(data) > MAX_METRICS_BYTES:
        metrics = {'error': f'{METRICS_FILE} larger than '
                            f'{MAX_METRICS_BYTES} bytes'}
      else:
        metrics = json.loads(data)
        if not isinstance(metrics, dict):
          metrics = {'value': metrics}
    except (OSError, ValueError) as e:
      return {'error': f'unreadable {METRICS_FILE}: {e}'}
    self._cache[path] = (stamp, metrics)
    return metrics

  def scan(self) -> list[dict]:
    """The versions, newest first ([] when the directory is absent)."""
    try:
      names = self._fs.names(self.root)
    except (OSError, ValueError) as e:
      _LOGGER.info('model dir %s not readable: %s', self.root, e)
      return []
    out = []
    for name in names:
      name = name.rstrip('/')
      if not name.isdigit():
        continue
      vdir = self._fs.join(self.root, name)
      metrics_path = self._fs.join(vdir, METRICS_FILE)
      complete = versions_lib.is_complete_version(vdir)
      out.append({'version': int(name), 'complete': complete,
                  'metrics': self._metrics(metrics_path) if complete else {}})
    out.sort(key=lambda v: -v['version'])
    return out


def latest_complete(versions: list[dict]) -> Optional[int]:
  """The version a job started now would serve (the newest complete)."""
  return next((v['version'] for v in versions if v['complete']), None)
