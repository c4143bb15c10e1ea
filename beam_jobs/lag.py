"""Consumer-group lag: per-partition committed offset, log-end offset, lag.

Like the TensorFlow-IO Kafka tutorial's consumer-group check, for scripts
and alerts: the exit code is 1 when the total lag exceeds ``--max_lag``
(2 on errors), so ``python -m beam_jobs.lag ... --max_lag 10000 || page``.

  python -m beam_jobs.lag --bootstrap_servers localhost:9092 \\
      --group kbi-score-stream [--topic events] [--json] [--max_lag N]

Without ``--topic``, every topic the group has committed offsets for is
listed (through the admin API's group offsets).
"""

import argparse
import json
import os
import sys
from typing import Optional, Sequence

from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient

from transforms.kafka import admin, config_refs


def group_topics(client_config: dict, group: str,
                 timeout_s: float = 30.0) -> list[str]:
  """Topics for which ``group`` has committed offsets."""
  client = AdminClient(admin.admin_config(client_config))
  futures = client.list_consumer_group_offsets(
      [ConsumerGroupTopicPartitions(group)], request_timeout=timeout_s)
  result = futures[group].result(timeout=timeout_s)
  return sorted({tp.topic for tp in result.topic_partitions
                 if tp.offset >= 0})


def lag_rows(client_config: dict, group: str, topics: Sequence[str],
             timeout_s: float = 30.0) -> list[dict]:
  """One row per partition: topic, partition, committed, end, lag.

  A partition without a committed offset counts its whole log as lag
  (committed is reported as None).
  """
  rows = []
  for topic in topics:
    ends = admin.end_offsets(client_config, topic, timeout_s)
    committed = admin.committed_offsets(client_config, group, topic,
                                        timeout_s)
    for partition in sorted(ends):
      done = committed.get(partition)
      end = ends[partition]
      rows.append({'topic': topic, 'partition': partition,
                   'committed': done, 'end': end,
                   'lag': max(0, end - (done or 0))})
  return rows


def format_table(rows: list[dict]) -> str:
  lines = [f'{"topic":30} {"partition":>9} {"committed":>12} {"end":>12} '
           f'{"lag":>10}']
  for r in rows:
    committed = '-' if r['committed'] is None else str(r['committed'])
    lines.append(f'{r["topic"]:30} {r["partition"]:>9} {committed:>12} '
                 f'{r["end"]:>12} {r["lag"]:>10}')
  lines.append(f'{"total":30} {"":>9} {"":>12} {"":>12} '
               f'{sum(r["lag"] for r in rows):>10}')
  return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog='python -m beam_jobs.lag',
                                   description=__doc__.split('\n')[0])
  parser.add_argument('--bootstrap_servers',
                      default=os.environ.get('KAFKA_BOOTSTRAP_SERVERS',
                                             'localhost:9092'),
                      help='host:port[,...] (default: $KAFKA_BOOTSTRAP_SERVERS '
                      'or localhost:9092)')
  parser.add_argument('--group', required=True, help='consumer group')
  parser.add_argument('--topic', action='append', default=[],
                      help='topic to check, repeatable (default: every topic '
                      'the group has committed offsets for)')
  parser.add_argument('--max_lag', type=int, default=None,
                      help='exit 1 when the total lag exceeds this (default: '
                      'never)')
  parser.add_argument('--json', action='store_true',
                      help='print JSON rows instead of a table')
  parser.add_argument('--kafka_config', action='append', default=[],
                      help='extra librdkafka KEY=VALUE, repeatable; @FILE, '
                      '@secret:projects/P/secrets/S and KEY=@secret:... as '
                      'for the jobs')
  parser.add_argument('--timeout_s', type=float, default=30.0,
                      help='per request (default: 30)')
  args = parser.parse_args(argv)
  try:
    # Read here and now: this tool is its own "worker".
    config = config_refs.resolve(dict(
        config_refs.parse_entries(args.kafka_config),
        **{'bootstrap.servers': args.bootstrap_servers}))
  except ValueError as e:
    parser.error(f'--kafka_config: {e}')
  try:
    admin.wait_for_cluster(config, timeout_s=args.timeout_s)
    topics = args.topic or group_topics(config, args.group, args.timeout_s)
    if not topics:
      print(f'group {args.group!r} has no committed offsets; name --topic',
            file=sys.stderr)
      return 2
    rows = lag_rows(config, args.group, topics, args.timeout_s)
  except (admin.KafkaUnavailableError, admin.TopicNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  total = sum(r['lag'] for r in rows)
  print(json.dumps(rows) if args.json else format_table(rows))
  if args.max_lag is not None and total > args.max_lag:
    print(f'lag {total} exceeds --max_lag {args.max_lag}', file=sys.stderr)
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
