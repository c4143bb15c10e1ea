"""Starts bqemulator offline: ``bqemulator start`` minus the spatial abort.

Runs with the BigQuery emulator's OWN interpreter (``.venv-bqemu/bin/python``,
made by ``scripts/ensure_bq_emulator.sh``), never with the project's venv:
bqemulator needs pyarrow 26 / DuckDB 2.0, Beam needs pyarrow < 26.

bqemulator 1.4.0 runs ``INSTALL spatial; LOAD spatial`` when its DuckDB engine
starts and aborts if that fails. Offline (CI, this repository's tests) the
download of the extension always fails, so this launcher wraps the engine's
``_load_spatial`` to log the failure and carry on. Everything except
GEOGRAPHY columns and ``ST_*`` functions keeps working; the prediction rows
use neither. The Avro format extension is not loaded either (it too would be
downloaded); load jobs here use newline-delimited JSON.

Usage (arguments after ``--`` go to ``bqemulator start``)::

    .venv-bqemu/bin/python scripts/bq_emulator_launcher.py \\
        --rest-port 9050 --grpc-port 9060 --project test-project

Prints ``bq_emulator_launcher: spatial extension unavailable ...`` on stderr
when the spatial extension could not be loaded. ``KBI_BQEMU_OFFLINE=1`` skips
the download attempt (only an extension installed earlier is loaded): the
test fixtures set it, saving the ~2.5 s the failing request takes.
"""

import os
import sys


def _tolerate_missing_spatial(offline: bool) -> None:
  from bqemulator.storage import engine as engine_lib

  original = engine_lib.DuckDBEngine._load_spatial  # pylint: disable=protected-access

  def warn(e):
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    print('bq_emulator_launcher: spatial extension unavailable, GEOGRAPHY '
          f'disabled: {first_line[:300]}', file=sys.stderr, flush=True)

  def load_spatial_or_warn(self):
    try:
      if offline:
        # Only an extension installed earlier; no download attempt (~2.5 s
        # for the failed HTTP request).
        self._connection.execute('LOAD spatial')  # pylint: disable=protected-access
      else:
        original(self)
    except Exception as e:  # pylint: disable=broad-except
      warn(e)

  engine_lib.DuckDBEngine._load_spatial = load_spatial_or_warn  # pylint: disable=protected-access


def main(argv=None) -> None:
  argv = list(sys.argv[1:] if argv is None else argv)
  # Don't try to download the avro extension at start (offline it is one
  # more failed HTTP request); JSON and CSV loads don't need it.
  os.environ.setdefault('BQEMU_ENABLE_FORMAT_EXTENSIONS', 'false')
  _tolerate_missing_spatial(os.environ.get('KBI_BQEMU_OFFLINE') == '1')
  from bqemulator.cli import main as cli_main
  cli_main(['start', *argv], prog_name='bqemulator')  # pylint: disable=unexpected-keyword-arg


if __name__ == '__main__':
  main()
