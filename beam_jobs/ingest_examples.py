"""Ingest: events (Kafka range or JSONL files) -> tf.Example span for training.

Like TFX's ExampleGen: reads a bounded slice of events, parses and validates
them with the scoring job's ``ParseEvents`` (dead letters for anything
malformed, or without a 0/1 label), computes the scoring job's window
features with ``WindowFeatures`` (its exact batch implementation), turns
each event into a ``tf.Example`` and writes a new span in TFX's ExampleGen
layout, split deterministically by a hash of the event id (or a chosen
field), with the statistics of each split and the schema, in TFX's formats::

  <output>/span-<N>/version-0/Split-<split>/data_tfrecord-SSSSS-of-NNNNN.gz
  <output>/span-<N>/version-0/statistics/Split-<split>/FeatureStats.pb
  <output>/span-<N>/version-0/schema/schema.pbtxt   written last: complete
  <output>/dead-letters/span-<N>/...   dead letters, unless --dead_letter_*

The layout is models/examples_io.py's: ``python -m models.train --data
<output>`` trains on it, and TFX's ImportExampleGen, StatisticsGen or TFDV
read it (docs/tfx_interop.md). Each example holds the columns of
models/example_layout.py: the schema's features (float), ``label`` (int64),
``event_id``, ``detector`` (the event key) (bytes), ``event_time``
(float32 epoch s: only ~2 min precise today) and ``event_time_ms`` (int64,
exact), and the window features of the event as scored online:
``window_start_ms``, ``window_end_ms`` (int64 epoch ms; int64 min/max for
the global window), ``win_count`` (int64), ``win_mean_<f>``, ``win_std_<f>``
(float) per window feature. Examples are encoded by
transforms/example_coder.py; the statistics (counts, missing, mean, std,
min/max, quantile histograms, top values) are computed in the job by
transforms/statistics.py with tfx-bsl's sketches.

Splits: ``--splits train:2,eval:1`` (the default) gives each split hash
buckets in proportion; an event goes to bucket ``md5(value) mod 3`` of its
``--split_by`` value (``event_id`` by default, or a field such as the key):
stable across runs, machines and Python versions, so a re-ingested event
always lands in the same split. Splitting by the key keeps all of a
detector's events in one split.

Spans: ``--span N`` writes span N (it must not exist: spans are immutable);
by default the next free number (one above any span directory, complete or
not, starting at 0). With Kafka input and the default ``--start committed``,
the job's consumer group (default ``kbi-ingest-examples``; never the scoring
job's) remembers what was ingested, so each run makes a span of new data.
A run that yields no examples leaves no span behind.

Locally (DirectRunner = the FnApiRunner batch engine):

  python -m beam_jobs.ingest_examples --bootstrap_servers localhost:9092 \\
      --input_topic events --output ./data            # new data since last run
  python -m beam_jobs.ingest_examples --bootstrap_servers localhost:9092 \\
      --input_topic events --start 2026-11-24T08:00:00Z \\
      --stop_time 2026-11-24T09:00:00Z --output ./data --span 7
  python -m beam_jobs.ingest_examples --input 'events/*.jsonl' \\
      --output ./data --splits train:8,eval:1,test:1 --split_by detector

On Dataflow:

  python -m beam_jobs.ingest_examples --runner DataflowRunner \\
      --project P --region R --temp_location gs://B/tmp \\
      --setup_file ./setup.py --bootstrap_servers broker:9092 \\
      --input_topic events --output gs://B/data/susy \\
      --dead_letter_topic events-dlq
"""

import dataclasses
import hashlib
import logging
import posixpath
import re
import sys
from typing import Any, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
import numpy as np
from apache_beam import pvalue
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import (PipelineOptions,
                                                  StandardOptions, TestOptions)
from apache_beam.transforms import window as window_lib
from tensorflow_metadata.proto.v0 import statistics_pb2

from beam_jobs import cli
from beam_jobs import config
from beam_jobs import engine as engine_lib
from beam_jobs import options as opts
from beam_jobs import outputs
from models import example_layout as el
from models import examples_io
from transforms import dead_letters as dl
from transforms import example_coder, statistics
from transforms import sources
from transforms.events import EventBatch
from transforms.kafka import StopAt, admin
from transforms.kafka import choose
from transforms.schema import EventSchema
from transforms.sinks import WriteDeadLetterFiles
from transforms.windows import WindowFeatures, WindowSpec

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'ingest'

DEFAULT_SPLITS = 'train:2,eval:1'
DEFAULT_SPLIT_BY = 'event_id'
DEFAULT_CONSUMER_GROUP = 'kbi-ingest-examples'
DEAD_LETTER_DIR = 'dead-letters'

_SPLIT_NAME_RE = re.compile(r'^[A-Za-z0-9_-]+$')
_SPAN_DIR_RE = re.compile(r'^span-(\d+)/?$')
_STATS_TAG = 'statistics'


class IngestExamplesOptions(PipelineOptions):
  """Options of this job only (the shared groups are in beam_jobs/options)."""

  @classmethod
  def _add_argparse_args(cls, parser):
    parser.add_argument(
        '--output', default=None,
        help='Data root: the span is written to <output>/span-<N>/, local '
        'or gs:// (required).')
    parser.add_argument(
        '--span', type=int, default=None,
        help='Span number to write; it must not exist yet (default: the '
        'next free number, 0 for an empty root).')
    parser.add_argument(
        '--splits', default=DEFAULT_SPLITS,
        help='Splits and their hash-bucket ratios, NAME:INT[,NAME:INT...] '
        f'(default: {DEFAULT_SPLITS}).')
    parser.add_argument(
        '--split_by', default=DEFAULT_SPLIT_BY,
        help='What the split hash is computed on: event_id, or a schema '
        'field: the key, time or label field, or a (window) feature '
        f'(default: {DEFAULT_SPLIT_BY}).')
    parser.add_argument(
        '--num_shards', type=int, default=2,
        help='TFRecord files per split (default: 2).')
    parser.add_argument(
        '--stop_time', default=None,
        help='Kafka input: stop before the first record with a timestamp at '
        'or after this ISO-8601 time, e.g. 2026-11-24T09:00:00Z; with '
        '--start TIME it reads a time range (default: the end offsets seen '
        'at start, unless --max_records/--max_read_time_s).')


PROG = 'python -m beam_jobs.ingest_examples'
# --help, in this order (beam_jobs/cli.py).
FLAG_GROUPS = (('Span', (IngestExamplesOptions,)), opts.FILE_INPUT_FLAGS,
               opts.KAFKA_FLAGS, opts.EVENT_FLAGS, opts.WINDOW_FLAGS,
               ('Dead letters (of these, only --dead_letter_path applies)',
                (opts.SinkOptions,)),
               opts.BOUNDED_FLAGS, opts.RUNNER_FLAGS)


parse_options = cli.options_parser(PROG, FLAG_GROUPS, __doc__,
                                   note=cli.FLAG_FORMS)


# --- Flags -------------------------------------------------------------------


def parse_splits(text: str) -> list[tuple[str, int]]:
  """``'train:2,eval:1'`` -> ``[('train', 2), ('eval', 1)]``.

  Raises:
    ValueError: naming --splits, for a bad format, name or ratio.
  """
  splits = []
  for part in (text or '').split(','):
    part = part.strip()
    if not part:
      continue
    name, sep, ratio = part.partition(':')
    name = name.strip()
    if not sep or not _SPLIT_NAME_RE.match(name):
      raise ValueError(f'--splits: {part!r} is not NAME:INT (names use '
                       f'letters, digits, _ and -)')
    try:
      value = int(ratio)
    except ValueError:
      raise ValueError(f'--splits: ratio of {name!r} is not an integer: '
                       f'{ratio!r}') from None
    if value < 1:
      raise ValueError(f'--splits: ratio of {name!r} must be >= 1, got '
                       f'{value}')
    splits.append((name, value))
  if not splits:
    raise ValueError(f'--splits: no splits in {text!r}')
  names = [n for n, _ in splits]
  if len(set(names)) != len(names):
    raise ValueError(f'--splits: duplicate split names in {text!r}')
  if DEAD_LETTER_DIR in names:
    raise ValueError(f'--splits: {DEAD_LETTER_DIR!r} is reserved')
  return splits


def _split_source(schema: EventSchema, split_by: str) -> tuple[str, int]:
  """(column kind, index) that ``split_by`` names; ValueError otherwise."""
  if split_by in ('event_id', schema.id_field):
    return 'id', 0
  if split_by == schema.key_field:
    return 'key', 0
  if split_by == schema.time_field:
    return 'time', 0
  if split_by == schema.label_field:
    return 'label', 0
  if split_by in schema.features:
    return 'feature', schema.features.index(split_by)
  if split_by in schema.window_features:
    return 'window_value', schema.window_features.index(split_by)
  usable = ['event_id'] + [f for f in (schema.key_field, schema.time_field,
                                       schema.label_field) if f]
  raise ValueError(f'--split_by {split_by!r}: use event_id, the key/time/'
                   f'label field ({", ".join(usable[1:])}) or a feature')


def hash_bucket(value: str, buckets: int) -> int:
  """``md5(value) mod buckets``: stable across runs, hosts and versions."""
  digest = hashlib.md5(value.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') % buckets


def bucket_table(splits: list[tuple[str, int]]) -> list[int]:
  """Split index of each hash bucket: ``[0, 0, 1]`` for train:2,eval:1."""
  table = []
  for index, (_, ratio) in enumerate(splits):
    table.extend([index] * ratio)
  return table


def _list_below(pattern: str) -> list[str]:
  """Paths matching ``pattern`` through Beam's FileSystems (so gs:// uses
  the configured credentials or emulator). Raises ValueError, naming
  --output, when listing fails: a silent "nothing there" would pick a span
  that exists."""
  try:
    return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'--output: cannot list {pattern}: {e}') from e


def _span_numbers(root: str) -> list[int]:
  """Every span directory under ``root``, complete or not."""
  base = root.rstrip('/')
  # Local globs match the directories themselves; object stores have no
  # directories, only the files below them.
  paths = _list_below(f'{base}/span-*') + _list_below(f'{base}/span-*/**')
  spans = set()
  for path in paths:
    rest = path[len(base):].lstrip('/').split('/', 1)[0]
    match = _SPAN_DIR_RE.match(rest)
    if match:
      spans.add(int(match.group(1)))
  return sorted(spans)


def _dir_exists(path: str) -> bool:
  base = path.rstrip('/')
  return FileSystems.exists(base) or bool(_list_below(f'{base}/**'))


def next_span(root: str) -> int:
  """One above the highest span directory under ``root`` (0 if none)."""
  spans = _span_numbers(root)
  return spans[-1] + 1 if spans else 0


def resolve_span(root: str, span: Optional[int]) -> int:
  """The span to write: ``span`` if free, else the next free number.

  Raises:
    ValueError: naming --span, when that span exists already.
  """
  if span is None:
    return next_span(root)
  if span < 0:
    raise ValueError(f'--span must be >= 0, got {span}')
  directory = examples_io.span_dir(root, span)
  if _dir_exists(directory):
    raise ValueError(f'--span {span}: {directory} exists already; spans are '
                     f'immutable (omit --span for the next free number)')
  return span


@dataclasses.dataclass(frozen=True)
class SpanSettings:
  """Where the span goes and how its examples are split."""
  root: str
  span: int
  splits: tuple[tuple[str, int], ...]
  split_by: str
  num_shards: int

  @property
  def directory(self) -> str:
    """The span version's directory (models/examples_io.py layout)."""
    return examples_io.version_dir(self.root, self.span)


@dataclasses.dataclass(frozen=True)
class IngestConfig:
  """Everything the job needs, resolved once from the flags."""
  events: config.EventSettings
  window: WindowSpec
  timing: config.ReadTiming
  kafka: config.KafkaSettings
  span: SpanSettings
  files: Optional[str]
  stop: Optional[StopAt]
  dead_letter_path: Optional[str]

  def source(self) -> str:
    """What is read, for logs."""
    if self.files:
      return self.files
    return (f'{self.kafka.input_topic} at {self.kafka.bootstrap_servers} '
            f'(group {self.kafka.consumer_group}, start {self.kafka.start}, '
            f'stop {self.stop})')


def _stop(options: PipelineOptions) -> StopAt:
  """The Kafka read's stop: at most one of --max_records, --stop_time and
  --max_read_time_s, else the end offsets seen at start."""
  job = options.view_as(IngestExamplesOptions)
  bounded = options.view_as(opts.BoundedRunOptions)
  given = [f for f, v in (('--max_records', bounded.max_records),
                          ('--stop_time', job.stop_time),
                          ('--max_read_time_s', bounded.max_read_time_s))
           if v is not None]
  if len(given) > 1:
    raise ValueError(f'{given[0]} and {given[1]}: choose one stop condition')
  if bounded.max_records is not None:
    return StopAt.total_records(bounded.max_records)
  if job.stop_time is not None:
    try:
      return StopAt.timestamp(job.stop_time)
    except ValueError as e:
      raise ValueError(f'--stop_time: {e}') from None
  if bounded.max_read_time_s is not None:
    return StopAt.read_time(bounded.max_read_time_s)
  return StopAt.end_offsets()


def consumer_group(options: PipelineOptions) -> str:
  """The group this job reads with: never the scoring job's by default."""
  group = options.view_as(opts.KafkaOptions).consumer_group
  shared_default = opts.KafkaOptions([]).consumer_group
  return DEFAULT_CONSUMER_GROUP if group == shared_default else group


def _check_files(pattern: str, events: config.EventSettings,
                 options: PipelineOptions) -> None:
  """--input reads whole text files, which must exist."""
  if events.input_format == 'avro':
    raise ValueError('--input reads text lines: use --input_format json '
                     'or csv (Avro needs --input_topic)')
  job = options.view_as(IngestExamplesOptions)
  bounded = options.view_as(opts.BoundedRunOptions)
  stops = [f for f, v in (('--max_records', bounded.max_records),
                          ('--stop_time', job.stop_time),
                          ('--max_read_time_s', bounded.max_read_time_s))
           if v is not None]
  if stops:
    raise ValueError(f'{stops[0]} is for --input_topic; --input reads '
                     f'whole files')
  try:
    found = FileSystems.match([pattern])[0].metadata_list
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'--input {pattern}: {e}') from e
  if not found:
    raise ValueError(f'--input {pattern} matches no files')


def _span_settings(options: PipelineOptions,
                   schema: EventSchema) -> SpanSettings:
  """The span flags; the span number is fixed here (listing --output),
  except in a dry run, which builds the graph offline (span 0 unless
  given)."""
  job = options.view_as(IngestExamplesOptions)
  if not job.output:
    raise ValueError('--output is required (the data root)')
  _split_source(schema, job.split_by)
  splits = tuple(parse_splits(job.splits))
  if job.num_shards < 1:
    raise ValueError(f'--num_shards must be >= 1, got {job.num_shards}')
  if job.span is not None and job.span < 0:
    raise ValueError(f'--span must be >= 0, got {job.span}')
  if options.view_as(TestOptions).dry_run:
    span = job.span or 0
    _LOGGER.info('dry run: span %d, not checked against %s', span,
                 job.output)
  else:
    span = resolve_span(job.output, job.span)
  return SpanSettings(job.output, span, splits, job.split_by, job.num_shards)


def resolve(options: PipelineOptions) -> IngestConfig:
  """The job's settings; rejects bad flags before anything starts
  (ValueError names the flag)."""
  pattern = options.view_as(opts.FileInputOptions).input
  if bool(pattern) == bool(options.view_as(opts.KafkaOptions).input_topic):
    raise ValueError('set exactly one of --input (files) and --input_topic '
                     '(Kafka)')
  events = config.EventSettings.of(options)
  if not events.schema.label_field:
    raise ValueError(f'--schema {events.schema.name!r} has no label_field: '
                     f'training examples need labels')
  span = _span_settings(options, events.schema)
  window = opts.window_spec(options.view_as(opts.WindowOptions))
  timing = config.ReadTiming.of(options)
  opts.validate_bounded(options.view_as(opts.BoundedRunOptions))
  sinks = options.view_as(opts.SinkOptions)
  kafka = config.KafkaSettings.of(options, validate_input=not pattern)
  for flag, value in (('--output_topic', kafka.output_topic),
                      ('--output_path', sinks.output_path),
                      ('--bq_table', sinks.bq_table)):
    if value:
      raise ValueError(f'{flag} is a scoring-job flag; this job writes '
                       f'examples to --output')
  kafka = dataclasses.replace(kafka, consumer_group=consumer_group(options))
  stop = None
  if pattern:
    _check_files(pattern, events, options)
  else:
    events.check_payload_format()
    stop = _stop(options)
    if kafka.kafka_io == 'xlang' and stop.kind == 'timestamp':
      raise ValueError('--stop_time needs --kafka_io=python')
  dead_letter_path = sinks.dead_letter_path
  if not dead_letter_path and not kafka.dead_letter_topic:
    dead_letter_path = posixpath.join(span.root, DEAD_LETTER_DIR,
                                      f'span-{span.span}')
  return IngestConfig(events, window, timing, kafka, span, pattern or None,
                      stop, dead_letter_path)


# --- Examples ----------------------------------------------------------------


def example_layout(schema: EventSchema) -> el.ExampleLayout:
  """The columns of this job's examples (models/example_layout.py)."""
  return el.ExampleLayout(tuple(schema.features),
                          tuple(schema.window_features))


def _split_values(batch: EventBatch, kind: str, index: int) -> list[str]:
  """The per-row strings hashed to choose a split."""
  if kind == 'id':
    return list(batch.ids)
  if kind == 'key':
    return list(batch.keys)
  if kind == 'time':
    column = batch.event_time
  elif kind == 'label':
    column = batch.labels
  elif kind == 'feature':
    column = batch.features[:, index]
  else:
    column = batch.window_values[:, index]
  # repr of the Python float: the shortest exact text, stable everywhere.
  return [repr(float(v)) for v in column.tolist()]


class _ToExamples(beam.DoFn):
  """EventBatch -> serialized examples per split (tags ``split:<name>``),
  their columns for the statistics (tag ``statistics``: (split,
  pa.RecordBatch)) and dead letters for events without a usable label.

  Retry policy: none; encoding is deterministic. An event without a label,
  or with a label other than 0/1, is a dead letter (stage validate).
  """

  def __init__(self, schema: EventSchema, splits: list[tuple[str, int]],
               split_by: str):
    self._layout = example_layout(schema)
    self._names = [n for n, _ in splits]
    self._buckets = bucket_table(splits)
    self._kind, self._index = _split_source(schema, split_by)
    self._encoder = None
    self.examples = Metrics.counter(_NAMESPACE, 'examples')
    self.unlabelled = Metrics.counter(_NAMESPACE, 'events_without_label')

  def setup(self):
    self._encoder = example_coder.Encoder()

  def process(self, batch: EventBatch):
    labels = (batch.labels if batch.labels is not None else
              np.full(len(batch), np.nan))
    good = (labels == 0.0) | (labels == 1.0)
    for i in np.flatnonzero(~good):
      self.unlabelled.inc()
      missing = not np.isfinite(labels[i])
      yield pvalue.TaggedOutput(dl.DEAD_LETTER_TAG, dl.of_row(
          batch, int(i), stage=dl.VALIDATE,
          reason=dl.MISSING_FIELD if missing else dl.WRONG_TYPE,
          detail=('no label: not a training example' if missing else
                  f'label {labels[i]!r} is not 0 or 1')))
    if not good.any():
      return
    rows = np.flatnonzero(good)
    values = _split_values(batch, self._kind, self._index)
    total = len(self._buckets)
    split_of = np.asarray([self._buckets[hash_bucket(values[i], total)]
                           for i in rows], dtype=np.int64)
    int_labels = labels.astype(np.int64)
    for s, name in enumerate(self._names):
      mine = rows[split_of == s]
      if not len(mine):
        continue
      columns = self._layout.event_batch(batch.take(mine),
                                         labels=int_labels[mine])
      records = self._encoder.encode(columns)
      self.examples.inc(len(records))
      for record in records:
        yield pvalue.TaggedOutput(f'split:{name}', record)
      yield pvalue.TaggedOutput(_STATS_TAG, (name, columns))


def _write(path: str, data: bytes, mime_type: str) -> None:
  with FileSystems.create(path, mime_type=mime_type) as f:
    f.write(data)


def read_split_counts(directory: str, splits: list) -> dict:
  """Examples per split, from a span version's statistics files."""
  counts = {}
  for name, _ in splits:
    with FileSystems.open(examples_io.statistics_path(directory, name)) as f:
      stats = statistics_pb2.DatasetFeatureStatisticsList.FromString(f.read())
    counts[name] = int(sum(d.num_examples for d in stats.datasets))
  return counts


class _FinishSpan(beam.DoFn):
  """Runs once, after every shard is written: the statistics of each split,
  then the schema (last: it marks the span version complete,
  examples_io.find_span). A span without examples is deleted instead (no
  empty spans)."""

  def __init__(self, root: str, span: int, schema: EventSchema,
               splits: list, split_by: str):
    self._root = root
    self._span = span
    self._schema = schema
    self._splits = splits
    self._split_by = split_by
    self.dead = Metrics.counter(_NAMESPACE, 'dead_letters')

  def process(self, unused_impulse, stats, dead_count, written):
    self.dead.inc(dead_count)
    directory = examples_io.version_dir(self._root, self._span)
    counts = {name: (stats[name].num_examples if name in stats else 0)
              for name, _ in self._splits}
    summary = {'span': self._span, 'version': examples_io.DEFAULT_VERSION,
               'span_dir': directory, 'examples': sum(counts.values()),
               'splits': counts, 'dead_letters': dead_count}
    if not summary['examples']:
      _LOGGER.warning('no examples (%d dead letters): span %d not written',
                      dead_count, self._span)
      span_directory = examples_io.span_dir(self._root, self._span)
      if _dir_exists(span_directory):
        base = span_directory.rstrip('/')
        # A local directory is deleted as a tree; on object stores a
        # trailing slash deletes every object below the prefix.
        FileSystems.delete(
            [base if FileSystems.get_scheme(base) is None else base + '/'])
      yield dict(summary, span_dir=None)
      return
    for name, _ in self._splits:
      dataset = stats.get(name) or statistics_pb2.DatasetFeatureStatistics()
      _write(examples_io.statistics_path(directory, name),
             statistics.statistics_list({name: dataset}).SerializeToString(),
             'application/octet-stream')
    ratios = ','.join(f'{n}:{r}' for n, r in self._splits)
    schema = example_layout(self._schema).schema(annotations=[
        f'kbi:event_schema={self._schema.name}', f'kbi:splits={ratios}',
        f'kbi:split_by={self._split_by}',
        f'kbi:split_hash=md5 mod {sum(r for _, r in self._splits)}'])
    _write(examples_io.schema_path(directory),
           examples_io.schema_text(schema).encode('utf-8'), 'text/plain')
    _LOGGER.info('span %d complete at %s: %s examples (%s), %d files, %d '
                 'dead letters', self._span, directory, summary['examples'],
                 ', '.join(f'{n} {c}' for n, c in counts.items()),
                 len(written), dead_count)
    yield summary


# --- The pipeline ------------------------------------------------------------


def build_pipeline(p: beam.Pipeline, cfg: IngestConfig) -> dict:
  """Builds the job; returns its main PCollections for tests.

  Returns:
    {'examples': {split: PCollection of serialized tf.Example},
     'dead_letters': PCollection of DeadLetter,
     'span': PCollection of one {'span', 'span_dir', 'statistics'} dict,
       produced after the span is complete}
  """
  events, kafka, span = cfg.events, cfg.kafka, cfg.span
  schema = events.schema
  if cfg.files:
    header = 1 if events.input_format == 'csv' and schema.csv_header else 0
    records = p | 'ReadEventFiles' >> sources.ReadFileChunks(
        cfg.files, sources.LINES, chunk_records=kafka.read_batch_records,
        skip_header_lines=header)
  else:
    records = p | 'ReadFromKafka' >> choose.build_read(
        kafka.kafka_io, kafka.consumer_config(), [kafka.input_topic],
        start=kafka.start, stop=cfg.stop,
        max_batch_records=kafka.read_batch_records,
        timestamp_policy=events.parser().event_time_fn(),
        max_delay_s=cfg.timing.max_delay_s,
        idle_timeout_s=cfg.timing.idle_timeout_s)
  parsed = records | 'ParseEvents' >> events.parse_events()
  windowed = parsed.events | 'WindowFeatures' >> WindowFeatures(
      cfg.window, len(schema.window_features), bounded=True)
  split_tags = [f'split:{name}' for name, _ in span.splits]
  encoded = (windowed.events
             | 'IntoGlobalWindow' >> beam.WindowInto(
                 window_lib.GlobalWindows())
             | 'ToExamples' >> beam.ParDo(
                 _ToExamples(schema, list(span.splits),
                             span.split_by)).with_outputs(
                                 dl.DEAD_LETTER_TAG, _STATS_TAG, *split_tags))
  examples = {}
  written = []
  for (name, _), tag in zip(span.splits, split_tags):
    examples[name] = encoded[tag]
    written.append(encoded[tag] | f'Write[{name}]' >> beam.io.WriteToTFRecord(
        examples_io.split_prefix(span.directory, name),
        file_name_suffix=examples_io.FILE_SUFFIX, num_shards=span.num_shards,
        compression_type=CompressionTypes.GZIP))
  stats = encoded[_STATS_TAG] | 'SpanStatistics' >> beam.CombinePerKey(
      statistics.FeatureStatisticsFn())
  dead_letters = ((parsed[dl.DEAD_LETTER_TAG], windowed.dead_letters,
                   encoded[dl.DEAD_LETTER_TAG])
                  | 'FlattenDeadLetters' >> beam.Flatten())
  dead_count = (dead_letters
                | 'CountDeadLetters' >> beam.combiners.Count.Globally())
  files = (written | 'FlattenWrittenFiles' >> beam.Flatten()
           if written else p | 'NoFiles' >> beam.Create([]))
  finished = (p
              | 'OnceAfterWrites' >> beam.Create([None])
              | 'FinishSpan' >> beam.ParDo(
                  _FinishSpan(span.root, span.span, schema,
                              list(span.splits), span.split_by),
                  stats=pvalue.AsDict(stats),
                  dead_count=pvalue.AsSingleton(dead_count),
                  written=pvalue.AsList(files)))

  if cfg.dead_letter_path:
    _ = dead_letters | 'WriteDeadLetterFiles' >> WriteDeadLetterFiles(
        cfg.dead_letter_path, streaming=False)
  if kafka.dead_letter_topic:
    _ = dead_letters | 'WriteDeadLetters' >> (
        outputs.write_dead_letters_to_kafka(
            kafka.kafka_io, kafka.client_config, kafka.dead_letter_topic))
  return {'examples': examples, 'dead_letters': dead_letters,
          'span': finished}


class IngestRun(NamedTuple):
  """What ``run`` did: the pipeline result, the span and its directory."""
  result: Any
  span: int
  span_dir: Optional[str]
  dead_letters: Optional[int] = None
  splits: tuple[tuple[str, int], ...] = ()


def _dead_letters(result) -> Optional[int]:
  """The dead letters the run counted (None where metrics are not kept)."""
  try:
    found = result.metrics().query(MetricsFilter().with_namespace(
        _NAMESPACE).with_name('dead_letters'))['counters']
  except Exception:  # pylint: disable=broad-except
    return None
  return sum(c.committed or c.attempted or 0 for c in found) if found else None


def run(argv: Union[Sequence[str], PipelineOptions, None] = None
       ) -> IngestRun:
  """Parses flags, validates, runs the batch job to completion.

  Args:
    argv: the command line, or options parse_options already made.

  Returns:
    IngestRun; ``span_dir`` is None when no example was written.
  """
  options = (argv if isinstance(argv, PipelineOptions) else
             parse_options(argv))
  options.view_as(StandardOptions).streaming = False
  cfg = resolve(options)
  if not cfg.files:
    admin.topic_partitions(cfg.kafka.client_config, [cfg.kafka.input_topic],
                           timeout_s=30)
  engine = engine_lib.select_engine(options)
  _LOGGER.info(
      'ingest_examples: %s -> %s (splits %s by %s), dead letters -> %s, '
      'engine %s', cfg.source(), cfg.span.directory,
      ','.join(f'{n}:{r}' for n, r in cfg.span.splits), cfg.span.split_by,
      cfg.kafka.dead_letter_topic or cfg.dead_letter_path, engine.name)
  p = beam.Pipeline(runner=engine.runner, options=options)
  build_pipeline(p, cfg)
  result = p.run()
  result.wait_until_finish()
  # The schema file is written last: its presence marks a complete span.
  complete = FileSystems.exists(examples_io.schema_path(cfg.span.directory))
  return IngestRun(result, cfg.span.span,
                   cfg.span.directory if complete else None,
                   _dead_letters(result), cfg.span.splits)


def main(argv=None) -> int:
  return cli.run_main(argv, parse_options, run, report=_report, errors=(
      ValueError, admin.KafkaUnavailableError, admin.TopicNotFoundError))


def _report(done: IngestRun) -> int:
  if done.span_dir is None:
    print(f'no examples: span {done.span} not written')
    return 0
  counts = read_split_counts(done.span_dir, list(done.splits))
  print(f'span {done.span}: {sum(counts.values())} examples at '
        f'{done.span_dir} ('
        + ', '.join(f'{n}: {c}' for n, c in counts.items())
        + f'), {done.dead_letters} dead letters')
  return 0


if __name__ == '__main__':
  sys.exit(main())
