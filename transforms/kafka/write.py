"""WriteToKafka: asynchronous, idempotent produce that fails the bundle on loss."""

import logging
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from confluent_kafka import KafkaError, KafkaException, Producer

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'kafka_write'

HeadersFn = Callable[[Any], Optional[Sequence[tuple[str, bytes]]]]


class KafkaDeliveryError(RuntimeError):
  """Records of a bundle could not be delivered; the runner retries the bundle."""


def _default_key(element):
  if isinstance(element, tuple) and len(element) == 2:
    return element[0]
  return None


def _default_value(element):
  if isinstance(element, tuple) and len(element) == 2:
    return element[1]
  return element


def effective_producer_config(config: Mapping[str, Any], idempotent: bool) -> dict:
  """The producer settings WriteToKafka uses on top of the user's.

  Idempotence (and acks=all, which it implies) means a retried send never
  writes a duplicate within a producer session; the user may turn it off.
  """
  cfg = dict(config)
  if idempotent:
    cfg.setdefault('enable.idempotence', True)
    cfg.setdefault('acks', 'all')
  # Batch for throughput; a bundle flushes at its end anyway.
  cfg.setdefault('linger.ms', 5)
  cfg.setdefault('compression.type', 'lz4')
  # A delivery that cannot complete fails within this time instead of hanging.
  cfg.setdefault('message.timeout.ms', 60_000)
  return cfg


class _ProduceFn(beam.DoFn):
  """Produces each element; flushes and checks deliveries at bundle end.

  Retry policy: librdkafka retries transient errors itself (idempotently).
  A record that still fails (timeout, unknown topic, authorization, record too
  large) fails the whole bundle with KafkaDeliveryError; the runner retries
  the bundle, so nothing is dropped silently. Records of the failed attempt
  that were delivered may then be written again (at-least-once).
  """

  def __init__(self, config, topic, key_fn, value_fn, headers_fn,
               flush_timeout_s):
    self._config = config
    self._topic = topic
    self._key_fn = key_fn
    self._value_fn = value_fn
    self._headers_fn = headers_fn
    self._flush_timeout_s = flush_timeout_s
    self._producer: Optional[Producer] = None
    self._errors: list = []
    self._pending = 0
    self.written = Metrics.counter(_NAMESPACE, 'records_written')
    self.failed = Metrics.counter(_NAMESPACE, 'delivery_failures')

  def setup(self):
    self._producer = Producer(self._config)

  def start_bundle(self):
    self._errors = []

  def _on_delivery(self, err, msg):
    if err is not None:
      self.failed.inc()
      self._errors.append((err, msg.topic(), msg.key()))
    else:
      self.written.inc()

  def process(self, element):
    topic = self._topic(element) if callable(self._topic) else self._topic
    key = self._key_fn(element)
    value = self._value_fn(element)
    headers = self._headers_fn(element) if self._headers_fn else None
    if isinstance(key, str):
      key = key.encode('utf-8')
    if isinstance(value, str):
      value = value.encode('utf-8')
    while True:
      try:
        self._producer.produce(topic, value=value, key=key, headers=headers,
                               on_delivery=self._on_delivery)
        break
      except BufferError:
        # Local queue full: serve delivery reports to make room, then retry.
        self._producer.poll(0.05)
      except KafkaException as e:
        raise KafkaDeliveryError(f'cannot produce to {topic!r}: {e}') from e
    self._producer.poll(0)

  def finish_bundle(self):
    remaining = self._producer.flush(self._flush_timeout_s)
    if remaining:
      raise KafkaDeliveryError(
          f'{remaining} record(s) not delivered within {self._flush_timeout_s}s '
          f'(brokers {self._config.get("bootstrap.servers")}); the bundle '
          f'will be retried')
    if self._errors:
      err, topic, key = self._errors[0]
      code = err.code() if isinstance(err, KafkaError) else None
      raise KafkaDeliveryError(
          f'{len(self._errors)} record(s) failed delivery; first: topic '
          f'{topic!r} key {key!r}: {err.str() if code is not None else err}; '
          f'the bundle will be retried')

  def teardown(self):
    if self._producer is not None:
      self._producer.flush(self._flush_timeout_s)
      self._producer = None


class WriteToKafka(beam.PTransform):
  """Writes elements to Kafka.

  By default an element ``(key, value)`` is written as that key and value and
  any other element as the value; ``key``/``value``/``headers`` functions
  override that. ``str`` keys and values are UTF-8 encoded.

  Example::

    predictions | WriteToKafka({'bootstrap.servers': 'localhost:9092'},
                               'scores', key=lambda p: p['event_id'],
                               value=json_bytes)
  """

  def __init__(self,
               producer_config: Mapping[str, Any],
               topic: Union[str, Callable[[Any], str]],
               *,
               key: Callable[[Any], Optional[bytes]] = _default_key,
               value: Callable[[Any], Optional[bytes]] = _default_value,
               headers: Optional[HeadersFn] = None,
               idempotent: bool = True,
               flush_timeout_s: float = 120.0):
    """Configures the write.

    Args:
      producer_config: librdkafka producer settings, passed through.
      topic: a topic name, or a function element -> topic (route per element,
        e.g. dead letters and predictions from one step).
      key: element -> key bytes (or str).
      value: element -> value bytes (or str).
      headers: element -> list of (name, bytes), or None.
      idempotent: enable the idempotent producer (default True).
      flush_timeout_s: longest wait for deliveries at the end of a bundle.
    """
    super().__init__()
    if not producer_config.get('bootstrap.servers'):
      raise ValueError("producer config needs 'bootstrap.servers'")
    if not topic:
      raise ValueError('topic must be a name or a function')
    self._config = effective_producer_config(producer_config, idempotent)
    self._topic = topic
    self._key = key
    self._value = value
    self._headers = headers
    self._flush_timeout_s = flush_timeout_s

  def expand(self, pcoll):
    return pcoll | 'ProduceToKafka' >> beam.ParDo(
        _ProduceFn(self._config, self._topic, self._key, self._value,
                   self._headers, self._flush_timeout_s))
