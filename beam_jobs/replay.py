"""Replay dead letters: write their original records back to a topic.

After the cause of dead letters is fixed (a producer bug, a schema that was
too strict, a model that failed on some inputs), an operator re-injects the
records they stand for, so that the running job scores them:

  python -m beam_jobs.replay --bootstrap_servers localhost:9092 \\
      --from_topic events-dlq --to_topic events --reason extra_field

  python -m beam_jobs.replay --from_path ./dead-letters --to_topic events \\
      --reason malformed --since 2026-12-06T08:00:00Z --dry_run

Each dead letter becomes its original record again: key (a null key stays
null), value, original headers (not the ``dlq.*`` ones) and original
timestamp. A dead letter whose value was cut to fit its topic
(``dlq.truncated``) is fetched again from its source coordinates
(``dlq.source`` and ``dlq.position``: topic, partition, offset) and checked
against its SHA-256; when the source no longer has it (retention) or holds
something else, it is reported and not replayed. Filters: ``--reason``,
``--stage`` (repeatable), ``--source`` (a prefix such as
``kafka:events/3``), ``--since``/``--until`` (when the record was
dead-lettered). The dead-letter topic is read up to its end at start; files
are every ``*.jsonl`` under ``--from_path`` (local or gs://).

Replaying is at-least-once: the same dead letters replayed twice are
produced twice (the job's ``--dedup_horizon_s`` drops the second scoring).
Exit code 0 when everything selected was replayed, 1 when some could not
be, 2 on errors.
"""

import argparse
import dataclasses
import hashlib
import logging
import os
import sys
import time
import uuid
from typing import Iterable, Iterator, Optional, Sequence

import orjson
from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError, Producer,
                             TopicPartition)

from beam_jobs import logs
from transforms import dead_letters as dl
from transforms.kafka import admin, config_refs, offsets

_LOGGER = logging.getLogger(__name__)

_DLQ_PREFIX = 'dlq.'


@dataclasses.dataclass
class Letter:
  """A dead letter as read back, with what its record needs to be replayed.

  Attributes:
    letter: the DeadLetter (payload possibly truncated).
    truncated: the value on the dead-letter topic was cut to fit.
    original_size: the whole value's size (truncated letters).
    sha256: the whole value's SHA-256, hex (truncated letters).
    dead_lettered_at: epoch seconds, or None when unknown.
  """
  letter: dl.DeadLetter
  truncated: bool = False
  original_size: Optional[int] = None
  sha256: Optional[str] = None
  dead_lettered_at: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class Filters:
  """Which dead letters to replay (empty: all)."""
  reasons: frozenset = frozenset()
  stages: frozenset = frozenset()
  source_prefix: Optional[str] = None
  since: Optional[float] = None
  until: Optional[float] = None

  def accepts(self, item: Letter) -> bool:
    d = item.letter
    if self.reasons and d.reason not in self.reasons:
      return False
    if self.stages and d.stage not in self.stages:
      return False
    if self.source_prefix and not d.source.startswith(self.source_prefix):
      return False
    at = item.dead_lettered_at
    if self.since is not None and (at is None or at < self.since):
      return False
    if self.until is not None and (at is None or at >= self.until):
      return False
    return True


def letter_from_message(message) -> Letter:
  """A dead-letter topic record -> Letter (its ``dlq.*`` headers say what
  happened; the rest is the original record)."""
  original, dlq = [], {}
  for name, value in message.headers() or ():
    if name.startswith(_DLQ_PREFIX):
      dlq[name] = value
    else:
      original.append((name, value))
  text = lambda name, default=None: (
      dlq[name].decode('utf-8', 'replace') if name in dlq else default)
  ts_type, ts = message.timestamp()
  letter = dl.DeadLetter(
      stage=text('dlq.stage', '?'), reason=text('dlq.reason', '?'),
      detail=text('dlq.detail', ''), payload=message.value(),
      source=text('dlq.source', ''), position=int(text('dlq.position', -1)),
      event_id=text('dlq.event_id'), record_key=message.key(),
      time=float(text('dlq.time', 0) or 0), record_headers=tuple(original),
      record_timestamp_ms=ts if ts_type and ts >= 0 else None)
  size = text(dl.ORIGINAL_SIZE_HEADER)
  return Letter(letter, truncated=text(dl.TRUNCATED_HEADER) == 'true',
                original_size=None if size is None else int(size),
                sha256=text(dl.SHA256_HEADER),
                dead_lettered_at=letter.time or None)


def read_topic_letters(config: dict, topic: str,
                       timeout_s: float = 60.0) -> Iterator[Letter]:
  """Every dead letter on ``topic`` up to its end offsets at start."""
  ends = admin.end_offsets(config, topic, timeout_s)
  pending = {p for p, end in ends.items() if end > 0}
  consumer = Consumer(dict(config, **{
      'group.id': f'kbi-replay-{uuid.uuid4().hex[:8]}',
      'enable.auto.commit': False, 'enable.partition.eof': True}))
  try:
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING)
                     for p in pending])
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
      for m in consumer.consume(num_messages=1000, timeout=0.5):
        err = m.error()
        if err is not None:
          if err.code() == KafkaError._PARTITION_EOF:
            pending.discard(m.partition())
          continue
        if m.offset() < ends[m.partition()]:
          yield letter_from_message(m)
        if m.offset() + 1 >= ends[m.partition()]:
          pending.discard(m.partition())
    if pending:
      raise TimeoutError(f'{topic}: partitions {sorted(pending)} not read '
                         f'to their end in {timeout_s:g}s')
  finally:
    consumer.close()


def read_file_letters(path: str) -> Iterator[Letter]:
  """Every dead letter in the ``*.jsonl`` files under ``path``."""
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
  pattern = FileSystems.join(path.rstrip('/'), '*.jsonl')
  matched = FileSystems.match([pattern])[0].metadata_list
  for meta in sorted(matched, key=lambda m: m.path):
    with FileSystems.open(meta.path) as f:
      for line in f.read().splitlines():
        if line.strip():
          letter = dl.DeadLetter.from_dict(orjson.loads(line))
          yield Letter(letter, dead_lettered_at=letter.time or None)


def _kafka_coordinates(source: str) -> Optional[tuple[str, int]]:
  if not source.startswith('kafka:') or '/' not in source:
    return None
  topic, _, partition = source[len('kafka:'):].rpartition('/')
  try:
    return topic, int(partition)
  except ValueError:
    return None


class Refetcher:
  """Fetches records again from their source topic by offset."""

  def __init__(self, config: dict):
    self._consumer = Consumer(dict(config, **{
        'group.id': f'kbi-replay-{uuid.uuid4().hex[:8]}',
        'enable.auto.commit': False, 'auto.offset.reset': 'error'}))

  def fetch(self, item: Letter, timeout_s: float = 10.0
           ) -> tuple[Optional[dl.DeadLetter], str]:
    """(the dead letter with the whole original record, '') or (None, why)."""
    d = item.letter
    where = _kafka_coordinates(d.source)
    if where is None or d.position < 0:
      return None, f'no Kafka source coordinates ({d.source!r})'
    topic, partition = where
    self._consumer.assign([TopicPartition(topic, partition, d.position)])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
      m = self._consumer.poll(0.5)
      if m is None:
        continue
      if m.error() is not None:
        if m.error().code() == KafkaError._AUTO_OFFSET_RESET:
          return None, (f'{topic}[{partition}] offset {d.position} is no '
                        f'longer in the log (retention)')
        continue
      if m.offset() != d.position:
        return None, (f'{topic}[{partition}] offset {d.position} is gone '
                      f'(first available: {m.offset()})')
      value = m.value()
      if item.sha256 and hashlib.sha256(value or b'').hexdigest() != (
          item.sha256):
        return None, (f'{topic}[{partition}] offset {d.position} holds '
                      f'another record (SHA-256 differs)')
      ts_type, ts = m.timestamp()
      return dataclasses.replace(
          d, payload=value, record_key=m.key(),
          record_headers=tuple(m.headers() or ()),
          record_timestamp_ms=ts if ts_type and ts >= 0 else None), ''
    return None, f'{topic}[{partition}] offset {d.position}: no answer'

  def close(self) -> None:
    self._consumer.close()


@dataclasses.dataclass
class ReplayReport:
  """What a replay did."""
  read: int = 0
  selected: int = 0
  replayed: int = 0
  refetched: int = 0
  unrecoverable: list = dataclasses.field(default_factory=list)
  by_reason: dict = dataclasses.field(default_factory=dict)

  def format(self, to_topic: str, dry_run: bool) -> str:
    verb = 'would replay' if dry_run else 'replayed'
    lines = [f'dead letters read {self.read}, selected {self.selected}, '
             f'{verb} {self.replayed} to {to_topic} (refetched from their '
             f'source: {self.refetched}), not replayable '
             f'{len(self.unrecoverable)}',
             f'by reason: {dict(sorted(self.by_reason.items()))}']
    for source, position, why in self.unrecoverable[:20]:
      lines.append(f'  not replayed: {source}@{position}: {why}')
    if len(self.unrecoverable) > 20:
      lines.append(f'  ... and {len(self.unrecoverable) - 20} more')
    return '\n'.join(lines)


def replay(letters: Iterable[Letter], filters: Filters, *,
           producer: Optional[Producer], to_topic: str,
           refetcher: Optional[Refetcher]) -> ReplayReport:
  """Writes the selected dead letters' original records to ``to_topic``
  (``producer`` None: a dry run that only counts)."""
  report = ReplayReport()
  failures = []
  for item in letters:
    report.read += 1
    if not filters.accepts(item):
      continue
    report.selected += 1
    d = item.letter
    report.by_reason[d.reason] = report.by_reason.get(d.reason, 0) + 1
    if item.truncated:
      whole, why = (refetcher.fetch(item) if refetcher is not None else
                    (None, 'truncated and no source to fetch it from'))
      if whole is None:
        report.unrecoverable.append((d.source, d.position, why))
        continue
      d = whole
      report.refetched += 1
    if producer is not None:
      kwargs = ({'timestamp': d.record_timestamp_ms}
                if d.record_timestamp_ms is not None else {})
      producer.produce(
          to_topic, value=d.payload, key=d.record_key,
          headers=list(d.record_headers) or None,
          on_delivery=lambda err, msg: err and failures.append(err),
          **kwargs)
      producer.poll(0)
    report.replayed += 1
  if producer is not None:
    left = producer.flush(60)
    if left or failures:
      raise RuntimeError(f'{left + len(failures)} replayed record(s) were '
                         f'not delivered to {to_topic}: '
                         f'{failures[:1] or "flush timed out"}')
  return report


def _time_arg(value: str) -> float:
  try:
    return offsets.to_timestamp(value).micros / 1e6
  except ValueError as e:
    raise argparse.ArgumentTypeError(f'{value!r}: {e}') from None


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog='python -m beam_jobs.replay',
      description='Writes dead letters back to a topic as their original '
      'records (key, value, headers, timestamp).')
  parser.add_argument('--bootstrap_servers',
                      default=os.environ.get('KAFKA_BOOTSTRAP_SERVERS',
                                             'localhost:9092'),
                      help='HOST:PORT[,...] (default: '
                      '$KAFKA_BOOTSTRAP_SERVERS or localhost:9092)')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--from_topic', help='dead-letter topic to read')
  source.add_argument('--from_path',
                      help='directory or gs:// prefix of dead-letter JSONL '
                      'files')
  parser.add_argument('--to_topic', required=True,
                      help='topic to write the original records to (the '
                      'job\'s --input_topic)')
  parser.add_argument('--reason', action='append', default=[],
                      help='replay only this reason (e.g. extra_field), '
                      'repeatable (default: every reason)')
  parser.add_argument('--stage', action='append', default=[],
                      help='replay only this stage (parse, validate, window, '
                      'inference, sink), repeatable (default: every stage)')
  parser.add_argument('--source', default=None,
                      help='replay only records from sources starting with '
                      'this, e.g. kafka:events/3 (default: any)')
  parser.add_argument('--since', type=_time_arg, default=None,
                      help='dead-lettered at or after this ISO-8601 time '
                      '(default: any)')
  parser.add_argument('--until', type=_time_arg, default=None,
                      help='dead-lettered before this ISO-8601 time '
                      '(default: any)')
  parser.add_argument('--dry_run', action='store_true',
                      help='count what would be replayed; write nothing')
  parser.add_argument('--kafka_config', action='append', default=[],
                      help='extra librdkafka KEY=VALUE, repeatable; @FILE, '
                      '@secret:... as for the jobs (default: none)')
  parser.add_argument('--log_level', default=logs.DEFAULT_LEVEL,
                      choices=logs.LEVELS,
                      help=f'log level (default: {logs.DEFAULT_LEVEL})')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = _parser()
  args = parser.parse_args(argv)
  logs.configure(args.log_level)
  try:
    config = config_refs.resolve(dict(
        config_refs.parse_entries(args.kafka_config),
        **{'bootstrap.servers': args.bootstrap_servers}))
  except ValueError as e:
    parser.error(f'--kafka_config: {e}')
  filters = Filters(frozenset(args.reason), frozenset(args.stage),
                    args.source, args.since, args.until)
  producer = refetcher = None
  try:
    topics = [args.to_topic] + ([args.from_topic] if args.from_topic else [])
    admin.topic_partitions(config, topics, timeout_s=30)
    letters = (read_topic_letters(config, args.from_topic) if args.from_topic
               else read_file_letters(args.from_path))
    if not args.dry_run:
      producer = Producer(dict(config, **{'enable.idempotence': True,
                                          'linger.ms': 5}))
    refetcher = Refetcher(config)
    report = replay(letters, filters, producer=producer,
                    to_topic=args.to_topic, refetcher=refetcher)
  except (admin.KafkaUnavailableError, admin.TopicNotFoundError,
          TimeoutError, RuntimeError, OSError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  finally:
    if refetcher is not None:
      refetcher.close()
  print(report.format(args.to_topic, args.dry_run))
  return 1 if report.unrecoverable else 0


if __name__ == '__main__':
  sys.exit(main())
