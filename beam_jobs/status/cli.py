"""The command line of ``python -m beam_jobs.status``: flags, the page or
``--once``."""

import argparse
import asyncio
import difflib
import json
import logging
import os
import sys
import textwrap
from typing import Optional, Sequence

from beam_jobs import logs
from beam_jobs.status import assets
from beam_jobs.status import table
from beam_jobs.status.collector import Collector, Settings
from transforms import redact
from transforms.kafka import admin, config_refs

_LOGGER = logging.getLogger(__name__)
PROG = 'python -m beam_jobs.status'
DEFAULT_GROUP = 'kbi-score-stream'


class _Parser(argparse.ArgumentParser):
  """Unknown flags name the nearest known one; errors mask secrets."""

  def error(self, message):
    self.print_usage(sys.stderr)
    self.exit(2, f'{self.prog}: error: {redact.mask_text(message)}\n')

  def parse_args(self, args=None, namespace=None):
    parsed, unknown = self.parse_known_args(args, namespace)
    for arg in unknown:
      name = arg.split('=', 1)[0]
      if not name.startswith('-'):
        self.error(f'unexpected value {redact.mask_arg(arg)!r}: every value '
                   f'follows its flag (--flag VALUE or --flag=VALUE)')
      known = [s for a in self._actions for s in a.option_strings
               if s.startswith('--')]
      close = difflib.get_close_matches(name.replace('-', '_').replace(
          '__', '--', 1), known, n=1, cutoff=0.75)
      hint = f'did you mean {close[0]}?' if close else f'{PROG} --help'
      self.error(f'unknown flag {name} ({hint})')
    return parsed


def _positive(kind):
  def parse(text):
    value = kind(text)
    if value <= 0:
      raise argparse.ArgumentTypeError(f'must be > 0, got {text}')
    return value
  parse.__name__ = kind.__name__
  return parse


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(prog=PROG, usage='%(prog)s [flags]', allow_abbrev=False,
              formatter_class=argparse.RawDescriptionHelpFormatter,
              description=textwrap.dedent(sys.modules[
                  'beam_jobs.status'].__doc__.split('\n\n', 1)[0]))
  k = p.add_argument_group('Kafka and the job')
  k.add_argument('--bootstrap_servers',
                 default=os.environ.get('KAFKA_BOOTSTRAP_SERVERS',
                                        'localhost:9092'),
                 help='host:port[,...] of the cluster the job uses (default: '
                 '$KAFKA_BOOTSTRAP_SERVERS or localhost:9092).')
  k.add_argument('--group', default=DEFAULT_GROUP,
                 help='The job\'s consumer group (its --consumer_group), '
                 'whose committed offsets give lag and consumed throughput '
                 f'(default: {DEFAULT_GROUP}).')
  k.add_argument('--input_topic', action='append', default=[],
                 help='The job\'s input topic, repeatable (default: every '
                 'topic --group has committed offsets for).')
  k.add_argument('--output_topic', action='append', default=[],
                 help='Prediction topic to tail (JSON rows), repeatable '
                 '(default: none).')
  k.add_argument('--dead_letter_topic', action='append', default=[],
                 help='Dead-letter topic to tail (dlq.* headers), repeatable '
                 '(default: none).')
  k.add_argument('--control_topic', default=None,
                 help='Deployments control topic: the latest JSON record per '
                 'key is shown, and fields primary/canary/shadow or '
                 '<role>_version naming a version mark it serving '
                 '(default: none).')
  k.add_argument('--model_dir', default=None,
                 help='Versioned model directory <model_dir>/<version>/ with '
                 'metrics.json, local or gs:// (default: none).')
  k.add_argument('--kafka_config', action='append', default=[],
                 help='Extra librdkafka KEY=VALUE, repeatable; @FILE, '
                 '@secret:projects/P/secrets/S and KEY=@secret:... as for '
                 'the jobs (default: none).')
  k.add_argument('--timeout_s', type=_positive(float), default=30.0,
                 help='Per Kafka request, seconds (default: 30).')
  w = p.add_argument_group('What is kept (memory: docs/status_page.md)')
  w.add_argument('--history_s', type=_positive(float), default=3600.0,
                 help='Seconds of history charted and kept (default: 3600).')
  w.add_argument('--bucket_s', type=_positive(float), default=10.0,
                 help='Seconds per chart bucket (default: 10).')
  w.add_argument('--window_s', type=_positive(float), default=300.0,
                 help='The "recent" window of the headline figures, tables '
                 'and thresholds, seconds (default: 300).')
  w.add_argument('--poll_s', type=_positive(float), default=2.0,
                 help='Seconds between offset samples (default: 2).')
  w.add_argument('--model_poll_s', type=_positive(float), default=10.0,
                 help='Seconds between model directory scans (default: 10).')
  w.add_argument('--backfill_records', type=int, default=10_000,
                 help='At start, read at most this many recent records per '
                 'partition of the output and dead-letter topics (and none '
                 'older than --history_s) (default: 10000).')
  w.add_argument('--max_behind', type=_positive(int), default=200_000,
                 help='Skip ahead when the tail is this many records behind '
                 'on a partition; charts then sample (default: 200000).')
  w.add_argument('--recent_dead_letters', type=_positive(int), default=20,
                 help='Latest dead letters shown (default: 20).')
  s = p.add_argument_group('The page')
  s.add_argument('--host', default='127.0.0.1',
                 help='Address to bind; anything but loopback exposes the '
                 'page (and dead-letter previews) to the network (default: '
                 '127.0.0.1).')
  s.add_argument('--port', type=int, default=8080,
                 help='Port, 0 for any free one (default: 8080).')
  o = p.add_argument_group('--once: a table instead of the page')
  o.add_argument('--once', action='store_true',
                 help='Print the summary table and exit: 0, or 1 above a '
                 'threshold, 2 on errors (default: off).')
  o.add_argument('--sample_s', type=_positive(float), default=5.0,
                 help='--once: seconds between the two offset samples that '
                 'give throughput (default: 5).')
  o.add_argument('--json', action='store_true',
                 help='--once: print the page\'s JSON document instead of '
                 'the table (default: off).')
  o.add_argument('--max_lag', type=int, default=None,
                 help='--once: exit 1 when the total lag exceeds this many '
                 'records (default: never).')
  o.add_argument('--max_dead_letter_rate', type=float, default=None,
                 help='--once: exit 1 when dead letters / (dead letters + '
                 'predictions) in the recent window exceed this fraction, '
                 'e.g. 0.01 (default: never).')
  o.add_argument('--max_latency_p99_s', type=float, default=None,
                 help='--once: exit 1 when the recent p99 of scored_time - '
                 'event_time exceeds this many seconds (default: never).')
  p.add_argument('--log_level', type=str.upper, choices=logs.LEVELS,
                 default='WARNING', help='Log level (default: WARNING).')
  return p


def settings_of(args: argparse.Namespace) -> Settings:
  """The collector's settings from parsed flags.

  Raises:
    ValueError: --kafka_config is unreadable.
  """
  config = config_refs.resolve(dict(
      config_refs.parse_entries(args.kafka_config),
      **{'bootstrap.servers': args.bootstrap_servers}))
  return Settings(
      client_config=config, group=args.group,
      input_topics=tuple(args.input_topic),
      output_topics=tuple(args.output_topic),
      dead_letter_topics=tuple(args.dead_letter_topic),
      control_topic=args.control_topic, model_dir=args.model_dir,
      poll_s=args.poll_s, model_poll_s=args.model_poll_s,
      bucket_s=args.bucket_s, history_s=args.history_s,
      window_s=args.window_s, backfill_records=max(0, args.backfill_records),
      max_behind=args.max_behind,
      recent_dead_letters=args.recent_dead_letters,
      timeout_s=args.timeout_s)


def run_once(collector: Collector, args) -> int:
  """Reads the recent window, samples offsets twice, prints, checks."""
  if not collector.catch_up(timeout_s=args.timeout_s):
    print(f'warning: the recent window was not read to its end in '
          f'{args.timeout_s:.0f}s; figures are partial', file=sys.stderr)
  import time  # pylint: disable=import-outside-toplevel
  time.sleep(args.sample_s)
  collector.sample_offsets()
  doc = collector.snapshot()
  if args.json:
    print(json.dumps(doc))
  else:
    print(table.format_table(doc))
  problems = table.exceeded(doc, table.Thresholds(
      max_lag=args.max_lag, max_dead_letter_rate=args.max_dead_letter_rate,
      max_latency_p99_s=args.max_latency_p99_s))
  for message in problems:
    print(message, file=sys.stderr)
  return 1 if problems else 0


def run_page(collector: Collector, args) -> int:
  """Serves the page until Ctrl-C / SIGTERM."""
  from beam_jobs.status import server  # pylint: disable=import-outside-toplevel
  app = server.make_app(collector.snapshot, assets.uplot_dir())
  collector.start()

  def ready(url):
    print(f'status page: {url} (Ctrl-C stops it)', flush=True)

  try:
    asyncio.run(server.serve(app, args.host, args.port, ready))
  except KeyboardInterrupt:
    pass
  return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
  import signal  # pylint: disable=import-outside-toplevel
  parser = build_parser()
  args = parser.parse_args(argv)
  logs.configure(args.log_level)
  if args.json and not args.once:
    parser.error('--json needs --once')
  try:
    settings = settings_of(args)
  except ValueError as e:
    parser.error(f'--kafka_config: {e}')
  if not args.once:
    try:
      assets.uplot_dir()
    except FileNotFoundError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
  # SIGTERM stops the page as Ctrl-C does.
  signal.signal(signal.SIGTERM, signal.default_int_handler)
  collector = Collector(settings)
  try:
    collector.open()
    return run_once(collector, args) if args.once else run_page(collector,
                                                                 args)
  except (admin.KafkaUnavailableError, admin.TopicNotFoundError,
          OSError) as e:
    print(f'error: {redact.mask_text(str(e))}', file=sys.stderr)
    return 2
  finally:
    collector.close()
