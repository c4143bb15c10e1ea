"""Where the page's files are: its own (web/, in this package) and uPlot's.

uPlot (the charting library) comes from the npm registry only. It is
installed by ``scripts/ensure_status_assets.sh`` (``npm ci`` of web/'s
package.json and package-lock.json, versions and hashes pinned) into
``<venv>/share/kbi-status/node_modules`` (run_tests.sh and run_local.sh run
it); ``$KBI_STATUS_ASSETS`` names another node_modules' parent directory.
Nothing is copied into the repository.
"""

import os
import pathlib
import sys
from typing import Optional

WEB_DIR = pathlib.Path(__file__).with_name('web')
UPLOT_FILES = ('uPlot.iife.min.js', 'uPlot.min.css')
ENV = 'KBI_STATUS_ASSETS'
INSTALL_HINT = ('run scripts/ensure_status_assets.sh (npm ci of '
                'beam_jobs/status/web/package.json), or set $KBI_STATUS_ASSETS '
                'to the directory holding node_modules/uplot')


def default_root() -> pathlib.Path:
  return pathlib.Path(sys.prefix) / 'share' / 'kbi-status'


def uplot_dir(root: Optional[str] = None) -> pathlib.Path:
  """uPlot's dist/ directory.

  Raises:
    FileNotFoundError: uPlot is not installed there (the message says how).
  """
  base = pathlib.Path(root or os.environ.get(ENV) or default_root())
  dist = base / 'node_modules' / 'uplot' / 'dist'
  missing = [f for f in UPLOT_FILES if not (dist / f).is_file()]
  if missing:
    raise FileNotFoundError(f'uPlot not found at {dist} ({", ".join(missing)}'
                            f' missing): {INSTALL_HINT}')
  return dist
