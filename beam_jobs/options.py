"""Pipeline options shared by the jobs, one class per concern.

Beam parses the flags of every PipelineOptions subclass together, so each
flag is defined once here and each job views the groups it uses
(``options.view_as(KafkaOptions)``). Every help text states the format and
the default. ``validate_*`` functions reject bad values before a pipeline
starts, with a ValueError that names the flag.
"""

import os

from apache_beam.options.pipeline_options import (KafkaStreamsRunnerOptions,
                                                  PipelineOptions)

from transforms import parse as parse_lib
from transforms import schema as schema_lib
from transforms import windows as windows_lib
from transforms.kafka import offsets as offsets_lib

KAFKA_IO_CHOICES = ('python', 'xlang')
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
        '@FILE reads KEY=VALUE lines from a local or gs:// file '
        '(default: none).')
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
    parser.add_argument('--allowed_lateness_s', type=float, default=0.0,
                        help='Seconds after a window ends during which its '
                        'events are still scored (flagged late); later ones '
                        'are dead letters (default: 0).')
    parser.add_argument('--max_delay_s', type=float, default=0.0,
                        help='Out-of-orderness the read tolerates: the '
                        'watermark trails the newest event time by this '
                        '(default: 0).')
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
    parser.add_argument('--bq_table', default=None,
                        help='BigQuery table PROJECT:DATASET.TABLE for '
                        'predictions (default: none).')
    parser.add_argument('--bq_method', choices=('auto', 'streaming_inserts',
                                                'file_loads'),
                        default='auto',
                        help='BigQuery write method; auto = streaming inserts '
                        'for streaming jobs, file loads for batch (default: '
                        'auto).')
    parser.add_argument('--bq_endpoint', default=None,
                        help='BigQuery API endpoint override, e.g. an emulator '
                        'or a private endpoint (default: Google\'s).')


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise ValueError(message)


_BEAM_DEFAULT_BOOTSTRAP = 'localhost:9092'


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
  parse_kafka_config(kafka.kafka_config)


def parse_kafka_config(entries) -> dict:
  """--kafka_config entries (KEY=VALUE or @FILE) as a librdkafka dict."""
  out = {}
  for entry in entries or []:
    lines = [entry]
    if entry.startswith('@'):
      from apache_beam.io.filesystems import FileSystems
      try:
        with FileSystems.open(entry[1:]) as f:
          lines = f.read().decode('utf-8').splitlines()
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f'--kafka_config {entry}: cannot read: {e}') from e
    for line in lines:
      line = line.strip()
      if not line or line.startswith('#'):
        continue
      if '=' not in line:
        raise ValueError(f'--kafka_config {line!r}: expected KEY=VALUE')
      key, value = line.split('=', 1)
      out[key.strip()] = value.strip()
  return out


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
  try:
    return schema_lib.resolve(e.schema)
  except ValueError as err:
    raise ValueError(f'--schema: {err}') from None


def validate_model(m: ModelOptions) -> None:
  _check(bool(m.model_dir), '--model_dir is required')
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


def validate_bounded(b: BoundedRunOptions) -> None:
  if b.max_records is not None:
    _check(b.max_records >= 1,
           f'--max_records must be >= 1, got {b.max_records}')
  if b.max_read_time_s is not None:
    _check(b.max_read_time_s > 0,
           f'--max_read_time_s must be > 0, got {b.max_read_time_s}')
