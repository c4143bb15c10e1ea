"""Pure-Python Kafka IO for Beam on confluent-kafka (no Java, no expansion service).

The IO names below load on first use (PEP 562), so tools that only need the
cluster helpers (``transforms.kafka.admin``: ``beam_jobs.lag``, the status
page) import neither Beam nor its runners.
"""

import importlib

# name -> the submodule that defines it.
_EXPORTS = {
    'StopAt': 'offsets',
    'KafkaRecordCoder': 'read', 'ReadFromKafka': 'read',
    'CREATE_TIME': 'records', 'LOG_APPEND_TIME': 'records',
    'KafkaRecord': 'records', 'TimestampPolicy': 'records',
    'KafkaDeliveryError': 'write', 'WriteToKafka': 'write',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  module = _EXPORTS.get(name)
  if module is None:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{module}'), name)
  globals()[name] = value  # once: later lookups skip this hook
  return value
