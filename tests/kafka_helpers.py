"""Producing and reading test data with the plain client (independent of the IO under test)."""

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(broker, topic, records, **config):
  """Produces (partition, key, value, headers, timestamp_ms) tuples; waits for all."""
  producer = Producer(broker.client_config(**{'linger.ms': 5, **config}))
  for partition, key, value, headers, ts in records:
    kwargs = {}
    if partition is not None:
      kwargs['partition'] = partition
    if ts is not None:
      kwargs['timestamp'] = ts
    producer.produce(topic, value=value, key=key, headers=headers, **kwargs)
  assert producer.flush(30) == 0


def consume_all(broker, topic, partitions, expected, timeout_s=30):
  """Reads ``expected`` records from offset 0 of each partition."""
  import time
  consumer = Consumer(broker.client_config(**{
      'group.id': f'verify-{topic}', 'enable.auto.commit': False}))
  consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
  out = []
  deadline = time.monotonic() + timeout_s
  try:
    while len(out) < expected and time.monotonic() < deadline:
      for m in consumer.consume(num_messages=1000, timeout=0.5):
        if m.error() is None:
          out.append(m)
  finally:
    consumer.close()
  return out


def same_elements(expected):
  """assert_that matcher: equal as multisets, with a short message on failure."""
  import collections

  from apache_beam.testing.util import BeamAssertException

  want = collections.Counter(expected)

  def check(actual):
    got = collections.Counter(actual)
    if got == want:
      return
    missing = list((want - got).elements())
    unexpected = list((got - want).elements())
    raise BeamAssertException(
        f'{sum(got.values())} elements, expected {sum(want.values())}; '
        f'{len(missing)} missing (e.g. {missing[:2]}), {len(unexpected)} '
        f'unexpected (e.g. {unexpected[:2]})')

  return check


def read_topic(broker, topic, expected, *, quiet_s=1.0, timeout_s=60):
  """Every record of a topic (all partitions, from the start), read until
  ``expected`` records have arrived and then ``quiet_s`` passed without
  another: a duplicate written past the expected count is still seen.

  Returns:
    confluent_kafka.Message objects (without errors), in arrival order.
  """
  import time
  from transforms.kafka import admin
  partitions = [p for _, p in admin.topic_partitions(broker.client_config(),
                                                     [topic])]
  consumer = Consumer(broker.client_config(**{
      'group.id': f'verify-{topic}', 'enable.auto.commit': False}))
  consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
  out = []
  deadline = time.monotonic() + timeout_s
  last_new = time.monotonic()
  try:
    while time.monotonic() < deadline:
      batch = [m for m in consumer.consume(num_messages=1000, timeout=0.2)
               if m.error() is None]
      if batch:
        out.extend(batch)
        last_new = time.monotonic()
      elif len(out) >= expected and time.monotonic() - last_new >= quiet_s:
        break
  finally:
    consumer.close()
  return out
