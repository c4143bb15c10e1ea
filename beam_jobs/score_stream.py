"""The streaming scoring job: Kafka -> parse -> windows -> SavedModel -> Kafka.

Reads events from ``--input_topic``, parses and validates them (dead letters
for anything malformed), stamps them with their event time, computes per-key
window features without holding events, scores them with a TensorFlow
SavedModel through RunInference, and writes one JSON prediction per event to
``--output_topic`` (keyed by event id) and dead letters to
``--dead_letter_topic``; files and BigQuery too when asked.

Locally (DirectRunner; the engine is chosen and logged by beam_jobs/engine.py):

  python -m beam_jobs.score_stream --bootstrap_servers localhost:9092 \\
      --input_topic events --output_topic predictions \\
      --dead_letter_topic events-dlq --model_dir ./models_out/susy

On Dataflow (see run_dataflow.sh, which fills these in):

  python -m beam_jobs.score_stream --runner DataflowRunner --streaming \\
      --project P --region R --temp_location gs://B/tmp \\
      --setup_file ./setup.py --model_dir gs://B/models/susy \\
      --bootstrap_servers broker:9092 --input_topic events \\
      --output_topic predictions --dead_letter_topic events-dlq
"""

import dataclasses
import logging
import math
import signal
import sys
import time
from typing import NamedTuple, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.options.pipeline_options import (PipelineOptions,
                                                  StandardOptions)

from beam_jobs import cli
from beam_jobs import config
from beam_jobs import engine as engine_lib
from beam_jobs import lag as lag_lib
from beam_jobs import options as opts
from beam_jobs import outputs
from beam_jobs import scoring
from beam_jobs import summary as summary_lib
from models import handler as handler_lib
from models.handler import ModelLoadError
from transforms import dedup
from transforms.dedup_seed import SeedIncompleteError
from transforms.kafka import StopAt, admin
from transforms.kafka import choose
from transforms.prediction_rows import output_columns
from transforms.source_watermark import SourceWatermark
from transforms.windows import BufferHorizon, WindowSpec

_LOGGER = logging.getLogger(__name__)
PROG = 'python -m beam_jobs.score_stream'


class ScoreStreamOptions(PipelineOptions):
  """Options of this job only (the shared groups are in beam_jobs/options)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--timestamp_source', choices=('payload', 'record'),
        default='payload',
        help='Where the read takes event times for the watermark: the '
        'payload\'s event-time field (payload) or the Kafka record timestamp '
        '(record; cheaper, right when producers set it to the event time) '
        '(default: payload).')
    parser.add_argument(
        '--dedup_horizon_s', type=float, default=None,
        help='Effectively-once output: skip events whose id already has a '
        'prediction on --output_topic written within this many seconds, or '
        'passed in this run, and dead letters of records already '
        'dead-lettered on --dead_letter_topic (transforms/dedup.py); choose '
        'it longer than the longest restart (default: off, at-least-once).')
    parser.add_argument(
        '--dedup_seed_timeout_s', type=float, default=None,
        help='With --dedup_horizon_s: seconds allowed to read the horizon '
        'back from the output and dead-letter topics at start; the job fails '
        'to start if that is not enough, never starts on part of it '
        '(default: derived from the records to read, 60 s + 1 s per 10,000).')
    parser.add_argument(
        '--dedup_max_ids', type=int, default=dedup.DEFAULT_MAX_IDS,
        help='With --dedup_horizon_s: event ids (and dead letters) held per '
        'worker process at most, ~11 bytes each (~25 at the peak of a merge; '
        'docs/operations.md, sizing); past it the oldest are forgotten '
        'early, with a warning; 0: no cap (default: '
        f'{dedup.DEFAULT_MAX_IDS}).')


# --help, in this order (beam_jobs/cli.py).
FLAG_GROUPS = (opts.KAFKA_FLAGS, opts.EVENT_FLAGS, opts.WINDOW_FLAGS,
               opts.MODEL_FLAGS, opts.OUTPUT_FLAGS,
               ('Stream', (ScoreStreamOptions,)), opts.BOUNDED_FLAGS,
               opts.RUNNER_FLAGS)

# Where the end-of-run summary's figures are (beam_jobs/summary.py): the
# steps' own counters (the stream has no progress steps: step names must not
# change for Dataflow updates).
SUMMARY_COUNTERS = summary_lib.CounterNames(
    read=('kafka_read', 'records'),
    scored=('inference', 'events_scored'),
    reasons=summary_lib.SCORING_DEAD_LETTERS,
    skipped=((('dedup', 'duplicates_skipped'), 'duplicates'),))


parse_options = cli.options_parser(PROG, FLAG_GROUPS, __doc__)





@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """Everything the streaming job needs, resolved once from the flags."""
  kafka: config.KafkaSettings
  scoring: config.ScoringSettings
  sinks: config.SinkSettings
  timing: config.ReadTiming
  stop: Optional[StopAt]
  timestamp_source: str
  dedup: Optional[dedup.DedupSettings]   # --dedup_horizon_s; None: off

  def buffer_horizon(self) -> BufferHorizon:
    """How long the job's windowed sinks may hold a record's output: its
    event windows (prediction files) and, with --dead_letter_path, the
    dead letters' flush windows."""
    specs = [self.scoring.window]
    if self.sinks.dead_letter_path:
      specs.append(WindowSpec(kind='fixed',
                              size_s=self.sinks.dead_letter_flush_s))
    return BufferHorizon(tuple(specs))


def resolve(options: PipelineOptions) -> StreamConfig:
  """The job's settings; rejects bad flags before anything starts
  (ValueError names the flag)."""
  kafka = config.KafkaSettings.of(options)
  scoring_settings = config.ScoringSettings.of(options)
  scoring_settings.events.check_payload_format()
  sinks = config.SinkSettings.of(options)
  timing = config.ReadTiming.of(options)
  stop = config.stop_of(options)
  opts.validate_local_tuning(options)
  if kafka.output_topic and not kafka.dead_letter_topic:
    raise ValueError('--dead_letter_topic is required with --output_topic: '
                     'dead letters must go somewhere')
  job = options.view_as(ScoreStreamOptions)
  if kafka.kafka_io == 'xlang':
    if job.timestamp_source == 'payload':
      raise ValueError(
          '--timestamp_source=payload needs --kafka_io=python: Java KafkaIO '
          'cannot run a Python timestamp function; use '
          '--timestamp_source=record (producers set record timestamps)')
    if timing.max_delay_s not in (0, opts.DEFAULT_MAX_DELAY_S):
      raise ValueError('--max_delay_s must be 0 with --kafka_io=xlang (Java '
                       'KafkaIO\'s record-time policy has no delay)')
    # Java KafkaIO's record-time policy has no delay.
    timing = dataclasses.replace(timing, max_delay_s=0.0)
  dedup_settings = _dedup_settings(job, kafka, sinks)
  if not (kafka.output_topic or sinks.output_path or sinks.bq_table):
    raise ValueError('no output: set --output_topic, --output_path or '
                     '--bq_table')
  opts.validate_dataflow_paths(options)
  return StreamConfig(kafka, scoring_settings, sinks, timing, stop,
                      job.timestamp_source, dedup_settings)


def _dedup_settings(job: ScoreStreamOptions, kafka: config.KafkaSettings,
                    sinks: config.SinkSettings
                   ) -> Optional[dedup.DedupSettings]:
  """The effectively-once settings of the flags, or None when off."""
  if job.dedup_seed_timeout_s is not None and job.dedup_seed_timeout_s <= 0:
    raise ValueError(f'--dedup_seed_timeout_s must be > 0, got '
                     f'{job.dedup_seed_timeout_s}')
  if job.dedup_max_ids < 0:
    raise ValueError(f'--dedup_max_ids must be >= 0, got {job.dedup_max_ids}')
  if job.dedup_horizon_s is None:
    if (job.dedup_seed_timeout_s is not None or
        job.dedup_max_ids != dedup.DEFAULT_MAX_IDS):
      raise ValueError('--dedup_seed_timeout_s and --dedup_max_ids need '
                       '--dedup_horizon_s')
    return None
  if job.dedup_horizon_s <= 0:
    raise ValueError(f'--dedup_horizon_s must be > 0, got '
                     f'{job.dedup_horizon_s}')
  if not kafka.output_topic:
    raise ValueError('--dedup_horizon_s needs --output_topic: the '
                     'predictions already written are read back from it')
  return dedup.DedupSettings(
      output_topic=kafka.output_topic,
      dead_letter_topic=kafka.dead_letter_topic,
      horizon_s=job.dedup_horizon_s, seed_timeout_s=job.dedup_seed_timeout_s,
      max_ids=job.dedup_max_ids or None,
      # A dead letter reaches its topic within the sinks' outage retries;
      # five more minutes for bundles and clocks.
      write_delay_s=(sinks.outage.max_outage_s if math.isfinite(
          sinks.outage.max_outage_s) else 0) + 300)


def validate(options: PipelineOptions) -> None:
  """Rejects bad flags before anything starts (``resolve`` without the
  result)."""
  resolve(options)


def build_pipeline(p: beam.Pipeline, cfg: StreamConfig, *,
                   dead_letter_max_bytes: int =
                   admin.DEFAULT_MAX_RECORD_BYTES) -> dict:
  """Builds the job; returns its main PCollections for tests.

  Args:
    p: the pipeline.
    cfg: the job's settings (``resolve``).
    dead_letter_max_bytes: the dead-letter topic's record limit (preflight
      looks it up); larger dead letters are cut to fit, with a hash and
      their source coordinates.

  Returns:
    {'predictions': PCollection of lists of prediction rows,
     'dead_letters': PCollection of DeadLetter (as written: with
       --dedup_horizon_s, without those already written)}
  """
  kafka, events = cfg.kafka, cfg.scoring.events
  timestamp_policy = (events.parser().event_time_fn()
                      if cfg.timestamp_source == 'payload' else 'create_time')
  # Locally, the read shows the window step its watermark (one lateness
  # verdict for every sink) and commits offsets as the windowed sinks
  # write what covers them.
  source_watermark = SourceWatermark()
  records = p | 'ReadFromKafka' >> choose.build_read(
      kafka.kafka_io, kafka.consumer_config(), [kafka.input_topic],
      start=kafka.start, stop=cfg.stop,
      max_batch_records=kafka.read_batch_records,
      timestamp_policy=timestamp_policy, max_delay_s=cfg.timing.max_delay_s,
      idle_timeout_s=cfg.timing.idle_timeout_s,
      source_watermark=source_watermark, buffer_horizon=cfg.buffer_horizon())
  event_filter = dead_letter_filter = None
  if cfg.dedup is not None:
    settings = cfg.dedup._replace(
        remember_on_finalize=engine_lib.finalizes_bundles(p.runner))
    event_filter = dedup.DropScoredEvents(dict(kafka.client_config), settings)
    dead_letter_filter = dedup.DropWrittenDeadLetters(
        dict(kafka.client_config), settings)
  # A bounded run (--max_records, --max_read_time_s) is the streaming job
  # stopping, not a batch job: the same window state, lateness and sinks.
  predictions, dead_letters = scoring.score_records(
      records, cfg.scoring, event_filter=event_filter, bounded=False,
      source_watermark=source_watermark)
  dead_letters = outputs.write_outputs(
      predictions, dead_letters, cfg.sinks, kafka,
      columns=output_columns(events.schema), streaming=True,
      dead_letter_max_bytes=dead_letter_max_bytes,
      dead_letter_filter=dead_letter_filter)
  return {'predictions': predictions, 'dead_letters': dead_letters}


class Preflight(NamedTuple):
  """What the checks before the run learnt."""
  model: str                  # the model description, for the start line
  dead_letter_max_bytes: int  # the dead-letter topic's record limit


def preflight(cfg: StreamConfig, *, seed_here: bool = True) -> Preflight:
  """Checks what can be checked before reading anything: the model loads
  and fits the schema, the cluster answers, the topics exist; and looks up
  the dead-letter topic's record limit. With --dedup_horizon_s and
  ``seed_here`` (a local engine, whose steps run in this process and use
  it), reads the horizon back (transforms.dedup.seed), so that a seed that
  cannot finish stops the job here, with the flag to raise. (Dataflow
  workers seed themselves: a seed that cannot finish fails their steps'
  setup.)"""
  kafka = cfg.kafka
  model = cfg.scoring.model
  control_topic = model.control[1] if model.control else None
  topics = [t for t in (kafka.input_topic, kafka.output_topic,
                        kafka.dead_letter_topic, control_topic) if t]
  admin.topic_partitions(kafka.client_config, topics, timeout_s=30)
  # Locally, the job's steps run in this process: they score with the model
  # loaded here.
  described = model.handler(cfg.scoring.events.schema).validate(
      keep=seed_here)
  limit = admin.DEFAULT_MAX_RECORD_BYTES
  if kafka.dead_letter_topic:
    limit = admin.max_record_bytes(kafka.client_config,
                                   kafka.dead_letter_topic)
  if cfg.dedup is not None and seed_here:
    dedup.seed(kafka.client_config, cfg.dedup)
  return Preflight(described, limit)


def run(argv: Union[Sequence[str], PipelineOptions, None] = None, *,
        block: bool = True):
  """Parses flags, validates, checks the model and cluster, runs the job.

  Args:
    argv: the command line, or options parse_options already made.
    block: wait for the end of the run (a bounded run's end, or Ctrl-C /
      SIGTERM, which drain it) on the local engine.

  Returns:
    The PipelineResult (already finished when ``block``). A run that ended
    here has ``result.summary``: a beam_jobs.summary.RunSummary.
  """
  options = (argv if isinstance(argv, PipelineOptions) else
             parse_options(argv))
  options.view_as(StandardOptions).streaming = True
  cfg = resolve(options)
  checked = preflight(cfg, seed_here=not opts.is_dataflow(options))
  kafka = cfg.kafka
  engine = engine_lib.select_engine(options)
  _LOGGER.info(
      'score_stream: reading %s at %s (group %s, start %s), model %s, '
      'predictions -> %s, dead letters -> %s, engine %s',
      kafka.input_topic, kafka.bootstrap_servers, kafka.consumer_group,
      kafka.start, checked.model, kafka.output_topic, kafka.dead_letter_topic,
      engine.name)
  p = beam.Pipeline(runner=engine.runner, options=options)
  build_pipeline(p, cfg, dead_letter_max_bytes=checked.dead_letter_max_bytes)
  if not block or opts.is_dataflow(options):
    # A Dataflow streaming job runs until drained or cancelled: the
    # launcher returns once it is submitted.
    return p.run()
  started = time.monotonic()
  with opts.tuned_gc(options):
    result = p.run()
    try:
      _wait(result)
    finally:
      # The models (and control topic followers) this process held.
      handler_lib.release_models()
  result.summary = summary_lib.summarize(
      result, SUMMARY_COUNTERS, job='score_stream',
      seconds=time.monotonic() - started, offsets=_offsets_left(kafka))
  return result


def _offsets_left(kafka: config.KafkaSettings
                 ) -> Optional[summary_lib.OffsetsLeft]:
  """The consumer group's committed offsets and lag on the input topic."""
  try:
    rows = lag_lib.lag_rows(kafka.client_config, kafka.consumer_group,
                            [kafka.input_topic], timeout_s=10)
  except Exception as e:  # pylint: disable=broad-except
    _LOGGER.warning('consumer lag unknown at the end of the run: %s', e)
    return None
  return summary_lib.OffsetsLeft(
      group=kafka.consumer_group, topic=kafka.input_topic,
      partitions=len(rows), committed=sum(r['committed'] or 0 for r in rows),
      lag=sum(r['lag'] for r in rows))


def _wait(result) -> None:
  """Waits for the job; Ctrl-C stops reading and lets the pipeline drain
  (on the local streaming engine; elsewhere it cancels the wait)."""
  while True:
    try:
      result.wait_until_finish()
      return
    except KeyboardInterrupt:
      if not hasattr(result, 'stop_reading'):
        raise
      _LOGGER.info('interrupted: stopping the read; draining')
      result.stop_reading()
      time.sleep(0.1)


def _interrupt_on_sigterm(unused_signum, unused_frame):
  # SIGTERM (systemd, Kubernetes, kill) stops the job as Ctrl-C does: the
  # read stops, the pipeline drains and offsets are committed.
  raise KeyboardInterrupt


def main(argv=None) -> int:
  signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
  return cli.run_main(argv, parse_options, run, errors=(
      ValueError, ModelLoadError, admin.KafkaUnavailableError,
      admin.TopicNotFoundError, SeedIncompleteError))


if __name__ == '__main__':
  sys.exit(main())
