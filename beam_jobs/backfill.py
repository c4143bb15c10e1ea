"""The batch backfill: files or a Kafka time range, scored like the stream.

Reads events from files (``--input``, a glob, local or gs://) or from a
range of a Kafka topic (``--input_topic`` with ``--start_time`` and
``--end_time``), and runs score_stream's own transforms on them
(beam_jobs/scoring.py: the same parse and validation, window features, model
and dead letters) as a bounded pipeline. Window features use WindowFeatures'
exact batch implementation: each key's events in event-time order, which is
what the stream computes when each key's events arrive in order
(tests/backfill_parity_it_test.py checks that they match event by event).
Predictions go to the same sinks (``--output_path`` files, ``--bq_table``,
``--output_topic``), dead letters to ``--dead_letter_path`` or
``--dead_letter_topic``.

Inputs (``--file_format``, default auto = by the pattern's extension):
JSON lines (.jsonl/.ndjson/.json), CSV lines (.csv; the real UCI SUSY file
with ``--schema susy_csv``), each optionally compressed (.gz, .bz2, ...),
Parquet (.parquet) and TFRecord files of tf.train.Example (.tfrecord); see
transforms/sources.py for record positions, splitting and limits.
``--input_format`` decodes the lines of files with another extension and
the Kafka payloads. Without a time field in the schema (susy_csv), events
take ``--default_event_time`` (an ISO time, or file_mtime).

A Kafka range reads, per partition, from the first record whose record
timestamp is at or after ``--start_time`` up to (excluding) the first one at
or after ``--end_time`` (offsets_for_times): records are selected by their
Kafka timestamp, which the producers set to the event time; nothing is
committed.

Locally the job runs on Beam's FnApiRunner in this process:

  python -m beam_jobs.backfill --input 'events/*.jsonl' \\
      --model_dir ./models_out/susy --output_path ./predictions \\
      --output_file_format parquet --dead_letter_path ./dead-letters

  python -m beam_jobs.backfill --input SUSY.csv.gz --schema susy_csv \\
      --default_event_time 2026-01-01T00:00:00Z --model_dir ./models_out/susy \\
      --output_path ./predictions --dead_letter_path ./dead-letters

  python -m beam_jobs.backfill --bootstrap_servers localhost:9092 \\
      --input_topic events --start_time 2026-11-23T00:00:00Z \\
      --end_time 2026-11-24T00:00:00Z --model_dir ./models_out/susy \\
      --output_path ./predictions --dead_letter_path ./dead-letters

On Dataflow (every path gs://; the job checks):

  python -m beam_jobs.backfill --runner DataflowRunner \\
      --project P --region R --temp_location gs://B/tmp \\
      --setup_file ./setup.py --model_dir gs://B/models/susy \\
      --input 'gs://B/events/2026-11-*.jsonl.gz' \\
      --output_path gs://B/predictions --output_file_format parquet \\
      --dead_letter_path gs://B/dead-letters

Progress: every ``--progress_interval_s`` seconds each worker logs what it
has read, scored and dead-lettered and its rate; at the end the job prints a
summary (beam_jobs/summary.py: counts from the pipeline's metrics, dead
letters by reason, model versions, events/s). On runners whose
``run()`` returns at once (Dataflow), the launcher also polls the job's
metrics at that interval.

Local throughput (bench/backfill_bench.py, 1M SUSY-like JSON events ->
Parquet, 2-core machine shared with other work): ~55-73k events/s in
process; the figures and where the time goes are in that file's docstring.
``--direct_num_workers 2 --direct_running_mode multi_processing`` (worker
processes) was slower there, 37-44k events/s: every element between stages
passes through the runner process over gRPC, and on two cores the runner
competes with both workers. It can pay off with more cores than workers;
measure before using it.
"""

import dataclasses
import datetime
import logging
import sys
import threading
import time
import uuid
from typing import Optional, Sequence, Union

import apache_beam as beam
from apache_beam.options.pipeline_options import (PipelineOptions,
                                                  StandardOptions)

from beam_jobs import cli
from beam_jobs import config
from beam_jobs import engine as engine_lib
from beam_jobs import options as opts
from beam_jobs import outputs
from beam_jobs import scoring
from beam_jobs import summary as summary_lib
from models.handler import ModelLoadError
from transforms import sources
from transforms.kafka import StopAt, admin, choose, offsets
from transforms.prediction_rows import output_columns

_LOGGER = logging.getLogger(__name__)


class BackfillOptions(PipelineOptions):
  """Options of this job only (the shared groups are in beam_jobs/options)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--file_format', choices=sources.FILE_FORMATS, default='auto',
        help='File format: auto (by the --input extension: .jsonl/.ndjson/'
        '.json, .csv, .parquet, .tfrecord, each optionally compressed; '
        'other extensions are lines decoded per --input_format), jsonl, '
        'csv, lines (per --input_format), parquet, tfrecord (of '
        'tf.train.Example) (default: auto).')
    parser.add_argument(
        '--default_event_time', default=None,
        help='Event time of file records when the schema has no time field '
        '(e.g. --schema susy_csv): an ISO-8601 time such as '
        '2026-01-01T00:00:00Z, or file_mtime for each file\'s modification '
        'time (default: none; required then).')
    parser.add_argument(
        '--start_time', default=None,
        help='With --input_topic: first record time to read, ISO-8601 '
        '(inclusive, by Kafka record timestamp) (default: none; required '
        'with --input_topic).')
    parser.add_argument(
        '--end_time', default=None,
        help='With --input_topic: end of the range, ISO-8601 (exclusive) '
        '(default: none; required with --input_topic).')
    parser.add_argument(
        '--chunk_records', type=int, default=sources.DEFAULT_CHUNK_RECORDS,
        help='Records per element from the file source (default: '
        f'{sources.DEFAULT_CHUNK_RECORDS}).')
    parser.add_argument(
        '--split_mb', type=float,
        default=sources.DEFAULT_SPLIT_BYTES / (1 << 20),
        help='Uncompressed line files larger than this many MiB are read '
        'in splits of about this size, in parallel (default: '
        f'{sources.DEFAULT_SPLIT_BYTES >> 20}).')
    parser.add_argument(
        '--progress_interval_s', type=float, default=10.0,
        help='Seconds between progress lines of each worker (and of the '
        'launcher polling metrics on asynchronous runners); 0 turns them '
        'off (default: 10).')


PROG = 'python -m beam_jobs.backfill'
# --help, in this order (beam_jobs/cli.py).
FLAG_GROUPS = (opts.FILE_INPUT_FLAGS, ('Backfill', (BackfillOptions,)),
               opts.KAFKA_FLAGS, opts.EVENT_FLAGS, opts.WINDOW_FLAGS,
               opts.MODEL_FLAGS, opts.OUTPUT_FLAGS, opts.RUNNER_FLAGS)
# Where the summary's figures are: the ReportProgress steps' counters, and
# the scoring stages' dead letters by reason (as in score_stream).
SUMMARY_COUNTERS = summary_lib.CounterNames(
    read=(scoring.PROGRESS_NAMESPACE, scoring.READ),
    scored=(scoring.PROGRESS_NAMESPACE, scoring.SCORED),
    reasons=summary_lib.SCORING_DEAD_LETTERS)


parse_options = cli.options_parser(PROG, FLAG_GROUPS, __doc__)


def _iso_time(value: str, flag: str) -> float:
  try:
    return offsets.to_timestamp(value).micros / 1e6
  except ValueError as e:
    raise ValueError(f'{flag}: {e}') from None


@dataclasses.dataclass(frozen=True)
class FileInput:
  """--input files and how they are read."""
  pattern: str
  file_format: sources.FileFormat
  chunk_records: int
  split_bytes: int
  skip_header_lines: int
  default_time: Union[float, str, None]   # epoch seconds, 'file_mtime'


@dataclasses.dataclass(frozen=True)
class KafkaRange:
  """--input_topic read from --start_time up to --end_time."""
  start_time: str
  end_time: str


@dataclasses.dataclass(frozen=True)
class BackfillConfig:
  """Everything the backfill needs, resolved once from the flags."""
  scoring: config.ScoringSettings
  sinks: config.SinkSettings
  kafka: config.KafkaSettings
  files: Optional[FileInput]
  kafka_range: Optional[KafkaRange]
  progress_interval_s: float

  def source(self) -> str:
    """What is read, for logs."""
    if self.files is not None:
      return self.files.pattern
    return (f'{self.kafka.input_topic} [{self.kafka_range.start_time}, '
            f'{self.kafka_range.end_time})')


def _file_input(options: PipelineOptions, pattern: str,
                events: config.EventSettings) -> FileInput:
  job = options.view_as(BackfillOptions)
  schema = events.schema
  for flag in ('start_time', 'end_time'):
    if getattr(job, flag) is not None:
      raise ValueError(f'--{flag} is for a Kafka range (--input_topic), '
                       f'not for --input files')
  try:
    file_format = sources.resolve_file_format(pattern, job.file_format,
                                              events.input_format)
  except ValueError as e:
    raise ValueError(f'--input_format={events.input_format} with '
                     f'--file_format={job.file_format}: {e}') from None
  default = job.default_event_time
  if default is not None and default != sources.FILE_MTIME:
    default = _iso_time(default, '--default_event_time')
  if not schema.time_field and default is None:
    raise ValueError(
        f'--default_event_time is required: schema {schema.name!r} has no '
        f'time field (an ISO-8601 time, or {sources.FILE_MTIME})')
  if isinstance(default, float):
    latest = time.time() + schema.max_future_s
    if not schema.min_event_time <= default <= latest:
      raise ValueError(
          f'--default_event_time {job.default_event_time} is outside the '
          f'event times schema {schema.name!r} accepts (from '
          f'{_utc(schema.min_event_time)} to now + '
          f'{schema.max_future_s:.0f} s): every event would be a dead '
          f'letter')
  if file_format.payload_format == 'csv' and events.input_format == 'avro':
    raise ValueError('--input_format=avro cannot read line files')
  if file_format.payload_format is not None:
    events.check_payload_format(file_format.payload_format)
  header = 1 if (file_format.payload_format == 'csv' and
                 schema.csv_header) else 0
  return FileInput(pattern, file_format, job.chunk_records,
                   max(1, int(job.split_mb * (1 << 20))), header, default)


def _kafka_range(options: PipelineOptions,
                 kafka: config.KafkaSettings) -> KafkaRange:
  job = options.view_as(BackfillOptions)
  if kafka.kafka_io != 'python':
    raise ValueError('--kafka_io must be python for a backfill (the range '
                     'read needs start and stop times per partition)')
  if job.default_event_time is not None:
    raise ValueError('--default_event_time is for --input files; a Kafka '
                     'range uses record timestamps when the schema has no '
                     'time field')
  if job.start_time is None or job.end_time is None:
    raise ValueError('--start_time and --end_time are required with '
                     '--input_topic (ISO-8601, e.g. 2026-11-24T00:00:00Z)')
  start = _iso_time(job.start_time, '--start_time')
  end = _iso_time(job.end_time, '--end_time')
  if not start < end:
    raise ValueError(f'--end_time {job.end_time} must be after '
                     f'--start_time {job.start_time}')
  return KafkaRange(job.start_time, job.end_time)


def resolve(options: PipelineOptions) -> BackfillConfig:
  """The job's settings; rejects bad flags before anything starts
  (ValueError names the flag)."""
  job = options.view_as(BackfillOptions)
  pattern = options.view_as(opts.FileInputOptions).input
  if bool(pattern) == bool(options.view_as(opts.KafkaOptions).input_topic):
    raise ValueError('set exactly one input: --input (files) or '
                     '--input_topic (a Kafka range with --start_time and '
                     '--end_time)')
  scoring_settings = config.ScoringSettings.of(options)
  sinks = config.SinkSettings.of(options)
  kafka = config.KafkaSettings.of(options, validate_input=not pattern)
  if job.chunk_records < 1:
    raise ValueError(f'--chunk_records must be >= 1, got {job.chunk_records}')
  if not job.split_mb > 0:
    raise ValueError(f'--split_mb must be > 0, got {job.split_mb}')
  opts.validate_local_tuning(options)
  if job.progress_interval_s < 0:
    raise ValueError(f'--progress_interval_s must be >= 0, got '
                     f'{job.progress_interval_s}')
  files = kafka_range = None
  if pattern:
    files = _file_input(options, pattern, scoring_settings.events)
  else:
    kafka_range = _kafka_range(options, kafka)
    scoring_settings.events.check_payload_format()
  if not (kafka.output_topic or sinks.output_path or sinks.bq_table):
    raise ValueError('no output: set --output_path, --bq_table or '
                     '--output_topic')
  if not (sinks.dead_letter_path or kafka.dead_letter_topic):
    raise ValueError('dead letters must go somewhere: set '
                     '--dead_letter_path or --dead_letter_topic')
  if (kafka.output_topic or kafka.dead_letter_topic) and not (
      kafka.bootstrap_servers):
    raise ValueError('--bootstrap_servers is empty')
  # On Dataflow: every path the workers read or write must be gs://.
  opts.validate_dataflow_paths(options)
  return BackfillConfig(scoring_settings, sinks, kafka, files, kafka_range,
                        job.progress_interval_s)


def validate(options: PipelineOptions) -> None:
  """Rejects bad flags before anything starts (``resolve`` without the
  result)."""
  resolve(options)


def _utc(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(
      seconds, datetime.timezone.utc).isoformat()


def build_pipeline(p: beam.Pipeline, cfg: BackfillConfig) -> dict:
  """Builds the job; returns its main PCollections for tests.

  Returns:
    {'predictions': PCollection of lists of prediction rows,
     'dead_letters': PCollection of DeadLetter}
  """
  kafka = cfg.kafka
  run_id = uuid.uuid4().hex
  interval = cfg.progress_interval_s
  if cfg.files is not None:
    f = cfg.files
    records = p | 'ReadFiles' >> sources.ReadFileChunks(
        f.pattern, f.file_format.kind, chunk_records=f.chunk_records,
        split_bytes=f.split_bytes, skip_header_lines=f.skip_header_lines,
        default_time=f.default_time)
    payload_format = f.file_format.payload_format
  else:
    records = p | 'ReadKafkaRange' >> choose.build_read(
        kafka.kafka_io, dict(kafka.client_config), [kafka.input_topic],
        start=cfg.kafka_range.start_time,
        stop=StopAt.timestamp(cfg.kafka_range.end_time),
        commit_offsets=False, max_batch_records=kafka.read_batch_records,
        timestamp_policy='create_time')
    payload_format = None
  records = records | 'ProgressRead' >> scoring.ReportProgress(
      scoring.READ, run_id, interval)
  predictions, dead_letters = scoring.score_records(
      records, cfg.scoring, payload_format=payload_format, bounded=True)
  predictions = predictions | 'ProgressScored' >> scoring.ReportProgress(
      scoring.SCORED, run_id, interval)
  dead_letters = outputs.write_outputs(
      predictions, dead_letters, cfg.sinks, kafka,
      columns=output_columns(cfg.scoring.events.schema), streaming=False)
  dead_letters = dead_letters | 'ProgressDead' >> scoring.ReportProgress(
      scoring.DEAD, run_id, interval)
  return {'predictions': predictions, 'dead_letters': dead_letters}


def preflight(cfg: BackfillConfig) -> str:
  """Checks the model, the input files or topic, and the output topics.

  Returns:
    The model description for the start log line.
  """
  kafka = cfg.kafka
  described = cfg.scoring.model.handler(cfg.scoring.events.schema).validate()
  if cfg.files is not None:
    from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
    pattern = cfg.files.pattern
    try:
      matched = FileSystems.match([pattern])[0].metadata_list
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'--input {pattern}: cannot list: {e}') from e
    if not matched:
      raise ValueError(f'--input {pattern} matches no files')
    _LOGGER.info('backfill: %d input files, %.1f MB', len(matched),
                 sum(m.size_in_bytes for m in matched) / 1e6)
  topics = [t for t in (kafka.input_topic, kafka.output_topic,
                        kafka.dead_letter_topic) if t]
  if topics:
    admin.topic_partitions(kafka.client_config, topics, timeout_s=30)
  return described


def summarize(result, seconds: float) -> summary_lib.RunSummary:
  """The figures of a finished (or running) backfill, from its metrics."""
  return summary_lib.summarize(result, SUMMARY_COUNTERS, job='backfill',
                               seconds=seconds)


def _poll_progress(result, started: float, interval_s: float,
                   done: threading.Event) -> None:
  while not done.wait(interval_s):
    c = summarize(result, time.monotonic() - started)
    _LOGGER.info('progress: read %d, scored %d, dead letters %d; %.0f '
                 'records/s', c.records_read, c.events_scored,
                 c.dead_letters, c.events_per_s)


def run(argv: Union[Sequence[str], PipelineOptions, None] = None, *,
        block: bool = True):
  """Parses flags, validates, checks model and inputs, runs the job.

  Args:
    argv: the command line, or options parse_options already made.
    block: wait for the end of the run.

  Returns:
    The PipelineResult (finished when ``block``); ``result.summary`` holds
    the final counts (a beam_jobs.summary.RunSummary) when it finished here.
  """
  options = (argv if isinstance(argv, PipelineOptions) else
             parse_options(argv))
  if options.view_as(StandardOptions).streaming:
    raise ValueError('--streaming: a backfill is a batch job; use '
                     'beam_jobs.score_stream for streams')
  cfg = resolve(options)
  described = preflight(cfg)
  kafka, sinks = cfg.kafka, cfg.sinks
  engine = engine_lib.select_engine(options)
  _LOGGER.info('backfill: reading %s, model %s, predictions -> %s, dead '
               'letters -> %s, engine %s', cfg.source(), described,
               sinks.output_path or sinks.bq_table or kafka.output_topic,
               sinks.dead_letter_path or kafka.dead_letter_topic, engine.name)
  p = beam.Pipeline(runner=engine.runner, options=options)
  build_pipeline(p, cfg)
  started = time.monotonic()
  with opts.tuned_gc(options):
    result = p.run()
  if not block:
    return result
  done = threading.Event()
  if cfg.progress_interval_s > 0 and str(result.state) not in (
      'DONE', 'FAILED', 'CANCELLED', 'UPDATED', 'DRAINED'):
    threading.Thread(target=_poll_progress, daemon=True, args=(
        result, started, cfg.progress_interval_s, done)).start()
  try:
    result.wait_until_finish()
  finally:
    done.set()
  result.summary = summarize(result, time.monotonic() - started)
  return result


def main(argv=None) -> int:
  return cli.run_main(argv, parse_options, run, errors=(
      ValueError, ModelLoadError, admin.KafkaUnavailableError,
      admin.TopicNotFoundError))


if __name__ == '__main__':
  sys.exit(main())
