"""Typed job settings, resolved once from the flags.

A job turns its PipelineOptions into these frozen objects at start (each
``of(options)`` validates its group and raises ValueError naming the flag)
and passes them down: transforms and helpers take settings, never
PipelineOptions, and never resolve the schema or the Kafka config again.

  EventSettings   --schema (resolved once), --input_format, Avro wire format,
                  --max_payload_bytes, --max_future_s
  ModelSettings   --model_dir and how it is called; ``handler(schema)`` is the
                  one place a model runtime is chosen (--model_handler) and
                  what serves (--control_topic deployments, or the newest
                  complete version)
  ScoringSettings what every scoring job shares: events, window, model
  KafkaSettings   cluster, topics, group, start, --kafka_io, the client config
  SinkSettings    files, dead-letter files, BigQuery, the outage policy
"""

import dataclasses
from typing import Optional

from apache_beam.options.pipeline_options import (GoogleCloudOptions,
                                                  PipelineOptions)

from beam_jobs import options as opts
from transforms import parse as parse_lib
from transforms import schema as schema_lib
from transforms import windows as windows_lib
from transforms.kafka import StopAt, offsets
from transforms.outage import OutagePolicy


@dataclasses.dataclass(frozen=True)
class EventSettings:
  """What the events look like and how their payloads are decoded."""
  schema: schema_lib.EventSchema
  input_format: str
  confluent_wire_format: bool = False
  avro_schema_id: Optional[int] = None
  max_payload_bytes: int = parse_lib.DEFAULT_MAX_PAYLOAD_BYTES

  @classmethod
  def of(cls, options: PipelineOptions) -> 'EventSettings':
    e = options.view_as(opts.EventOptions)
    schema = opts.event_schema(e)
    if e.max_payload_bytes < 1:
      raise ValueError(f'--max_payload_bytes must be >= 1, got '
                       f'{e.max_payload_bytes}')
    return cls(schema, e.input_format, e.confluent_wire_format,
               e.avro_schema_id, e.max_payload_bytes)

  def check_payload_format(self, payload_format: Optional[str] = None
                          ) -> None:
    """ValueError naming the flags when payloads of ``payload_format``
    (default --input_format) cannot be decoded with this schema."""
    if (payload_format or self.input_format) == 'avro' and (
        not self.schema.avro_schema):
      raise ValueError('--input_format=avro needs a --schema with an '
                       '"avro_schema"')

  def parser(self, payload_format: Optional[str] = None
            ) -> parse_lib.RecordParser:
    """The RecordParser (``payload_format`` overrides --input_format)."""
    return parse_lib.RecordParser(
        self.schema, payload_format or self.input_format,
        confluent_wire_format=self.confluent_wire_format,
        expected_schema_id=self.avro_schema_id,
        max_payload_bytes=self.max_payload_bytes)

  def parse_events(self, payload_format: Optional[str] = None
                  ) -> parse_lib.ParseEvents:
    """The ParseEvents transform of these settings."""
    return parse_lib.ParseEvents(
        self.schema, payload_format or self.input_format,
        confluent_wire_format=self.confluent_wire_format,
        expected_schema_id=self.avro_schema_id,
        max_payload_bytes=self.max_payload_bytes)


@dataclasses.dataclass(frozen=True)
class ModelSettings:
  """The SavedModel and how it is called."""
  model_dir: str
  signature: str
  output: Optional[str]
  version: Optional[int]
  poll_s: float
  min_batch_rows: int
  max_batch_rows: int
  runtime: str
  # --control_topic: (client config pairs, topic, deployment), or None.
  control: Optional[tuple] = None

  @classmethod
  def of(cls, options: PipelineOptions) -> 'ModelSettings':
    m = options.view_as(opts.ModelOptions)
    opts.validate_model(m)
    control = None
    if m.control_topic:
      # The job's own cluster and client settings; references (@secret:)
      # stay references, resolved by the worker that reads.
      control = (tuple(sorted(opts.client_config(options).items())),
                 m.control_topic, m.deployment)
    return cls(m.model_dir, m.model_signature, m.model_output,
               m.model_version, m.model_poll_s,
               m.min_batch_size or m.max_batch_size, m.max_batch_size,
               m.model_handler, control)

  def handler(self, schema: schema_lib.EventSchema):
    """The RunInference model handler for events of ``schema``: the one
    place where the model runtime (--model_handler) is chosen."""
    # Imported here: the model runtime (TensorFlow) is needed by the run,
    # not by --help or by building settings.
    from models.handler import SavedModelHandler  # pylint: disable=import-outside-toplevel
    from models.serving import ControlSource  # pylint: disable=import-outside-toplevel
    control = None
    if self.control is not None:
      pairs, topic, deployment = self.control
      control = ControlSource(pairs, topic, deployment)
    return SavedModelHandler(
        self.model_dir, schema.features,
        window_features=schema.window_features, signature=self.signature,
        output_key=self.output, poll_interval_s=self.poll_s,
        pinned_version=self.version, min_batch_rows=self.min_batch_rows,
        max_batch_rows=self.max_batch_rows, model_handler=self.runtime,
        control=control)


@dataclasses.dataclass(frozen=True)
class ScoringSettings:
  """What the scoring core (beam_jobs/scoring.py) needs."""
  events: EventSettings
  window: windows_lib.WindowSpec
  model: ModelSettings

  @classmethod
  def of(cls, options: PipelineOptions) -> 'ScoringSettings':
    return cls(EventSettings.of(options),
               opts.window_spec(options.view_as(opts.WindowOptions)),
               ModelSettings.of(options))


@dataclasses.dataclass(frozen=True)
class ReadTiming:
  """How the read's watermark follows event times."""
  max_delay_s: float
  idle_timeout_s: float

  @classmethod
  def of(cls, options: PipelineOptions) -> 'ReadTiming':
    w = options.view_as(opts.WindowOptions)
    opts.window_spec(w)  # validates the window flags incl. these two
    return cls(w.max_delay_s, w.idle_timeout_s)


@dataclasses.dataclass(frozen=True)
class KafkaSettings:
  """The cluster, the topics and the group; ``client_config`` holds the
  librdkafka settings of --bootstrap_servers and --kafka_config (values
  given by reference stay references, resolved on the workers)."""
  client_config: dict
  input_topic: Optional[str]
  output_topic: Optional[str]
  dead_letter_topic: Optional[str]
  consumer_group: str
  start: str
  kafka_io: str
  read_batch_records: int

  @classmethod
  def of(cls, options: PipelineOptions, *,
         validate_input: bool = True) -> 'KafkaSettings':
    """``validate_input``: check --input_topic, --start and the rest of a
    Kafka read (jobs that may read files instead pass False)."""
    k = options.view_as(opts.KafkaOptions)
    if validate_input:
      opts.validate_kafka(options)
    return cls(opts.client_config(options), k.input_topic, k.output_topic,
               k.dead_letter_topic, k.consumer_group, k.start, k.kafka_io,
               k.read_batch_records)

  @property
  def bootstrap_servers(self) -> str:
    return self.client_config['bootstrap.servers']

  def consumer_config(self) -> dict:
    """The read's consumer settings: the group, and with --start committed,
    for a group without committed offsets, the beginning of the log."""
    config = dict(self.client_config, **{'group.id': self.consumer_group})
    if self.start == offsets.START_COMMITTED:
      config.setdefault('auto.offset.reset', 'earliest')
    return config


@dataclasses.dataclass(frozen=True)
class SinkSettings:
  """Files, dead-letter files and BigQuery destinations."""
  output_path: Optional[str]
  output_file_format: str
  dead_letter_path: Optional[str]
  dead_letter_flush_s: float
  bq_table: Optional[str]
  bq_method: str
  bq_endpoint: Optional[str]
  temp_location: Optional[str]
  outage: OutagePolicy

  @classmethod
  def of(cls, options: PipelineOptions) -> 'SinkSettings':
    s = options.view_as(opts.SinkOptions)
    opts.validate_sinks(s)
    return cls(s.output_path, s.output_file_format, s.dead_letter_path,
               s.dead_letter_flush_s, s.bq_table, s.bq_method, s.bq_endpoint,
               options.view_as(GoogleCloudOptions).temp_location,
               opts.outage_policy(s))


def stop_of(options: PipelineOptions) -> Optional[StopAt]:
  """The read's stop of --max_records / --max_read_time_s (None:
  unbounded)."""
  bounded = options.view_as(opts.BoundedRunOptions)
  opts.validate_bounded(bounded)
  if bounded.max_records is not None:
    return StopAt.total_records(bounded.max_records)
  if bounded.max_read_time_s is not None:
    return StopAt.read_time(bounded.max_read_time_s)
  return None


__all__ = ['EventSettings', 'KafkaSettings', 'ModelSettings', 'ReadTiming',
           'ScoringSettings', 'SinkSettings', 'stop_of']
