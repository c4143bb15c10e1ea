"""``python -m beam_jobs.status``: see beam_jobs/status/__init__.py."""

import sys

from beam_jobs.status import cli

if __name__ == '__main__':
  sys.exit(cli.main())
