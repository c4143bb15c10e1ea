"""The jobs' Kafka source and sink for ``--kafka_io``: this package's
pure-Python IO (``python``, the default) or Beam's Java KafkaIO through its
cross-language wrappers (``xlang``, transforms/kafka/xlang.py), built from
the same arguments either way."""

from typing import Any, Mapping, Sequence, Union

import apache_beam as beam

from transforms.kafka import xlang
from transforms.kafka.read import ReadFromKafka
from transforms.kafka.write import WriteToKafka


def build_read(kafka_io: str,
               consumer_config: Mapping[str, Any],
               topics: Union[str, Sequence[str]],
               *,
               expansion_service=None,
               **read_kwargs) -> beam.PTransform:
  """The Kafka source for ``--kafka_io``.

  Args:
    kafka_io: 'python' or 'xlang'.
    consumer_config: librdkafka consumer settings.
    topics: a topic or topics.
    expansion_service: xlang only: an expansion service address
      ('host:port') or object; default: Beam's, from the jar (needs Java).
    **read_kwargs: ReadFromKafka's keyword arguments (start, stop,
      with_metadata, timestamp_policy, max_batch_records, ...).

  Raises:
    ValueError: an unknown ``kafka_io``, a bad read spec, or (xlang) a spec
      Java KafkaIO cannot express.
  """
  xlang.check_kafka_io(kafka_io)
  if kafka_io == xlang.KAFKA_IO_PYTHON:
    if expansion_service is not None:
      raise ValueError('expansion_service is for --kafka_io=xlang only')
    return ReadFromKafka(consumer_config, topics, **read_kwargs)
  external_kwargs = xlang.xlang_read_kwargs(consumer_config, topics, **read_kwargs)
  return xlang.XlangReadFromKafka(
      external_kwargs,
      max_batch_records=read_kwargs.get('max_batch_records', 0),
      expansion_service=expansion_service)


def build_write(kafka_io: str,
                producer_config: Mapping[str, Any],
                topic,
                *,
                expansion_service=None,
                **write_kwargs) -> beam.PTransform:
  """The Kafka sink for ``--kafka_io``.

  Args:
    kafka_io: 'python' or 'xlang'.
    producer_config: librdkafka producer settings.
    topic: a topic name, or a function record -> topic.
    expansion_service: xlang only (see build_read).
    **write_kwargs: WriteToKafka's keyword arguments (key, value, headers,
      idempotent, batched, flush_timeout_s).

  Raises:
    ValueError: an unknown ``kafka_io``, a bad write spec, or (xlang)
      settings the Java client cannot take.
  """
  xlang.check_kafka_io(kafka_io)
  ours = WriteToKafka(producer_config, topic, **write_kwargs)
  if kafka_io == xlang.KAFKA_IO_PYTHON:
    if expansion_service is not None:
      raise ValueError('expansion_service is for --kafka_io=xlang only')
    return ours
  return xlang.XlangWriteToKafka(ours.settings, expansion_service=expansion_service)


__all__ = ['build_read', 'build_write']
