"""Where a job's predictions and dead letters go, from the sink flags.

Shared by score_stream and backfill so that every destination works from
every job, in any combination: Kafka (``--output_topic``,
``--dead_letter_topic``), files (``--output_path``, ``--dead_letter_path``)
and BigQuery (``--bq_table``). Rows BigQuery rejects join the dead letters.
"""

from typing import Optional

import apache_beam as beam

from beam_jobs import config
from transforms.dead_letters import KafkaFit
from transforms.kafka import admin, choose
from transforms.prediction_rows import kafka_records
from transforms.sinks import (WriteDeadLetterFiles, WritePredictionFiles,
                              WritePredictionsToBigQuery)


def write_dead_letters_to_kafka(kafka_io: str, producer_config: dict,
                                topic: str, *, max_record_bytes: int =
                                admin.DEFAULT_MAX_RECORD_BYTES,
                                **write_kwargs) -> beam.PTransform:
  """The Kafka write of dead letters: each as its original record (key,
  value, headers, timestamp) plus ``dlq.*`` headers, cut to fit the
  topic's record limit when it would not (transforms.dead_letters.KafkaFit)."""
  fit = KafkaFit(max_record_bytes)
  config = dict(producer_config)
  config.setdefault('message.max.bytes', max_record_bytes)
  return choose.build_write(kafka_io, config, topic, key=fit.key,
                           value=fit.value, headers=fit.headers,
                           timestamp=fit.timestamp, **write_kwargs)


def write_outputs(predictions: beam.PCollection,
                  dead_letters: beam.PCollection,
                  sinks: config.SinkSettings,
                  kafka: Optional[config.KafkaSettings], *, columns,
                  streaming: bool,
                  dead_letter_max_bytes: int = admin.DEFAULT_MAX_RECORD_BYTES,
                  dead_letter_filter: Optional[beam.PTransform] = None
                  ) -> beam.PCollection:
  """Applies every configured sink; returns the dead letters written
  (incl. sinks').

  Args:
    predictions: lists of prediction rows, in their event-time windows.
    dead_letters: DeadLetters of the earlier stages.
    sinks: the file and BigQuery destinations and the outage policy.
    kafka: the Kafka topics (output and dead-letter topics, if set) and
      client settings; None for a job without Kafka.
    columns: the prediction columns
      (transforms.prediction_rows.output_columns).
    streaming: whether the job is a streaming one.
    dead_letter_max_bytes: the dead-letter topic's record limit
      (admin.max_record_bytes, looked up by the job's preflight).
    dead_letter_filter: a DeadLetter -> DeadLetter transform applied
      before the dead-letter sinks (transforms.dedup.DropWrittenDeadLetters),
      as step ``DropWrittenDeadLetters``.
  """
  outage = sinks.outage
  if sinks.bq_table:
    rejected = predictions | 'WriteBigQuery' >> WritePredictionsToBigQuery(
        sinks.bq_table, columns, method=sinks.bq_method, streaming=streaming,
        endpoint=sinks.bq_endpoint, temp_location=sinks.temp_location)
    dead_letters = ((dead_letters, rejected)
                    | 'AddSinkDeadLetters' >> beam.Flatten())
  if dead_letter_filter is not None:
    dead_letters = dead_letters | 'DropWrittenDeadLetters' >> (
        dead_letter_filter)
  if sinks.output_path:
    _ = predictions | 'WritePredictionFiles' >> WritePredictionFiles(
        sinks.output_path, sinks.output_file_format, columns,
        streaming=streaming, outage_policy=outage)
  if sinks.dead_letter_path:
    _ = dead_letters | 'WriteDeadLetterFiles' >> WriteDeadLetterFiles(
        sinks.dead_letter_path, streaming=streaming,
        flush_every_s=sinks.dead_letter_flush_s, outage_policy=outage)
  if kafka is not None and kafka.output_topic:
    _ = (predictions
         | 'ToKafkaRecords' >> beam.Map(kafka_records)
         | 'WritePredictions' >> choose.build_write(
             kafka.kafka_io, dict(kafka.client_config), kafka.output_topic,
             batched=True, outage_policy=outage))
  if kafka is not None and kafka.dead_letter_topic:
    _ = dead_letters | 'WriteDeadLetters' >> write_dead_letters_to_kafka(
        kafka.kafka_io, dict(kafka.client_config), kafka.dead_letter_topic,
        max_record_bytes=dead_letter_max_bytes, outage_policy=outage)
  return dead_letters
