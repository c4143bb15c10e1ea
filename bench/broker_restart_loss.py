"""Acknowledged writes an embedded broker loses when it restarts.

One run: a broker with one 4-partition topic (keeping everything, or
``--retention_s`` as the demo's topics), optionally ``--prefill`` records
written first as fast as possible (a long run's log), then a producer at
``--rate`` records/s (acks=all) for ``--before_s`` seconds;
``local_broker.stop`` (noida: Kafka port closed, saved, then SIGTERM; with
``--sigterm_only`` SIGTERM alone, as ``noida-db down`` or Ctrl-C),
``--down_s`` seconds down, ``local_broker.start`` on the same port and
data directory; ``--after_s`` more seconds of production; then the whole
topic is read back. A record is lost if its delivery was acknowledged and
its key is not on the topic. The table also gives when the lost records
were acknowledged, relative to the stop request, and how long the stop
took. Results: docs/brokers.md.

  python -m bench.broker_restart_loss --broker noida --rates 500 3000 --runs 5
  python -m bench.broker_restart_loss --broker noida --sigterm_only
  python -m bench.broker_restart_loss --broker noida --prefill 1000000 \\
      --rates 500
  python -m bench.broker_restart_loss --broker tansu --rates 500 --runs 1
"""

import argparse
import shutil
import sys
import tempfile
from typing import Optional

from beam_jobs import local_broker
from beam_jobs.broker_restarts import HEADER, restart_once


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m bench.broker_restart_loss',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--broker', choices=local_broker.KINDS,
                      default=local_broker.DEFAULT_KIND,
                      help='embedded broker (default: %(default)s)')
  parser.add_argument('--rates', type=float, nargs='+', default=[500, 3000],
                      help='records/s, one set of runs each '
                      '(default: 500 3000)')
  parser.add_argument('--runs', type=int, default=5,
                      help='restarts per rate (default: 5)')
  parser.add_argument('--before_s', type=float, default=60,
                      help='seconds of production before the stop '
                      '(default: 60)')
  parser.add_argument('--down_s', type=float, default=2,
                      help='seconds the broker stays down (default: 2)')
  parser.add_argument('--after_s', type=float, default=10,
                      help='seconds of production after the restart '
                      '(default: 10)')
  parser.add_argument('--prefill', type=int, default=0,
                      help='records written before, as fast as possible '
                      '(default: 0)')
  parser.add_argument('--retention_s', type=float, default=0,
                      help='topic retention as for the demo topics; 0 keeps '
                      'everything (default: 0: retention would delete what '
                      'is being counted; --before_s x --rate sets the log '
                      'size instead)')
  parser.add_argument('--sigterm_only', action='store_true',
                      help='stop noida with SIGTERM alone (as noida-db down '
                      'or Ctrl-C) instead of local_broker.stop')
  args = parser.parse_args(argv)
  work_dir = tempfile.mkdtemp(prefix='kbi-restart-loss-')
  print(f'{args.broker}: {args.before_s:g} s of production, stop '
        f'({"SIGTERM alone" if args.sigterm_only else "local_broker.stop"}), '
        f'{args.down_s:g} s down, start, {args.after_s:g} s more; '
        f'topic retention '
        + (f'{args.retention_s:g} s' if args.retention_s > 0 else 'none'),
        flush=True)
  print(HEADER, flush=True)
  try:
    for rate in args.rates:
      for _ in range(args.runs):
        print(restart_once(args.broker, rate, before_s=args.before_s,
                           down_s=args.down_s, after_s=args.after_s,
                           prefill=args.prefill, retention_s=args.retention_s,
                           work_dir=work_dir,
                           sigterm_only=args.sigterm_only).row(), flush=True)
  finally:
    shutil.rmtree(work_dir, ignore_errors=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
