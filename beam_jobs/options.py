"""Pipeline options shared by the jobs, one class per concern.

Beam parses the flags of every PipelineOptions subclass together, so each
flag is defined once here and each job views the groups it uses
(``options.view_as(KafkaOptions)``). Every help text states the format and
the default. ``validate_*`` functions reject bad values before a pipeline
starts, with a ValueError that names the flag.
"""

import contextlib
import dataclasses
import gc
import os
import re

from apache_beam.options.pipeline_options import (KafkaStreamsRunnerOptions,
                                                  PipelineOptions,
                                                  StandardOptions)

from beam_jobs import logs
from transforms import parse as parse_lib
from transforms import schema as schema_lib
from transforms import windows as windows_lib
from transforms.kafka import config_refs
from transforms.kafka.xlang import KAFKA_IO_CHOICES
from transforms.outage import DEFAULT_MAX_OUTAGE_S, OutagePolicy
from transforms.sinks import files as files_sink
from transforms.kafka import offsets as offsets_lib

# Beam's default of --bootstrap_servers (KafkaStreamsRunnerOptions).
_BEAM_DEFAULT_BOOTSTRAP = 'localhost:9092'
OUTPUT_FILE_FORMATS = ('jsonl', 'parquet', 'tfrecord')


class KafkaOptions(PipelineOptions):
  """Where events come from and go to on Kafka."""

  @classmethod
  def _add_argparse_args(cls, parser):
    # --bootstrap_servers is Beam's own flag (KafkaStreamsRunnerOptions, the
    # same meaning): defining it again would clash; see bootstrap_servers().
    parser.add_argument('--input_topic', default=None,
                        help='Topic to read events from (required).')
    parser.add_argument('--output_topic', default=None,
                        help='Topic for predictions, one JSON record per '
                        'event keyed by event id (default: none).')
    parser.add_argument('--dead_letter_topic', default=None,
                        help='Topic for dead letters: original bytes as the '
                        'value, stage/reason/source in dlq.* headers '
                        '(default: none; required with --output_topic).')
    parser.add_argument('--consumer_group', default='kbi-score-stream',
                        help='Consumer group whose offsets are read and '
                        'committed (default: kbi-score-stream).')
    parser.add_argument(
        '--start', default='committed',
        help='Where reading starts: committed (the group\'s offsets, else '
        'earliest), earliest, latest, or an ISO-8601 time such as '
        '2026-11-24T08:00:00Z (default: committed).')
    parser.add_argument(
        '--kafka_config', action='append', default=[],
        help='Extra librdkafka setting KEY=VALUE for consumers and '
        'producers, repeatable (e.g. security.protocol=SASL_SSL); '
        '@FILE reads KEY=VALUE lines from a local or gs:// file, '
        '@secret:projects/P/secrets/S[/versions/V] from a Secret Manager '
        'secret, and KEY=@secret:... takes one value from a secret. '
        'Referenced values are read by the workers, never put in the job; '
        'on Dataflow secrets must come by reference (default: none).')
    parser.add_argument('--kafka_io', choices=KAFKA_IO_CHOICES,
                        default='python',
                        help='Kafka IO implementation: python (this '
                        'package\'s, runs everywhere) or xlang (Beam\'s Java '
                        'KafkaIO; needs Java and the expansion service) '
                        '(default: python).')
    parser.add_argument('--read_batch_records', type=int, default=1000,
                        help='Records per element from the Kafka read; '
                        'elements are batches because per-element work '
                        'dominates Python pipelines (default: 1000).')


class EventOptions(PipelineOptions):
  """What the events look like."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--schema', default='susy',
        help='Event schema: a built-in name (susy, susy_csv) or a JSON/YAML '
        'schema file, local or gs:// (default: susy).')
    parser.add_argument('--input_format', choices=parse_lib.INPUT_FORMATS,
                        default='json',
                        help='Encoding of event payloads (default: json).')
    parser.add_argument('--confluent_wire_format', action='store_true',
                        default=False,
                        help='Avro payloads carry the Confluent header '
                        '(magic byte 0 + 4-byte schema id) (default: off).')
    parser.add_argument('--avro_schema_id', type=int, default=None,
                        help='With --confluent_wire_format: dead-letter '
                        'records with another schema id (default: any).')
    parser.add_argument('--max_payload_bytes', type=int,
                        default=parse_lib.DEFAULT_MAX_PAYLOAD_BYTES,
                        help='Larger payloads are dead letters (default: '
                        f'{parse_lib.DEFAULT_MAX_PAYLOAD_BYTES}).')
    parser.add_argument(
        '--max_future_s', type=float, default=None,
        help='Events stamped further ahead of the clock than this many '
        'seconds are dead letters (reason time_in_future); closer future '
        'times are scored but never move the watermark past the clock '
        '(default: the schema\'s max_future_s, '
        f'{schema_lib.DEFAULT_MAX_FUTURE_S:g} unless it sets one).')


# Chosen by measurement (bench/lateness_defaults.py, docs/operations.md):
# a few seconds of disorder across producers and partitions is on time; up
# to half a minute more is scored and flagged late.
DEFAULT_MAX_DELAY_S = 5.0
DEFAULT_ALLOWED_LATENESS_S = 30.0


class WindowOptions(PipelineOptions):
  """Event-time windows for the window features."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--window', choices=windows_lib.WINDOW_KINDS,
                        default='fixed',
                        help='Window kind (default: fixed).')
    parser.add_argument('--window_size_s', type=float, default=60.0,
                        help='Fixed/sliding window length in seconds '
                        '(default: 60).')
    parser.add_argument('--window_period_s', type=float, default=None,
                        help='Sliding window period in seconds (required '
                        'with --window=sliding).')
    parser.add_argument('--session_gap_s', type=float, default=None,
                        help='Session gap in seconds (required with '
                        '--window=session).')
    parser.add_argument(
        '--allowed_lateness_s', type=float,
        default=DEFAULT_ALLOWED_LATENESS_S,
        help='Seconds after a window ends (and the watermark passed it) '
        'during which its events are still scored, flagged late and '
        'written as late panes; later ones are too_late dead letters. Costs '
        'each key\'s window state this much longer (docs/operations.md, '
        f'"Lateness") (default: {DEFAULT_ALLOWED_LATENESS_S:g}).')
    parser.add_argument(
        '--max_delay_s', type=float, default=DEFAULT_MAX_DELAY_S,
        help='Out-of-orderness the read tolerates: the watermark trails the '
        'newest valid event time by this, so events up to this late are on '
        'time. Costs this delay on every window\'s files and offset commits '
        '(measured with 3 s of disorder and 2 s windows: 47 events in 100 '
        'dead-lettered at 0, 2 in 100 at 2, none at 5; files 5.2 s after '
        f'the window end at 5) (default: {DEFAULT_MAX_DELAY_S:g}).')
    parser.add_argument('--idle_timeout_s', type=float, default=5.0,
                        help='After this many seconds without records a '
                        'partition stops holding the watermark (default: 5).')


class ModelOptions(PipelineOptions):
  """The SavedModel and how it is called."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--model_dir', default=None,
                        help='SavedModel directory, or a root of integer '
                        'version directories (newest complete version is '
                        'served and hot-swapped); local or gs:// (required).')
    parser.add_argument('--model_signature', default='serving_default',
                        help='Signature to call (default: serving_default).')
    parser.add_argument('--model_output', default=None,
                        help='Signature output holding the score (default: '
                        '"score", or the only output).')
    parser.add_argument('--model_version', type=int, default=None,
                        help='Serve exactly this version, no hot swap '
                        '(default: newest complete).')
    parser.add_argument(
        '--control_topic', default=None,
        help='Kafka topic of deployment records (python -m models.deploy; '
        'docs/operating_models.md): serve the primary, canary and shadow '
        'versions of --model_dir that the latest record of --deployment '
        'names, and follow its changes while running, instead of the '
        'newest complete version. Same cluster and client settings as the '
        'events (default: none: serve the newest complete version).')
    parser.add_argument(
        '--deployment', default='default',
        help='The deployment to follow on --control_topic: the record key '
        '(default: default).')
    parser.add_argument('--model_poll_s', type=float, default=10.0,
                        help='How often to look for a newer model version, '
                        'in seconds (default: 10).')
    parser.add_argument('--min_batch_size', type=int, default=None,
                        help='Fewest rows per model call. Equal to '
                        '--max_batch_size, batches are filled up to that '
                        'size within each bundle (deterministic); smaller, '
                        'Beam adapts the size between the two from measured '
                        'call times (default: --max_batch_size).')
    parser.add_argument('--max_batch_size', type=int, default=4096,
                        help='Most rows per model call (default: 4096).')
    parser.add_argument('--model_handler', default='savedmodel',
                        choices=('savedmodel', 'tfx_bsl'),
                        help='What calls the model: savedmodel '
                        '(tf.saved_model.load; every kind of SavedModel) or '
                        'tfx_bsl (tfx-bsl\'s RunInference handler, a TF1 '
                        'session; only signatures taking serialized '
                        'tf.Examples, see docs/tfx_interop.md) (default: '
                        'savedmodel).')


class FileInputOptions(PipelineOptions):
  """Files as the input of a batch job (backfill, ingest_examples)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--input', default=None,
        help='Files to read: a path or glob, local or gs:// (e.g. '
        '\'gs://b/events/*.jsonl.gz\'); compressed files are read by their '
        'extension. Instead of --input_topic (default: none).')


DEFAULT_GC_GEN0_THRESHOLD = 50_000


class LocalTuningOptions(PipelineOptions):
  """Settings of a local run executing in this process."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--gc_gen0_threshold', type=int, default=DEFAULT_GC_GEN0_THRESHOLD,
        help='While a local run executes in this process: Python\'s '
        'generation-0 garbage-collection threshold, with the objects '
        'loaded before the run frozen (gc.freeze). Parsing allocates ~25 '
        'objects per event; at Python\'s default (700) collections take '
        '~20%% of a local backfill and add pauses of hundreds of ms to '
        'streaming latency. 0 keeps Python\'s settings (default: '
        f'{DEFAULT_GC_GEN0_THRESHOLD}).')


def validate_local_tuning(options: PipelineOptions) -> None:
  """ValueError naming the flag for a bad --gc_gen0_threshold."""
  threshold = options.view_as(LocalTuningOptions).gc_gen0_threshold
  _check(threshold >= 0, f'--gc_gen0_threshold must be >= 0, got {threshold}')


@contextlib.contextmanager
def tuned_gc(options: PipelineOptions):
  """Fewer garbage collections while a local run executes in this process
  (the local engines' workers are threads here); settings restored after.
  Other runners' workers keep Python's settings."""
  validate_local_tuning(options)
  threshold = options.view_as(LocalTuningOptions).gc_gen0_threshold
  if not threshold:
    yield
    return
  before = gc.get_threshold()
  gc.freeze()  # what is loaded by now (TensorFlow, Beam) is never garbage
  gc.set_threshold(threshold, before[1], before[2])
  try:
    yield
  finally:
    gc.set_threshold(*before)
    gc.unfreeze()


class LogOptions(PipelineOptions):
  """How much the run logs (beam_jobs/logs.py)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--log_level', type=str.upper, choices=logs.LEVELS,
        default=logs.DEFAULT_LEVEL,
        help='DEBUG, INFO, WARNING or ERROR. At INFO this project logs what '
        'it does and libraries only warnings; TensorFlow\'s C++ start-up '
        'lines show at DEBUG or with TF_CPP_MIN_LOG_LEVEL set (default: '
        f'{logs.DEFAULT_LEVEL}).')


class BootstrapServersFlag:
  """``--bootstrap_servers`` as the jobs' --help lists it.

  The flag itself is Beam's (KafkaStreamsRunnerOptions, the same meaning):
  this class only describes it for the job's help and is not a
  PipelineOptions (a second definition would clash in Beam's parser).
  """

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--bootstrap_servers', default=_BEAM_DEFAULT_BOOTSTRAP,
        metavar='HOST:PORT[,HOST:PORT...]',
        help='Kafka brokers to connect to. Left at the default, the '
        'KAFKA_BOOTSTRAP_SERVERS environment variable wins when set '
        f'(default: {_BEAM_DEFAULT_BOOTSTRAP}).')


class BoundedRunOptions(PipelineOptions):
  """Stop conditions for tests and demos."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--max_records', type=int, default=None,
                        help='Stop after reading this many records in total '
                        '(default: unbounded).')
    parser.add_argument('--max_read_time_s', type=float, default=None,
                        help='Stop reading after this many seconds '
                        '(default: unbounded).')


class SinkOptions(PipelineOptions):
  """Files and BigQuery destinations (in addition to Kafka)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument('--output_path', default=None,
                        help='Directory or gs:// prefix for prediction files, '
                        'one file set per window and pane (default: none).')
    parser.add_argument('--output_file_format', choices=OUTPUT_FILE_FORMATS,
                        default='jsonl',
                        help='Prediction file format (default: jsonl).')
    parser.add_argument('--dead_letter_path', default=None,
                        help='Directory or gs:// prefix for dead-letter JSONL '
                        'files (default: none).')
    parser.add_argument(
        '--dead_letter_flush_s', type=float,
        default=files_sink.DEFAULT_DEAD_LETTER_FLUSH_S,
        help='Streaming: dead-letter files are written per event-time '
        'window of this many seconds, when the watermark passes its end; '
        'shorter means more files and offsets committed sooner (default: '
        f'{files_sink.DEFAULT_DEAD_LETTER_FLUSH_S:g}).')
    parser.add_argument('--bq_table', default=None,
                        help='BigQuery table PROJECT:DATASET.TABLE for '
                        'predictions (default: none).')
    parser.add_argument('--bq_method', choices=('auto', 'streaming_inserts',
                                                'file_loads'),
                        default='auto',
                        help='BigQuery write method; auto = streaming inserts '
                        'for streaming jobs, file loads for batch (default: '
                        'auto).')
    parser.add_argument(
        '--max_outage_s', type=float, default=DEFAULT_MAX_OUTAGE_S,
        help='How long an output (files, Kafka topic, BigQuery) may stay '
        'unavailable: failed writes are retried in place with capped '
        'backoff and a log line every 10 s, nothing after them is '
        'committed, and only after this many seconds the job fails naming '
        'the output; 0 retries forever, as a Dataflow streaming job does '
        f'(default: {DEFAULT_MAX_OUTAGE_S:g}).')
    parser.add_argument('--bq_endpoint', default=None,
                        help='BigQuery API endpoint override, e.g. an emulator '
                        'or a private endpoint (default: Google\'s).')


# The sections of the jobs' --help (beam_jobs/cli.py): (title, the classes
# whose flags it lists). Each job lists the sections it uses, in this order
# and with its own options in between.
KAFKA_FLAGS = ('Kafka', (BootstrapServersFlag, KafkaOptions))
FILE_INPUT_FLAGS = ('File input', (FileInputOptions,))
EVENT_FLAGS = ('Events and schema', (EventOptions,))
WINDOW_FLAGS = ('Windows', (WindowOptions,))
MODEL_FLAGS = ('Model', (ModelOptions,))
OUTPUT_FLAGS = ('Outputs (files and BigQuery; Kafka topics are under Kafka)',
                (SinkOptions,))
BOUNDED_FLAGS = ('Bounded runs', (BoundedRunOptions,))
RUNNER_FLAGS = ('Runner and local tuning', (LogOptions, LocalTuningOptions))


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


def bootstrap_servers(options: PipelineOptions) -> str:
  """``--bootstrap_servers`` (host:port[,host:port...]).

  The flag is Beam's (default localhost:9092); left at that default, the
  ``KAFKA_BOOTSTRAP_SERVERS`` environment variable wins when set.
  """
  value = options.view_as(KafkaStreamsRunnerOptions).bootstrap_servers
  if value == _BEAM_DEFAULT_BOOTSTRAP and os.environ.get(
      'KAFKA_BOOTSTRAP_SERVERS'):
    return os.environ['KAFKA_BOOTSTRAP_SERVERS']
  return value


def client_config(options: PipelineOptions) -> dict:
  """librdkafka settings common to a job's consumers and producers:
  ``--bootstrap_servers`` and ``--kafka_config``."""
  kafka = options.view_as(KafkaOptions)
  cfg = {'bootstrap.servers': bootstrap_servers(options)}
  cfg.update(parse_kafka_config(kafka.kafka_config))
  return cfg


def validate_kafka(options: PipelineOptions) -> None:
  kafka = options.view_as(KafkaOptions)
  _check(bool(bootstrap_servers(options)), '--bootstrap_servers is empty')
  _check(bool(kafka.input_topic), '--input_topic is required')
  _check(kafka.read_batch_records >= 1,
         f'--read_batch_records must be >= 1, got {kafka.read_batch_records}')
  try:
    offsets_lib.normalize_start(kafka.start)
  except ValueError as e:
    raise ValueError(f'--start: {e}') from None
  if is_dataflow(options):
    servers = bootstrap_servers(options)
    if any(host.strip().split(':')[0] in _LOCAL_HOSTS
           for host in servers.split(',')):
      raise ValueError(
          f'--bootstrap_servers {servers}: Dataflow workers cannot reach the '
          f'launcher\'s localhost; give the cluster\'s addresses')
    validate_kafka_config_for_dataflow(kafka.kafka_config)
  parse_kafka_config(kafka.kafka_config)


def parse_kafka_config(entries) -> dict:
  """--kafka_config entries (KEY=VALUE, @FILE, @secret:..., KEY=@secret:...)
  as a librdkafka dict.

  Values that come by reference are ``config_refs.DeferredSetting``s: the
  Kafka IO reads them where it builds its clients (on the workers), so they
  never enter the job graph. Files and whole secrets are read once here to
  learn their keys and to fail early (transforms/kafka/config_refs.py).
  """
  return config_refs.parse_entries(entries)


# Settings that must not be given in clear on a Dataflow command line: the
# job's options are stored with the job and shown in its console page.
_SENSITIVE_KEY = re.compile(r'password|secret|jaas|ssl\.key\.pem|ssl_key|'
                            r'keystore\.key|sasl\.oauthbearer\.config',
                            re.IGNORECASE)
_DATAFLOW_RUNNERS = ('dataflowrunner', 'dataflow', 'testdataflowrunner')
_LOCAL_HOSTS = ('localhost', '127.0.0.1', '::1', '[::1]', '0.0.0.0')


def is_dataflow(options: PipelineOptions) -> bool:
  """Whether ``--runner`` is Dataflow's."""
  runner = options.view_as(StandardOptions).runner
  name = runner if isinstance(runner, str) else type(runner).__name__
  return bool(name) and name.lower() in _DATAFLOW_RUNNERS


def validate_kafka_config_for_dataflow(entries) -> None:
  """On Dataflow: no secret in clear, no reference workers cannot read."""
  for entry in entries or []:
    entry = entry.strip()
    if entry.startswith('@'):
      if config_refs.is_local_path(entry[1:]):
        raise ValueError(
            f'--kafka_config {entry}: a local file is not readable on '
            f'Dataflow workers; use @gs://... or @secret:projects/...')
      continue
    key, _, value = entry.partition('=')
    if _SENSITIVE_KEY.search(key) and not value.strip().startswith(
        '@' + config_refs.SECRET_PREFIX):
      raise ValueError(
          f'--kafka_config {key.strip()}=...: a secret on the command line '
          f'is stored in clear with the job\'s options; put it in a gs:// '
          f'properties file (@gs://...), a Secret Manager secret '
          f'(@secret:projects/P/secrets/S) or {key.strip()}=@secret:...')


# Flags of the jobs that name files or directories the workers read or
# write (looked up by name, so each job's own flags such as --input count).
WORKER_PATH_FLAGS = ('model_dir', 'output_path', 'dead_letter_path', 'input',
                     'output', 'temp_location', 'staging_location')


def validate_dataflow_paths(options: PipelineOptions) -> None:
  """On Dataflow, rejects paths the workers cannot read (ValueError names
  the flag): every path flag must be gs:// and --kafka_config must pass
  validate_kafka_config_for_dataflow. (--schema may stay local: it is read
  on the launcher and travels inside the job.) No-op for other runners."""
  if not is_dataflow(options):
    return
  values = options.get_all_options()
  for name in WORKER_PATH_FLAGS:
    value = values.get(name)
    if value and not str(value).startswith('gs://'):
      raise ValueError(f'--{name} {value!r} is a local path: Dataflow workers '
                       f'cannot read it; use gs://')
  validate_kafka_config_for_dataflow(values.get('kafka_config'))


def window_spec(w: WindowOptions) -> windows_lib.WindowSpec:
  """The WindowSpec of the flags; ValueError names the flag at fault."""
  if w.window == 'sliding':
    _check(w.window_period_s is not None,
           '--window_period_s is required with --window=sliding')
  if w.window == 'session':
    _check(w.session_gap_s is not None,
           '--session_gap_s is required with --window=session')
  _check(w.max_delay_s >= 0, f'--max_delay_s must be >= 0, got {w.max_delay_s}')
  _check(w.idle_timeout_s >= 0,
         f'--idle_timeout_s must be >= 0, got {w.idle_timeout_s}')
  try:
    return windows_lib.WindowSpec(
        kind=w.window, size_s=w.window_size_s, period_s=w.window_period_s,
        gap_s=w.session_gap_s, allowed_lateness_s=w.allowed_lateness_s)
  except ValueError as e:
    flag = ('--allowed_lateness_s' if 'lateness' in str(e) else
            '--window_period_s' if 'period' in str(e) else
            '--session_gap_s' if 'gap' in str(e) else '--window_size_s')
    raise ValueError(f'{flag}: {e}') from None


def event_schema(e: EventOptions) -> schema_lib.EventSchema:
  """The event schema of --schema, with --max_future_s applied."""
  try:
    schema = schema_lib.resolve(e.schema)
  except ValueError as err:
    raise ValueError(f'--schema: {err}') from None
  if e.max_future_s is not None:
    _check(e.max_future_s >= 0,
           f'--max_future_s must be >= 0, got {e.max_future_s}')
    schema = dataclasses.replace(schema, max_future_s=e.max_future_s)
  return schema


def validate_model(m: ModelOptions) -> None:
  _check(bool(m.model_dir), '--model_dir is required')
  if m.control_topic is not None:
    _check(bool(m.control_topic.strip()), '--control_topic is empty')
    _check(m.model_version is None,
           '--model_version and --control_topic exclude each other: with a '
           'control topic, pin a version with python -m models.deploy pin')
    _check(bool(m.deployment) and len(m.deployment) <= 200,
           f'--deployment must be 1-200 characters, got {m.deployment!r}')
  _check(m.max_batch_size >= 1,
         f'--max_batch_size must be >= 1, got {m.max_batch_size}')
  _check(m.model_poll_s > 0, f'--model_poll_s must be > 0, got {m.model_poll_s}')
  if m.min_batch_size is None:
    return
  _check(m.min_batch_size >= 1,
         f'--min_batch_size must be >= 1, got {m.min_batch_size}')
  _check(m.min_batch_size <= m.max_batch_size,
         f'--min_batch_size {m.min_batch_size} exceeds --max_batch_size '
         f'{m.max_batch_size}')


def validate_sinks(s: SinkOptions) -> None:
  _check(s.dead_letter_flush_s > 0,
         f'--dead_letter_flush_s must be > 0, got {s.dead_letter_flush_s}')
  _check(s.max_outage_s >= 0,
         f'--max_outage_s must be >= 0, got {s.max_outage_s}')


def outage_policy(s: SinkOptions) -> OutagePolicy:
  """The outputs' OutagePolicy of ``--max_outage_s``."""
  return OutagePolicy.of_flag(s.max_outage_s)


def validate_bounded(b: BoundedRunOptions) -> None:
  if b.max_records is not None:
    _check(b.max_records >= 1,
           f'--max_records must be >= 1, got {b.max_records}')
  if b.max_read_time_s is not None:
    _check(b.max_read_time_s > 0,
           f'--max_read_time_s must be > 0, got {b.max_read_time_s}')
