"""Pure-Python Kafka IO for Beam on confluent-kafka (no Java, no expansion service)."""

from transforms.kafka.offsets import StopAt
from transforms.kafka.read import KafkaRecordCoder, ReadFromKafka
from transforms.kafka.records import (CREATE_TIME, LOG_APPEND_TIME, KafkaRecord,
                                      TimestampPolicy)
from transforms.kafka.write import KafkaDeliveryError, WriteToKafka

__all__ = [
    'CREATE_TIME', 'LOG_APPEND_TIME', 'KafkaDeliveryError', 'KafkaRecord',
    'KafkaRecordCoder', 'ReadFromKafka', 'StopAt', 'TimestampPolicy',
    'WriteToKafka',
]
