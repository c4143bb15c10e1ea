"""Protocol round trip on each broker kind: what is produced is read back identical."""

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from transforms.kafka import admin

pytestmark = [pytest.mark.it, pytest.mark.contract]


def test_produce_and_read_back_identical(broker, make_topic):
  topic = make_topic(partitions=4)
  sent = []
  producer = Producer(broker.client_config(**{'enable.idempotence': True,
                                               'linger.ms': 5}))
  for i in range(200):
    partition = i % 4
    key = f'k{i}'.encode()
    value = f'{{"id": {i}, "payload": "{"x" * (i % 50)}"}}'.encode()
    headers = [('trace', f't{i}'.encode()), ('source', b'roundtrip')]
    ts = 1_700_000_000_000 + i * 1000
    producer.produce(topic, value=value, key=key, partition=partition,
                     headers=headers, timestamp=ts)
    sent.append((partition, key, value, headers, ts))
  assert producer.flush(30) == 0

  consumer = Consumer(broker.client_config(**{
      'group.id': f'g-{topic}', 'enable.auto.commit': False,
      'auto.offset.reset': 'earliest'}))
  consumer.assign([TopicPartition(topic, p, 0) for p in range(4)])
  got = []
  try:
    while len(got) < len(sent):
      for m in consumer.consume(num_messages=500, timeout=5):
        assert m.error() is None, m.error()
        got.append((m.partition(), m.key(), m.value(), m.headers(),
                    m.timestamp()[1], m.offset()))
  finally:
    consumer.close()

  assert len(got) == len(sent)
  by_key = {g[1]: g for g in got}
  for partition, key, value, headers, ts in sent:
    p, _, v, h, t, _ = by_key[key]
    assert (p, v, h, t) == (partition, value, headers, ts)
  # Offsets are dense per partition, in produce order.
  for p in range(4):
    offsets = sorted(g[5] for g in got if g[0] == p)
    assert offsets == list(range(50))
  assert admin.topic_partitions(broker.client_config(), [topic]) == [
      (topic, p) for p in range(4)]
