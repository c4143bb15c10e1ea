"""The reliability scenarios as one table (the figures behind the tests).

Runs the streaming job as a real subprocess against an embedded noida
broker (or ``KAFKA_BOOTSTRAP_SERVERS``, except the broker restart, which
needs a broker this script can stop), with a trained demo model:

* crash/restart: events at a steady rate, the job SIGKILLed at random
  moments and restarted with the same consumer group each time;
* the same with ``--dedup_horizon_s`` (effectively-once output);
* a broker restart mid-stream (noida, which keeps its data on disk).

Columns: in = produced, scored = distinct ids with a prediction, dead =
distinct dead-lettered ids, lost = ids on the input topic with neither,
dups = predictions beyond one per id, ddups = dead letters beyond one per
input record, !in / !out = records the broker
itself lost (acknowledged, then gone after its restart).

  python -m bench.reliability_table              # ~6 minutes
  python -m bench.reliability_table --events 50000 --kills 5
"""

import argparse
import os
import sys
import tempfile
import uuid

from beam_jobs import demo, local_broker
from beam_jobs import fault_harness as rel
from transforms.kafka import admin


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--events', type=int, default=50_000,
                      help='events of the crash/restart row (default: 50000)')
  parser.add_argument('--kills', type=int, default=5,
                      help='SIGKILLs of the crash/restart row (default: 5)')
  parser.add_argument('--rate', type=float, default=1000,
                      help='events/s produced (default: 1000)')
  parser.add_argument('--model_dir', default=demo.DEFAULT_MODEL_DIR,
                      help=f'model root; a demo model is trained if empty '
                      f'(default: {demo.DEFAULT_MODEL_DIR})')
  args = parser.parse_args(argv)
  print(demo.ensure_demo_model(args.model_dir), flush=True)
  work = tempfile.mkdtemp(prefix='reliability-')
  rows = []
  external = os.environ.get('KAFKA_BOOTSTRAP_SERVERS')
  broker = None if external else local_broker.start('noida')
  try:
    config = ({'bootstrap.servers': external} if external else
              broker.client_config())
    config['log_level'] = 0
    bootstrap = config['bootstrap.servers']

    def topics() -> dict:
      run = uuid.uuid4().hex[:6]
      names = {'in': f'rel-in-{run}', 'out': f'rel-out-{run}',
               'dlq': f'rel-dlq-{run}'}
      for kind, topic in names.items():
        admin.create_topic(config, topic, 4 if kind == 'in' else 2,
                           config={'retention.ms': '-1'})
      return names

    rows.append(rel.crash_restart(
        config, bootstrap, topics(), args.model_dir,
        os.path.join(work, 'crash.log'), n=args.events, rate=args.rate,
        kills=args.kills, seed=1,
        scenario=f'crash/restart ({args.kills} x SIGKILL)'))
    print(rows[-1].row(), flush=True)
    rows.append(rel.crash_restart(
        config, bootstrap, topics(), args.model_dir,
        os.path.join(work, 'dedup.log'), n=args.events * 2 // 5,
        rate=args.rate, kills=3, seed=2,
        extra_args=['--dedup_horizon_s', '600'],
        scenario='crash/restart (3 x SIGKILL), dedup'))
    print(rows[-1].row(), flush=True)
  finally:
    if broker is not None:
      local_broker.stop(broker)
  restart_dir = os.path.join(work, 'broker-restart')
  os.makedirs(restart_dir)
  rows.append(rel.broker_restart(
      args.model_dir, os.path.join(restart_dir, 'job.log'), restart_dir,
      n=15_000, rate=args.rate, down_s=5))
  print(rows[-1].row(), flush=True)

  print(f'\n{rel.HEADER}')
  for row in rows:
    print(row.row())
  print(f'\njob logs under {work}')
  return 0 if all(r.lost == 0 for r in rows) else 1


if __name__ == '__main__':
  sys.exit(main())
