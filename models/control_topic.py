"""The deployments control topic: publish records, read them, follow them.

One compacted Kafka topic (``cleanup.policy=compact``) holds deployment
records (models/deployments.py) keyed by deployment name: compaction keeps
the latest record of every deployment for ever, so a job starting at any
time reads what serves from the beginning of the topic; the records before
the latest are the audit log for at least ``min.compaction.lag.ms`` (set to
90 days when the topic is created here). The topic has one partition: the
order of records is the order of changes.

* ``ControlTopic``: the operator side (models/deploy.py): ``publish``
  (creates the topic on first use), ``records`` (the whole log), ``latest``
  and ``history`` of a deployment.
* ``Follower``: the job side (models/serving.py): a daemon thread per
  worker process with one consumer assigned to every partition from the
  beginning (no group: nothing to join, rebalance or commit), which keeps
  the latest valid record of one deployment and calls back when it changes.

Readers use the plain client with the job's own client settings
(``--bootstrap_servers``, ``--kafka_config``, secrets by reference resolved
where the reader runs).
"""

import logging
import threading
import time
import uuid
from typing import Callable, Mapping, NamedTuple, Optional

from confluent_kafka import (OFFSET_BEGINNING, Consumer, KafkaError,
                             Producer, TopicPartition)

from models import deployments as dep
from transforms.kafka import admin, client_logs, config_refs

_LOGGER = logging.getLogger(__name__)

# Topic settings when the control topic is created here: compacted, and
# superseded records kept at least this long (the audit log).
MIN_COMPACTION_LAG_MS = 90 * 24 * 3600 * 1000
TOPIC_CONFIG = {'cleanup.policy': 'compact',
                'min.compaction.lag.ms': str(MIN_COMPACTION_LAG_MS),
                'retention.ms': '-1'}
# Consumer settings for a topic of a few small records: fetch at once, and
# never more than a few MB in flight (brokers such as noida ignore limits).
_READER_CONFIG = {'enable.auto.commit': False, 'enable.partition.eof': False,
                  'fetch.wait.max.ms': 100, 'fetch.queue.backoff.ms': 1,
                  'queued.max.messages.kbytes': 4096,
                  'receive.message.max.bytes': 1_000_000_000}


class ControlRecord(NamedTuple):
  """One record of the control topic as read.

  Attributes:
    offset: its offset (partition 0).
    timestamp: the record's timestamp, epoch seconds (0 if none).
    key: the deployment name.
    record: the Deployment, or None for a tombstone or an unreadable value.
    error: why the value could not be read, else None.
  """
  offset: int
  timestamp: float
  key: str
  record: Optional[dep.Deployment]
  error: Optional[str] = None


def _reader(client_config: Mapping[str, object]) -> Consumer:
  config = client_logs.route(config_refs.resolve(client_config))
  # A group id nobody joins: librdkafka wants one; assign() never uses it.
  config.setdefault('group.id', f'kbi-control-reader-{uuid.uuid4().hex[:8]}')
  config.update(_READER_CONFIG)
  return Consumer(config)


def _parse(message) -> ControlRecord:
  key = (message.key() or b'').decode('utf-8', 'replace')
  _, ts = message.timestamp()
  try:
    record = dep.decode(message.value())
    error = None
    if record is not None and record.deployment != key:
      record, error = None, (f'record for deployment '
                             f'{record.deployment!r} under key {key!r}')
  except dep.DeploymentError as e:
    record, error = None, str(e)
  return ControlRecord(message.offset(), (ts or 0) / 1000.0, key, record,
                       error)


class ControlTopic:
  """The operator's client of a control topic (module docstring)."""

  def __init__(self, client_config: Mapping[str, object], topic: str, *,
               timeout_s: float = 30.0):
    self.client_config = dict(client_config)
    self.topic = topic
    self.timeout_s = timeout_s
    self._producer = None

  def exists(self) -> bool:
    try:
      admin.topic_partitions(self.client_config, [self.topic],
                             timeout_s=self.timeout_s)
      return True
    except admin.TopicNotFoundError:
      return False

  def ensure_topic(self) -> bool:
    """Creates the topic, compacted, if it does not exist; True if
    created."""
    return admin.create_topic(self.client_config, self.topic, 1,
                              config=TOPIC_CONFIG, timeout_s=self.timeout_s)

  def publish(self, record: dep.Deployment) -> ControlRecord:
    """Appends ``record`` (creating the topic on first use); returns it as
    written (offset, broker timestamp).

    Raises:
      RuntimeError: the broker did not acknowledge the record.
    """
    if not self.exists():
      self.ensure_topic()
    if self._producer is None:
      # One record at a time, acknowledged by every replica.
      self._producer = Producer(client_logs.route(dict(
          config_refs.resolve(self.client_config), **{
              'acks': 'all', 'linger.ms': 0})))
    producer = self._producer
    delivered: list = []
    producer.produce(self.topic, key=record.deployment.encode('utf-8'),
                     value=dep.encode(record),
                     on_delivery=lambda err, msg: delivered.append((err, msg)))
    left = producer.flush(self.timeout_s)
    if left or not delivered or delivered[0][0] is not None:
      error = delivered[0][0] if delivered else 'no acknowledgement'
      raise RuntimeError(f'control topic {self.topic}: record for '
                         f'{record.deployment!r} not written: {error}')
    msg = delivered[0][1]
    _, ts = msg.timestamp()
    return ControlRecord(msg.offset(), (ts or 0) / 1000.0, record.deployment,
                         record)

  def records(self) -> list[ControlRecord]:
    """Every record of the topic, in order ([] when the topic does not
    exist)."""
    if not self.exists():
      return []
    ends = admin.end_offsets(self.client_config, self.topic,
                             timeout_s=self.timeout_s)
    if not any(ends.values()):
      return []
    consumer = _reader(self.client_config)
    consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                     for p in ends])
    out: list[ControlRecord] = []
    done = {p for p, end in ends.items() if end <= 0}
    deadline = time.monotonic() + self.timeout_s
    try:
      while len(done) < len(ends):
        if time.monotonic() > deadline:
          raise RuntimeError(
              f'control topic {self.topic}: not read to its end '
              f'{ends} within {self.timeout_s:.0f}s')
        for m in consumer.consume(num_messages=1000, timeout=0.2):
          if m.error() is not None:
            continue
          out.append(_parse(m))
          if m.offset() + 1 >= ends[m.partition()]:
            done.add(m.partition())
        # A compacted tail may end on a deleted offset: ask where we are.
        for tp in consumer.position([TopicPartition(self.topic, p)
                                     for p in ends]):
          if tp.offset >= 0 and tp.offset >= ends[tp.partition]:
            done.add(tp.partition)
    finally:
      consumer.close()
    return sorted(out, key=lambda r: r.offset)

  def history(self, deployment: str) -> list[ControlRecord]:
    """The records of one deployment, oldest first."""
    return [r for r in self.records() if r.key == deployment]

  def latest(self, deployment: str) -> Optional[dep.Deployment]:
    """What serves for ``deployment`` now: its last valid record, None
    when it has none or its last record is a tombstone."""
    current = None
    for r in self.history(deployment):
      if r.record is not None or r.error is None:
        current = r.record
    return current


class Follower:
  """Follows one deployment's records in a daemon thread.

  ``on_record(record)`` is called in the thread for the deployment's
  latest record at start and for every later record that changes what
  serves (``Deployment.serving()``); ``on_record`` decides whether to
  apply it. ``wait_ready`` blocks until the topic was read to the end it
  had when the follower started. Unreadable records are logged and
  skipped; a tombstone is logged and ignored (the job keeps serving).
  """

  def __init__(self, client_config: Mapping[str, object], topic: str,
               deployment: str,
               on_record: Callable[[dep.Deployment, float], None], *,
               poll_s: float = 0.1, timeout_s: float = 30.0):
    self._config = dict(client_config)
    self.topic = topic
    self.deployment = deployment
    self._on_record = on_record
    self._poll_s = poll_s
    self._timeout_s = timeout_s
    self._ready = threading.Event()
    self._stop = threading.Event()
    self._error: Optional[BaseException] = None
    self.latest: Optional[dep.Deployment] = None
    self.records_seen = 0
    self._thread = threading.Thread(
        target=self._run, daemon=True,
        name=f'control-{topic}-{deployment}'[:60])

  def start(self) -> 'Follower':
    self._thread.start()
    return self

  def stop(self, timeout_s: float = 5.0) -> None:
    self._stop.set()
    if self._thread.is_alive() and threading.current_thread() is not (
        self._thread):
      self._thread.join(timeout_s)

  @property
  def alive(self) -> bool:
    return self._thread.is_alive()

  def wait_ready(self, timeout_s: Optional[float] = None) -> None:
    """Blocks until the topic was read to its end at start.

    Raises:
      RuntimeError: the topic could not be read (the cause chained), or
        not within ``timeout_s``.
    """
    if not self._ready.wait(self._timeout_s if timeout_s is None
                            else timeout_s):
      raise RuntimeError(f'control topic {self.topic} not read within '
                         f'{self._timeout_s:.0f}s')
    if self._error is not None:
      raise RuntimeError(f'control topic {self.topic}: '
                         f'{self._error}') from self._error

  def _deliver(self, message, received: float) -> None:
    parsed = _parse(message)
    if parsed.key != self.deployment:
      return
    self.records_seen += 1
    if parsed.record is None:
      if parsed.error:
        _LOGGER.error('control topic %s offset %d: unreadable record for '
                      'deployment %s ignored: %s', self.topic, parsed.offset,
                      self.deployment, parsed.error)
      else:
        _LOGGER.warning('control topic %s offset %d: tombstone for '
                        'deployment %s; still serving %s', self.topic,
                        parsed.offset, self.deployment,
                        self.latest.describe() if self.latest else 'nothing')
      return
    if self.latest is not None and (parsed.record.serving() ==
                                    self.latest.serving()):
      self.latest = parsed.record
      return
    self.latest = parsed.record
    if self._ready.is_set():
      self._on_record(parsed.record, received)

  def _run(self) -> None:
    consumer = None
    try:
      ends = admin.end_offsets(self._config, self.topic,
                               timeout_s=self._timeout_s)
      consumer = _reader(self._config)
      consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING)
                       for p in ends])
      deadline = time.monotonic() + self._timeout_s
      pending = {p for p, end in ends.items() if end > 0}
      while pending and not self._stop.is_set():
        if time.monotonic() > deadline:
          raise RuntimeError(f'not read to its end {ends} within '
                             f'{self._timeout_s:.0f}s')
        for m in consumer.consume(num_messages=1000, timeout=self._poll_s):
          if m.error() is None:
            self._deliver(m, time.time())
            if m.offset() + 1 >= ends[m.partition()]:
              pending.discard(m.partition())
        for tp in consumer.position([TopicPartition(self.topic, p)
                                     for p in pending]):
          if tp.offset >= 0 and tp.offset >= ends[tp.partition]:
            pending.discard(tp.partition)
      # The deployment as of the start, applied before anything scores.
      if self.latest is not None:
        self._on_record(self.latest, time.time())
    except BaseException as e:  # pylint: disable=broad-except
      self._error = e
      self._ready.set()
      if consumer is not None:
        consumer.close()
      return
    self._ready.set()
    try:
      self._follow(consumer, list(ends))
    finally:
      consumer.close()

  def _follow(self, consumer: Consumer, partitions: list) -> None:
    """After the first read: every ``poll_s``, one end-offset request per
    partition; the partitions stay paused (not fetched) until one grows.

    Why not a consumer fetching all along: a broker that ignores
    ``fetch.wait.max.ms`` (noida) answers an empty fetch at once, and the
    client fetches again at once, so an idle follower cost ~21% of a core
    in the job and ~16% in the broker (measured with noida on 2 cores:
    docs/operating_models.md). The end-offset probe costs ~0.3% of a core
    on each side and the same on every broker; the price is the client's
    restart of a resumed partition's fetch: a record reaches the callback
    ~1.0-1.4 s after its acknowledgement instead of ~0.1-0.5 s.
    """
    tps = [TopicPartition(self.topic, p) for p in partitions]
    position = {tp.partition: tp.offset for tp in consumer.position(tps)}
    consumer.pause(tps)
    reported = False
    while not self._stop.wait(self._poll_s):
      try:
        behind = {}
        for tp in tps:
          _, high = consumer.get_watermark_offsets(
              tp, timeout=self._timeout_s, cached=False)
          if high > max(position.get(tp.partition, 0), 0):
            behind[tp.partition] = high
      except Exception as e:  # pylint: disable=broad-except
        if not reported:
          _LOGGER.warning('control topic %s: %s (retrying)', self.topic, e)
          reported = True
        self._stop.wait(1.0)
        continue
      if not behind:
        continue
      reported = False
      consumer.resume(tps)
      deadline = time.monotonic() + self._timeout_s
      # Tansu's end offset may undercount a batch (docs/brokers.md): the
      # whole batch arrives anyway, and the position passes the end.
      while (any(position.get(p, 0) < high for p, high in behind.items())
             and time.monotonic() < deadline and not self._stop.is_set()):
        for m in consumer.consume(num_messages=100, timeout=self._poll_s):
          if m.error() is not None:
            if m.error().code() != KafkaError._PARTITION_EOF:
              _LOGGER.warning('control topic %s: %s', self.topic,
                              m.error())
            continue
          position[m.partition()] = m.offset() + 1
          try:
            self._deliver(m, time.time())
          except Exception:  # pylint: disable=broad-except
            _LOGGER.exception('control topic %s offset %d: applying the '
                              'record failed', self.topic, m.offset())
      consumer.pause(tps)


__all__ = ['ControlRecord', 'ControlTopic', 'Follower', 'TOPIC_CONFIG']
