"""Kafka cluster helpers: reachability, topic creation and deletion, offsets.

Used by the jobs (to fail fast before a pipeline starts), by the local broker
manager and by the tests. Everything goes through the Kafka protocol with
confluent-kafka's AdminClient/Consumer, so it works the same against the
embedded brokers and a user's own cluster (any librdkafka setting, e.g.
``security.protocol`` or ``sasl.*``, passes through in ``client_config``).
"""

import logging
import time
from typing import Iterable, Mapping, Optional

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from transforms.kafka import client_logs, config_refs

_LOGGER = logging.getLogger(__name__)

# Keys that only make sense for a consumer or producer: AdminClient warns or
# fails on them, so they are dropped when an admin client is built from a
# consumer's configuration.
_NON_ADMIN_PREFIXES = (
    'group.', 'auto.offset.reset', 'enable.auto', 'auto.commit',
    'fetch.', 'isolation.level', 'enable.partition.eof', 'session.timeout',
    'heartbeat.', 'max.poll', 'partition.assignment', 'queued.',
    'enable.idempotence', 'acks', 'linger.ms', 'batch.', 'compression.',
    'delivery.timeout', 'message.timeout', 'queue.buffering', 'retries',
    'transactional.', 'max.in.flight', 'on_delivery', 'check.crcs',
)


_AUTH_ERRORS = (KafkaError._AUTHENTICATION,
                KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._SSL)


class KafkaUnavailableError(RuntimeError):
  """The cluster did not answer a metadata request in time."""


class TopicNotFoundError(RuntimeError):
  """A topic the job needs does not exist on the cluster."""


def admin_config(client_config: Mapping[str, object]) -> dict:
  """Returns the subset of a consumer/producer config usable by an admin client
  (settings given by reference read now: see transforms.kafka.config_refs;
  log lines routed: transforms.kafka.client_logs)."""
  return client_logs.route({
      k: v for k, v in config_refs.resolve(client_config).items()
      if not k.startswith(_NON_ADMIN_PREFIXES)
  })


def _admin(client_config: Mapping[str, object]) -> AdminClient:
  return AdminClient(admin_config(client_config))


def wait_for_cluster(client_config: Mapping[str, object],
                     timeout_s: float = 30.0) -> dict:
  """Waits until the cluster answers a metadata request.

  Args:
    client_config: librdkafka configuration; needs ``bootstrap.servers``.
    timeout_s: total time to wait.

  Returns:
    The broker map of the metadata answer ({node id: 'host:port'}).

  Raises:
    KafkaUnavailableError: no answer within ``timeout_s``, with the last error
      (e.g. connection refused, authentication failure).
  """
  deadline = time.monotonic() + timeout_s
  # A failed SASL or TLS handshake reaches the client as an error event
  # (error_cb), while the metadata request only times out with a transport
  # error: both are watched.
  client_errors: list = []
  config = admin_config(client_config)
  user_error_cb = config.get('error_cb')

  def on_error(err):
    client_errors.append(err)
    if user_error_cb is not None:
      user_error_cb(err)

  config['error_cb'] = on_error
  admin = AdminClient(config)
  last_error: Optional[Exception] = None
  while True:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      break
    try:
      md = admin.list_topics(timeout=min(2.0, remaining))
      admin.poll(0)  # hands librdkafka's log lines over (client_logs)
      if md.brokers:
        return {b.id: f'{b.host}:{b.port}' for b in md.brokers.values()}
    except KafkaException as e:
      admin.poll(0)
      last_error = e
      client_errors.extend(e.args[:1])
    # Authentication failures do not heal by waiting: report at once.
    for err in client_errors:
      if isinstance(err, KafkaError) and err.code() in _AUTH_ERRORS:
        client_logs.flush()
        raise KafkaUnavailableError(
            f'Kafka at {client_config.get("bootstrap.servers")} refused '
            f'authentication: {err.str()}')
    client_errors.clear()
    time.sleep(0.1)
  # The repeated connection errors, counted, before the error that ends it.
  client_logs.flush()
  raise KafkaUnavailableError(
      f'Kafka at {client_config.get("bootstrap.servers")!s} did not answer a '
      f'metadata request within {timeout_s:.0f}s'
      + (f' (last error: {last_error})' if last_error else '')
      + '. Check --bootstrap_servers and that the broker is running.')


def create_topic(client_config: Mapping[str, object],
                 name: str,
                 partitions: int = 1,
                 *,
                 replication_factor: int = 1,
                 config: Optional[Mapping[str, str]] = None,
                 timeout_s: float = 30.0) -> bool:
  """Creates a topic if it does not exist (idempotent).

  Args:
    client_config: librdkafka configuration with ``bootstrap.servers``.
    name: topic name.
    partitions: partition count for a new topic.
    replication_factor: replicas for a new topic (1 on a single broker).
    config: topic-level settings (e.g. ``retention.ms``).
    timeout_s: time allowed for the request and for the topic to show up in
      metadata.

  Returns:
    True if the topic was created, False if it already existed.

  Raises:
    ValueError: the topic exists with a different partition count.
    KafkaException: any other broker error.
  """
  admin = _admin(client_config)
  futures = admin.create_topics(
      [NewTopic(name, num_partitions=partitions,
                replication_factor=replication_factor,
                config=dict(config or {}))],
      request_timeout=timeout_s)
  created = True
  try:
    futures[name].result(timeout=timeout_s)
  except KafkaException as e:
    if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
      raise
    created = False
  existing = _wait_for_partitions(admin, name, timeout_s)
  if not created and existing != partitions:
    raise ValueError(
        f'topic {name!r} exists with {existing} partitions, not {partitions}')
  return created


def delete_topic(client_config: Mapping[str, object],
                 name: str,
                 timeout_s: float = 30.0) -> bool:
  """Deletes a topic; returns False if it did not exist."""
  admin = _admin(client_config)
  futures = admin.delete_topics([name], request_timeout=timeout_s)
  try:
    futures[name].result(timeout=timeout_s)
  except KafkaException as e:
    if e.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
      return False
    raise
  return True


def _wait_for_partitions(admin: AdminClient, topic: str,
                         timeout_s: float) -> int:
  deadline = time.monotonic() + timeout_s
  while True:
    md = admin.list_topics(topic=topic, timeout=timeout_s)
    t = md.topics.get(topic)
    if t is not None and t.error is None and t.partitions:
      return len(t.partitions)
    if time.monotonic() > deadline:
      raise TopicNotFoundError(
          f'topic {topic!r} has no partitions in metadata after {timeout_s}s')
    time.sleep(0.05)


def topic_partitions(client_config: Mapping[str, object],
                     topics: Iterable[str],
                     timeout_s: float = 30.0) -> list[tuple[str, int]]:
  """Lists (topic, partition) for the given topics, sorted.

  Raises:
    TopicNotFoundError: a topic does not exist (names all missing topics).
    KafkaUnavailableError: the cluster does not answer.
  """
  topics = list(topics)
  wait_for_cluster(client_config, timeout_s)
  admin = _admin(client_config)
  md = admin.list_topics(timeout=timeout_s)
  missing = [t for t in topics
             if t not in md.topics or md.topics[t].error is not None
             or not md.topics[t].partitions]
  if missing:
    raise TopicNotFoundError(
        f'unknown topic(s) {", ".join(sorted(missing))} at '
        f'{client_config.get("bootstrap.servers")}')
  return sorted((t, p) for t in topics for p in md.topics[t].partitions)


def end_offsets(client_config: Mapping[str, object],
                topic: str,
                timeout_s: float = 30.0) -> dict[int, int]:
  """Returns {partition: high watermark} of a topic (the next offset to be written)."""
  consumer = Consumer(_probe_consumer_config(client_config))
  try:
    out = {}
    for _, p in topic_partitions(client_config, [topic], timeout_s):
      _, high = consumer.get_watermark_offsets(
          TopicPartition(topic, p), timeout=timeout_s, cached=False)
      out[p] = high
    return out
  finally:
    consumer.close()


def committed_offsets(client_config: Mapping[str, object],
                      group: str,
                      topic: str,
                      timeout_s: float = 30.0) -> dict[int, Optional[int]]:
  """Returns {partition: committed offset or None} of a consumer group."""
  cfg = _probe_consumer_config(client_config)
  cfg['group.id'] = group
  consumer = Consumer(cfg)
  try:
    tps = [TopicPartition(t, p)
           for t, p in topic_partitions(client_config, [topic], timeout_s)]
    return {
        tp.partition: (tp.offset if tp.offset >= 0 else None)
        for tp in consumer.committed(tps, timeout=timeout_s)
    }
  finally:
    consumer.close()


def _probe_consumer_config(client_config: Mapping[str, object]) -> dict:
  cfg = client_logs.route(config_refs.resolve(client_config))
  cfg.setdefault('group.id', '_kbi_probe')
  cfg['enable.auto.commit'] = False
  return cfg


# What a producer and a broker accept by default: librdkafka's
# message.max.bytes, just under Kafka's default max.message.bytes (1048588).
DEFAULT_MAX_RECORD_BYTES = 1_000_000


def max_record_bytes(client_config: Mapping[str, object], topic: str,
                     timeout_s: float = 10.0) -> int:
  """The largest record ``topic`` accepts: its ``max.message.bytes``, else
  the broker's ``message.max.bytes``, else DEFAULT_MAX_RECORD_BYTES (a
  broker that does not answer DescribeConfigs). Never above what the
  client config allows a producer to send (its ``message.max.bytes``)."""
  from confluent_kafka.admin import ConfigResource  # pylint: disable=import-outside-toplevel
  admin = _admin(client_config)
  limit = None
  try:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout_s)
    entry = configs.get('max.message.bytes')
    if entry is not None and entry.value:
      limit = int(entry.value)
  except Exception as e:  # pylint: disable=broad-except
    _LOGGER.info('topic %s: no max.message.bytes from the broker (%s); '
                 'assuming %d', topic, e, DEFAULT_MAX_RECORD_BYTES)
  if limit is None or limit <= 0:
    limit = DEFAULT_MAX_RECORD_BYTES
  client_limit = client_config.get('message.max.bytes')
  if client_limit is not None:
    limit = min(limit, int(client_limit))
  return limit
