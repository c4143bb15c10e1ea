"""WriteToKafka: asynchronous, idempotent produce that fails the bundle on loss."""

import dataclasses
import logging
import sys
import threading
import time
import uuid
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import apache_beam as beam
from apache_beam.metrics import Metrics
from confluent_kafka import KafkaError, Producer

from transforms.kafka import client_logs, config_refs
from transforms.outage import Outage, OutagePolicy

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'kafka_write'

HeadersFn = Callable[[Any], Optional[Sequence[tuple[str, bytes]]]]

# Longest teardown waits for records still queued: everything of a successful
# bundle was flushed in finish_bundle already; what is left belongs to a
# failed bundle, which the runner retries anyway.
_TEARDOWN_FLUSH_S = 5.0


@dataclasses.dataclass(frozen=True)
class WriteSettings:
  """One write's settings, resolved once by WriteToKafka and read by name
  (the cross-language write, transforms/kafka/xlang.py, is built from them).

  WriteToKafka.__init__ documents each; ``producer_config`` is the effective
  one (effective_producer_config: the user's plus idempotence and defaults).
  """
  producer_config: Mapping[str, Any]
  topic: Union[str, Callable[[Any], str]]
  key: Callable[[Any], Optional[bytes]]
  value: Callable[[Any], Optional[bytes]]
  headers: Optional[HeadersFn] = None
  timestamp: Optional[Callable[[Any], Optional[int]]] = None
  batched: bool = False
  flush_timeout_s: float = 10.0
  outage_policy: Optional[OutagePolicy] = None


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


class _ProducerSlot:
  """A producer kept for one (write transform, thread) across DoFn copies.

  Runners may build a fresh DoFn per bundle (Beam's bundle-based
  DirectRunner unpickles, sets up and tears down every ParDo per bundle):
  a new librdkafka producer per bundle costs a connection and a metadata
  round trip each time. The slot outlives the DoFn copies; its callbacks
  forward to whichever copy is using it now. One slot per thread keeps
  concurrent DoFn instances (other runners) on separate producers, so
  delivery failures are always reported to the bundle that sent the record.
  """

  def __init__(self, config: dict):
    self.owner = None
    self.released_at = 0.0
    # Referenced settings (secrets) are read here, on the worker.
    config = client_logs.route(config_refs.resolve(config))
    config['on_delivery'] = self._on_delivery
    config['error_cb'] = self._on_client_error
    self.producer = Producer(config)

  def _on_delivery(self, err, msg):
    owner = self.owner
    if owner is not None:
      owner._on_delivery(err, msg)  # pylint: disable=protected-access

  def _on_client_error(self, err):
    owner = self.owner
    if owner is not None:
      owner._on_client_error(err)  # pylint: disable=protected-access


_SLOTS: dict = {}
_SLOTS_LOCK = threading.Lock()
# A slot nobody has used for this long is closed: its transform is gone
# (a finished pipeline) and its producer would otherwise live forever.
_SLOT_IDLE_S = 30.0


def _evict_idle_slots_locked(now: float) -> None:
  for key in [k for k, s in _SLOTS.items()
              if s.owner is None and now - s.released_at > _SLOT_IDLE_S]:
    slot = _SLOTS.pop(key)
    slot.producer.flush(0)


def _discard_slot(transform_id: str) -> None:
  """Forgets this thread's producer of a write (after a fatal error: a
  fatal producer cannot be used again; the next setup builds a new one)."""
  with _SLOTS_LOCK:
    _SLOTS.pop((transform_id, threading.get_ident()), None)


def _producer_slot(transform_id: str, config: dict) -> _ProducerSlot:
  key = (transform_id, threading.get_ident())
  with _SLOTS_LOCK:
    _evict_idle_slots_locked(time.monotonic())
    slot = _SLOTS.get(key)
    if slot is None:
      slot = _SLOTS[key] = _ProducerSlot(config)
    return slot


def _retriable(err) -> bool:
  """Delivery errors an outage explains (a broker down or restarting, a
  timeout): the record can be delivered later. Not: a record too large,
  authorization, an invalid record."""
  if not isinstance(err, KafkaError):
    return False
  return err.retriable() or err.code() in _OUTAGE_CODES


_OUTAGE_CODES = frozenset(
    getattr(KafkaError, name) for name in (
        '_MSG_TIMED_OUT', '_TIMED_OUT', '_TRANSPORT', '_ALL_BROKERS_DOWN',
        'REQUEST_TIMED_OUT', 'NOT_LEADER_FOR_PARTITION',
        'LEADER_NOT_AVAILABLE', 'NOT_ENOUGH_REPLICAS',
        'NOT_ENOUGH_REPLICAS_AFTER_APPEND', 'NETWORK_EXCEPTION',
        '_UNKNOWN_PARTITION') if hasattr(KafkaError, name))


class _ProduceFn(beam.DoFn):
  """Produces each element (or each record of a batch element); flushes and
  checks deliveries at bundle end.

  Retry policy: librdkafka retries transient errors itself (idempotently).
  A record that still fails because the destination is unavailable (timed
  out, brokers down, no leader) is produced again at the end of the bundle,
  with capped backoff and a log line every few seconds, for as long as the
  outage policy allows (transforms/outage.py; then OutageError naming the
  topic); the bundle does not finish, so no offset is committed past it. A
  record that fails for good (too large, not authorized, an unknown topic)
  or a fatal producer error fails the whole bundle with KafkaDeliveryError;
  the runner retries the bundle, so nothing is dropped silently. Records of
  a failed attempt that were delivered may then be written again
  (at-least-once).

  Delivery reports are requested for failures only
  (``delivery.report.only.error``): a callback per record would cost more
  than producing it. ``flush()`` still waits for every record, so after a
  flush that leaves nothing queued, every record without a failure report
  was delivered.
  """

  def __init__(self, config, topic, key_fn, value_fn, headers_fn,
               flush_timeout_s, batched=False, outage_policy=None,
               timestamp_fn=None):
    self._config = config
    self._topic = topic
    self._key_fn = key_fn
    self._value_fn = value_fn
    self._headers_fn = headers_fn
    self._timestamp_fn = timestamp_fn
    self._flush_timeout_s = flush_timeout_s
    self._batched = batched
    self._outage_policy = outage_policy or OutagePolicy()
    # Identifies this write across the copies a runner makes of the DoFn.
    self._transform_id = uuid.uuid4().hex
    self._slot: Optional[_ProducerSlot] = None
    self._producer: Optional[Producer] = None
    self._lock = threading.Lock()
    self._errors: list = []
    self._client_error: Optional[str] = None
    self._fatal = False
    self._produced = 0
    self.written = Metrics.counter(_NAMESPACE, 'records_written')
    self.failed = Metrics.counter(_NAMESPACE, 'delivery_failures')
    self.redelivered = Metrics.counter(_NAMESPACE, 'records_produced_again')

  def setup(self):
    config = dict(self._config)
    config.setdefault('delivery.report.only.error', True)
    # One callback for the producer (through the slot), not a bound method
    # per produce() call.
    self._slot = _producer_slot(self._transform_id, config)
    self._slot.owner = self
    self._producer = self._slot.producer

  def start_bundle(self):
    if self._producer is None:
      # The previous bundle's producer failed and was discarded.
      self.setup()
    with self._lock:
      self._errors = []
      self._client_error = None
    self._produced = 0

  def _on_delivery(self, err, msg):
    if err is not None:
      with self._lock:
        self._errors.append((err, msg))

  def _on_client_error(self, err):
    # Client-level trouble (broker unreachable, authentication): not a
    # failure by itself (librdkafka keeps retrying), but the likely cause
    # to name if records then fail.
    with self._lock:
      self._client_error = err.str() if isinstance(err, KafkaError) else str(
          err)
      if isinstance(err, KafkaError) and err.fatal():
        # A fatal producer error (e.g. an idempotent producer whose sequence
        # was rejected): every later record fails; replace the producer.
        self._fatal = True

  def _client_failure(self, e, doing: str):
    """A KafkaDeliveryError (retried by the runner) for a client failure.

    librdkafka can surface a fatal producer error (e.g. an idempotent
    producer's sequence numbers rejected after a broker lost its producer
    state) as a raised ``KafkaError`` object, which is not even a
    BaseException subclass, or as a ``SystemError`` from a call that
    "returned NULL"; either would kill the runner's worker thread instead of
    failing the bundle. After any such
    failure the producer is discarded, so the retry builds a fresh one: a
    fatal producer refuses every later record, and a new producer costs one
    connection.
    """
    err = e if isinstance(e, KafkaError) else (
        e.args[0] if getattr(e, 'args', None) else None)
    fatal = (isinstance(err, KafkaError) and err.fatal()) or self._fatal
    self._drop_producer()
    return KafkaDeliveryError(
        f'{doing} failed ({"fatal" if fatal else "client error"}, producer '
        f'replaced): {e}; the bundle will be retried')

  def _drop_producer(self) -> None:
    _discard_slot(self._transform_id)
    self._slot = None
    self._producer = None
    self._fatal = False

  def process(self, element):
    try:
      if self._batched:
        if (self._key_fn is _default_key and
            self._value_fn is _default_value and self._headers_fn is None
            and self._timestamp_fn is None and not callable(self._topic)):
          self._produce_pairs(element)
        else:
          for record in element:
            self._produce(record)
      else:
        self._produce(element)
      # Serve queued delivery reports (and make room in the local queue).
      self._producer.poll(0)
    except KafkaDeliveryError:
      raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
      raise
    except:  # pylint: disable=bare-except
      # Bare on purpose: librdkafka raises fatal errors as KafkaError
      # objects, which are not BaseException subclasses.
      raise self._client_failure(sys.exc_info()[1], 'produce') from None

  def _produce_pairs(self, records) -> None:
    """``_produce`` of each record with the default key and value functions
    and a fixed topic, in one loop (this runs per output record)."""
    produce, topic = self._producer.produce, self._topic
    n = 0
    for record in records:
      if type(record) is tuple and len(record) == 2:
        key, value = record
      else:
        key, value = _default_key(record), _default_value(record)
      if isinstance(key, str):
        key = key.encode('utf-8')
      if isinstance(value, str):
        value = value.encode('utf-8')
      try:
        produce(topic, value, key)
      except BufferError:
        self._produce_when_room(topic, value, key, None)
      n += 1
    self._produced += n

  def _produce(self, record) -> None:
    topic = self._topic(record) if callable(self._topic) else self._topic
    key = self._key_fn(record)
    value = self._value_fn(record)
    headers = self._headers_fn(record) if self._headers_fn else None
    timestamp = self._timestamp_fn(record) if self._timestamp_fn else None
    if isinstance(key, str):
      key = key.encode('utf-8')
    if isinstance(value, str):
      value = value.encode('utf-8')
    self._send(topic, value, key, headers, timestamp)
    self._produced += 1

  def _send(self, topic, value, key, headers, timestamp=None) -> None:
    kwargs = {} if not timestamp or timestamp < 0 else {
        'timestamp': timestamp}
    try:
      self._producer.produce(topic, value=value, key=key, headers=headers,
                             **kwargs)
    except BufferError:
      self._produce_when_room(topic, value, key, headers, kwargs)

  def _produce_when_room(self, topic, value, key, headers,
                         kwargs=None) -> None:
    """Local queue full: serves delivery reports to make room, then
    produces."""
    while True:
      self._producer.poll(0.05)
      try:
        self._producer.produce(topic, value=value, key=key, headers=headers,
                               **(kwargs or {}))
        return
      except BufferError:
        pass

  def finish_bundle(self):
    outage = Outage(self._destination(), self._outage_policy)
    while True:
      try:
        remaining = self._producer.flush(self._flush_timeout_s)
      except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
      except:  # pylint: disable=bare-except
        # Bare: fatal errors come as KafkaError objects (see process).
        raise self._client_failure(sys.exc_info()[1], 'flush') from None
      with self._lock:
        errors, self._errors = self._errors, []
        client_error = self._client_error
        fatal = self._fatal
      if fatal:
        raise self._client_failure(
            KafkaDeliveryError(f'fatal producer error: {client_error}'),
            'flush')
      if errors:
        self.failed.inc(len(errors))
      permanent = [(err, msg) for err, msg in errors if not _retriable(err)]
      if permanent:
        raise self._delivery_error(permanent, client_error)
      if not remaining and not errors:
        outage.recovered()
        break
      # The destination is unavailable: wait (or give up, naming it), then
      # produce the failed records again; queued ones are still retried by
      # librdkafka itself.
      cause = (self._describe(errors[0], client_error) if errors else
               f'{remaining} record(s) not delivered within '
               f'{self._flush_timeout_s:g}s'
               f'{self._cause_suffix(client_error)}')
      outage.failed(KafkaDeliveryError(cause))
      for _, msg in errors:
        ts_type, ts = msg.timestamp()
        self._send(msg.topic(), msg.value(), msg.key(), msg.headers(),
                   ts if ts_type else None)
        self.redelivered.inc()
    self.written.inc(self._produced)

  def _destination(self) -> str:
    topic = 'per-record topics' if callable(self._topic) else (
        f'topic {self._topic!r}')
    return f'Kafka output {topic} at {self._config.get("bootstrap.servers")}'

  @staticmethod
  def _cause_suffix(client_error) -> str:
    return f'; last client error: {client_error}' if client_error else ''

  def _describe(self, error, client_error) -> str:
    err, msg = error
    detail = (f'{err.str()} ({err.name()})' if isinstance(err, KafkaError)
              else str(err))
    return (f'topic {msg.topic()!r} key {msg.key()!r}: {detail}'
            f'{self._cause_suffix(client_error)}')

  def _delivery_error(self, errors, client_error) -> KafkaDeliveryError:
    return KafkaDeliveryError(
        f'{len(errors)} of {self._produced} record(s) failed delivery to '
        f'{self._config.get("bootstrap.servers")}; first: '
        f'{self._describe(errors[0], client_error)}; the bundle will be '
        f'retried')

  def teardown(self):
    if self._producer is not None:
      try:
        left = self._producer.flush(
            min(self._flush_timeout_s, _TEARDOWN_FLUSH_S))
      except (KeyboardInterrupt, SystemExit):
        raise
      except:  # pylint: disable=bare-except
        # Bare: fatal errors come as KafkaError objects (see process).
        _LOGGER.warning('producer flush at teardown failed: %s',
                        sys.exc_info()[1])
        self._drop_producer()
        return
      if left:
        _LOGGER.warning('%d record(s) of a failed bundle were still queued at '
                        'teardown; they are dropped (the bundle is retried)',
                        left)
      # The producer stays in its slot for the next copy of this DoFn.
      self._slot.owner = None
      self._slot.released_at = time.monotonic()
      self._producer = None


class WriteToKafka(beam.PTransform):
  """Writes elements to Kafka.

  By default an element ``(key, value)`` is written as that key and value and
  any other element as the value; ``key``/``value``/``headers`` functions
  override that. ``str`` keys and values are UTF-8 encoded.

  With ``batched=True`` each element is an iterable of records, each written
  as above (the functions get one record at a time): per-element overhead
  dominates Python pipelines, so steps that already work on lists of ~1000
  records should hand them over as such.

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
               timestamp: Optional[Callable[[Any], Optional[int]]] = None,
               idempotent: bool = True,
               batched: bool = False,
               flush_timeout_s: float = 10.0,
               outage_policy: Optional[OutagePolicy] = None):
    """Configures the write.

    Args:
      producer_config: librdkafka producer settings, passed through.
      topic: a topic name, or a function record -> topic (route per record,
        e.g. dead letters and predictions from one step).
      key: record -> key bytes (or str).
      value: record -> value bytes (or str).
      headers: record -> list of (name, bytes), or None.
      timestamp: record -> record timestamp in epoch milliseconds, or None
        (the producer's clock).
      idempotent: enable the idempotent producer (default True).
      batched: each element is an iterable of records (default False: each
        element is one record).
      flush_timeout_s: one wait for deliveries at the end of a bundle;
        records still undelivered then count as an outage (retried within
        ``outage_policy``).
      outage_policy: how long an unavailable destination is retried before
        the write fails naming it (default: transforms.outage.OutagePolicy).
    """
    super().__init__()
    if not producer_config.get('bootstrap.servers'):
      raise ValueError("producer config needs 'bootstrap.servers'")
    if not topic:
      raise ValueError('topic must be a name or a function')
    self._settings = WriteSettings(
        producer_config=effective_producer_config(producer_config, idempotent),
        topic=topic, key=key, value=value, headers=headers,
        timestamp=timestamp, batched=batched,
        flush_timeout_s=flush_timeout_s, outage_policy=outage_policy)

  @property
  def settings(self) -> WriteSettings:
    """The resolved settings (the cross-language write is built from
    them)."""
    return self._settings

  def expand(self, pcoll):
    s = self._settings
    return pcoll | 'ProduceToKafka' >> beam.ParDo(
        _ProduceFn(dict(s.producer_config), s.topic, s.key, s.value,
                   s.headers, s.flush_timeout_s, s.batched,
                   outage_policy=s.outage_policy, timestamp_fn=s.timestamp))
