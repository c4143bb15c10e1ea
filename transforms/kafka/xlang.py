"""Kafka IO choice for the jobs: our pure-Python IO, or Beam's Java KafkaIO.

Jobs accept ``--kafka_io=python|xlang`` and build their source and sink with
``transforms.kafka.choose.build_read`` / ``build_write`` from the same inputs
either way:

* ``python`` (default): ``transforms.kafka.ReadFromKafka`` / ``WriteToKafka``
  (confluent-kafka; no Java anywhere).
* ``xlang``: ``apache_beam.io.kafka.ReadFromKafka`` / ``WriteToKafka``, Beam's
  cross-language wrappers of the Java KafkaIO, configured from our settings,
  followed (read) or preceded (write) by a small Python step that converts
  between their rows and our elements, so downstream code is unchanged.

Requirements of ``xlang``: Beam expands these transforms at pipeline
construction by starting the ``beam-sdks-java-io-expansion-service`` jar
(downloaded from Maven Central on first use, then cached) with a local
``java``, or by calling an expansion service you run
(``expansion_service='host:port'``). The runner must run Java transforms
(Dataflow, Flink, Spark, Prism; not the FnApiRunner or the bundle-based
DirectRunner). Neither Java nor the jar exists on the machines this project
is developed on, so the mapping below is tested offline (the constructed
transforms' payloads and the adapters), never expanded here; the
``with_headers`` write rows follow the schema Beam 2.77 documents for it.

Read: what maps, and how

========================  ==================================================
ours                      Java KafkaIO (cross-language)
========================  ==================================================
start='earliest'/'latest' ``auto.offset.reset`` = earliest/latest; only
                          without a ``group.id``: with one, Java starts at
                          the group's committed offsets (ValueError)
start='committed'         ``group.id`` kept; ``auto.offset.reset`` (default
                          latest) for partitions without a commit
start=<time>              ``start_read_time`` (epoch ms)
stop=None                 unbounded
StopAt.read_time(s)       ``max_read_time`` (whole seconds, rounded up)
stop='end', StopAt.records_per_partition / timestamp / offsets
                          ValueError: no stop offsets or stop time in the
                          Python wrapper, and Java's ``max_num_records``
                          counts records over all partitions, not per
                          partition
commit_offsets            ``commit_offset_in_finalize`` (needs group.id);
                          ``enable.auto.commit`` is always false
timestamp_policy          'CreateTime' / 'LogAppendTime' / 'ProcessingTime';
                          a function: ValueError
max_delay_s               must be 0 (the Java policy is built with a zero
                          delay): ValueError otherwise
with_metadata             the ``..._with_metadata`` URN; rows become
                          ``KafkaRecord`` (timestamp types converted to
                          confluent-kafka's numbering), else ``(key, value)``
max_batch_records         done by the adapter: lists of up to that many
                          records of one partition (per bundle), timestamped
                          with their earliest element time
keys and values           bytes (``ByteArrayDeserializer``)
idle_timeout_s, consume_batch, checkpoint_interval_s, poll_timeout_s,
idle_resume_s, split_offsets, metadata_timeout_s
                          tuning of our reader; no effect on Java's (its
                          idle partitions follow its own timestamp policy)
========================  ==================================================

Write: ``producer_config`` with our defaults (idempotence, acks=all, lz4,
linger) translated to Java names (``message.timeout.ms`` ->
``delivery.timeout.ms``); keys/values through the ``key``/``value`` functions
to bytes (``ByteArraySerializer``); ``batched`` elements are flattened;
``headers`` and a topic function use the ``with_headers`` write (rows with
per-record headers and topic); ``flush_timeout_s`` has no Java equivalent.

Client settings are librdkafka's in both cases; for Java they are passed as
strings, with ``sasl.username``/``sasl.password`` (PLAIN, SCRAM) turned into
``sasl.jaas.config`` and ``ssl.ca.location`` into a PEM truststore. Settings
only librdkafka knows (client tuning such as ``receive.message.max.bytes``)
are dropped; Java warns about and ignores any other name it does not know.
"""

import logging
import math
import typing
from typing import Any, Mapping, NamedTuple, Optional, Sequence, Union

import apache_beam as beam
from apache_beam import coders
from apache_beam.io import kafka as beam_kafka
from apache_beam.typehints import typehints
from apache_beam.utils.windowed_value import WindowedValue

from transforms.kafka import config_refs
from transforms.kafka import offsets as offsets_lib
from transforms.kafka.read import ReadFromKafka
from transforms.kafka.records import (CREATE_TIME, LOG_APPEND_TIME, KafkaRecord,
                                      TimestampPolicy)
from transforms.kafka.write import WriteToKafka

_LOGGER = logging.getLogger(__name__)

KAFKA_IO_PYTHON = 'python'
KAFKA_IO_XLANG = 'xlang'
KAFKA_IO_CHOICES = (KAFKA_IO_PYTHON, KAFKA_IO_XLANG)

BYTE_ARRAY_DESERIALIZER = (
    'org.apache.kafka.common.serialization.ByteArrayDeserializer')
BYTE_ARRAY_SERIALIZER = (
    'org.apache.kafka.common.serialization.ByteArraySerializer')

_JAVA_TIMESTAMP_POLICY = {
    TimestampPolicy.CREATE_TIME: 'CreateTime',
    TimestampPolicy.LOG_APPEND_TIME: 'LogAppendTime',
    TimestampPolicy.PROCESSING_TIME: 'ProcessingTime',
}

# Java's TimestampType names -> confluent-kafka's timestamp type numbers
# (Java numbers them -1/0/1, confluent-kafka 0/1/2).
_TIMESTAMP_TYPE = {
    'NoTimestampType': 0,
    'CreateTime': CREATE_TIME,
    'LogAppendTime': LOG_APPEND_TIME,
}

# librdkafka settings with a different Java name.
_JAVA_NAMES = {
    'fetch.wait.max.ms': 'fetch.max.wait.ms',
    'fetch.message.max.bytes': 'max.partition.fetch.bytes',
    'queue.buffering.max.ms': 'linger.ms',
    'message.timeout.ms': 'delivery.timeout.ms',
    'sasl.mechanisms': 'sasl.mechanism',
}
# librdkafka-only client tuning: meaningless to the Java client.
_LIBRDKAFKA_ONLY = frozenset({
    'receive.message.max.bytes', 'fetch.queue.backoff.ms',
    'enable.partition.eof', 'enable.auto.offset.store', 'queued.min.messages',
    'queued.max.messages.kbytes', 'statistics.interval.ms',
    'topic.metadata.refresh.interval.ms', 'api.version.request',
    'broker.version.fallback', 'socket.keepalive.enable', 'log_level',
    'debug', 'batch.num.messages', 'queue.buffering.max.messages',
    'queue.buffering.max.kbytes', 'delivery.report.only.error',
})
# librdkafka files Java cannot take as they are (it wants key/trust stores).
_UNTRANSLATABLE = ('ssl.certificate.location', 'ssl.key.location',
                   'ssl.key.password', 'ssl.keystore.location')
_JAAS_MODULES = {
    'PLAIN': 'org.apache.kafka.common.security.plain.PlainLoginModule',
    'SCRAM-SHA-256': 'org.apache.kafka.common.security.scram.ScramLoginModule',
    'SCRAM-SHA-512': 'org.apache.kafka.common.security.scram.ScramLoginModule',
}
# Java's default request.timeout.ms: delivery.timeout.ms must be at least
# linger.ms + request.timeout.ms, or the Java producer refuses to start.
_JAVA_REQUEST_TIMEOUT_MS = 30_000


def check_kafka_io(kafka_io: str) -> None:
  if kafka_io not in KAFKA_IO_CHOICES:
    raise ValueError(
        f'--kafka_io={kafka_io!r}: use one of {", ".join(KAFKA_IO_CHOICES)}')


def java_client_config(config: Mapping[str, Any]) -> dict[str, str]:
  """A librdkafka client config as Java client properties (all strings).

  Settings given by reference (transforms.kafka.config_refs) are read now,
  at pipeline construction: the Java transform's configuration is part of
  the job graph, so with xlang they end up in it (logged as a warning).

  Raises:
    ValueError: a setting Java cannot be given (a callback, client
      certificate files, a username/password for another SASL mechanism).
  """
  referenced = sorted(config_refs.deferred(config))
  if referenced:
    _LOGGER.warning(
        'xlang: Kafka settings %s given by reference are read at pipeline '
        'construction and embedded in the Java KafkaIO configuration of the '
        'job graph (the Python Kafka IO reads them on the workers instead)',
        ', '.join(referenced))
    config = config_refs.resolve(config)
  out: dict[str, str] = {}
  for key, value in config.items():
    if key in _LIBRDKAFKA_ONLY:
      _LOGGER.debug('xlang: dropping librdkafka-only setting %s', key)
      continue
    if callable(value):
      raise ValueError(f'xlang: the client setting {key!r} is a Python '
                       f'callable; the Java client cannot use it')
    if key in _UNTRANSLATABLE:
      raise ValueError(
          f'xlang: {key!r} is a librdkafka file setting; give the Java client '
          f'ssl.keystore.type/ssl.keystore.location/ssl.keystore.password '
          f'(or ssl.keystore.key/ssl.keystore.certificate.chain) instead')
    if isinstance(value, bool):
      value = 'true' if value else 'false'
    out[_JAVA_NAMES.get(key, key)] = str(value)

  if 'security.protocol' in out:
    out['security.protocol'] = out['security.protocol'].upper()
  user = out.pop('sasl.username', None)
  password = out.pop('sasl.password', None)
  if user is not None or password is not None:
    mechanism = out.get('sasl.mechanism', 'GSSAPI').upper()
    if mechanism not in _JAAS_MODULES:
      raise ValueError(
          f'xlang: sasl.username/sasl.password with sasl.mechanism '
          f'{mechanism}: give the Java client sasl.jaas.config instead')
    out.setdefault(
        'sasl.jaas.config',
        f'{_JAAS_MODULES[mechanism]} required '
        f'username="{_jaas_escape(user or "")}" '
        f'password="{_jaas_escape(password or "")}";')
  ca = out.pop('ssl.ca.location', None)
  if ca is not None:
    out.setdefault('ssl.truststore.type', 'PEM')
    out.setdefault('ssl.truststore.location', ca)
  return out


def _jaas_escape(text: str) -> str:
  return text.replace('\\', '\\\\').replace('"', '\\"')


def _java_offset_reset(value: Optional[str]) -> str:
  reset = str(value or 'latest').lower()
  if reset in ('earliest', 'smallest', 'beginning'):
    return 'earliest'
  if reset in ('latest', 'largest', 'end'):
    return 'latest'
  if reset == 'error':
    return 'none'
  raise ValueError(f'xlang: auto.offset.reset={value!r} has no Java '
                   f'equivalent (use earliest, latest or error)')


def _java_timestamp_policy(policy) -> str:
  if callable(policy) and not isinstance(policy, TimestampPolicy):
    raise ValueError(
        'xlang: timestamp_policy as a Python function cannot be expressed; '
        "Java KafkaIO offers 'create_time', 'log_append_time' and "
        "'processing_time'")
  return _JAVA_TIMESTAMP_POLICY[TimestampPolicy(policy)]


def _java_stop(stop: offsets_lib.StopAt) -> dict:
  if stop.kind == 'never':
    return {}
  if stop.kind == 'read_time':
    return {'max_read_time': int(math.ceil(stop.value))}
  what = {
      'end': "stop='end' (end offsets observed at start)",
      'records': 'StopAt.records_per_partition (Java max_num_records counts '
                 'records over all partitions, in no defined order)',
      'timestamp': 'StopAt.timestamp (no stop time in the Python wrapper)',
      'offsets': 'StopAt.offsets (no stop offsets in the Python wrapper)',
  }.get(stop.kind, f'stop kind {stop.kind!r}')
  raise ValueError(f'xlang: {what} cannot be expressed with Java KafkaIO; '
                   f'use stop=None or StopAt.read_time, or --kafka_io=python')


def xlang_read_kwargs(consumer_config: Mapping[str, Any],
                      topics: Union[str, Sequence[str]],
                      **read_kwargs) -> dict:
  """The ``apache_beam.io.kafka.ReadFromKafka`` arguments for our read spec.

  The spec is first validated by our own ReadFromKafka (same errors for bad
  values, unknown arguments).

  Raises:
    ValueError: the spec cannot be expressed with Java KafkaIO (the message
      names what).
  """
  ours = ReadFromKafka(consumer_config, topics, **read_kwargs)
  s = ours.settings
  if s['max_delay_s']:
    raise ValueError(
        f'xlang: max_delay_s={s["max_delay_s"]} cannot be expressed; the Java '
        f'timestamp policy of the cross-language read has no delay')
  config = java_client_config(s['consumer_config'])
  config['enable.auto.commit'] = 'false'
  group = config.get('group.id')
  kwargs: dict[str, Any] = {}
  start = s['start']
  if start in (offsets_lib.START_EARLIEST, offsets_lib.START_LATEST):
    if group:
      raise ValueError(
          f"xlang: start={start!r} with group.id {group!r}: Java KafkaIO "
          f"starts at the group's committed offsets where it has some; use "
          f"start='committed' with auto.offset.reset={start}, or drop "
          f"group.id")
    config['auto.offset.reset'] = start
  elif start == offsets_lib.START_COMMITTED:
    config['auto.offset.reset'] = _java_offset_reset(
        config.get('auto.offset.reset'))
  else:
    kwargs['start_read_time'] = start.micros // 1000
    if 'auto.offset.reset' in config:
      config['auto.offset.reset'] = _java_offset_reset(
          config['auto.offset.reset'])
  kwargs.update(_java_stop(s['stop']))
  kwargs.update(
      consumer_config=config,
      topics=list(s['topics']),
      key_deserializer=BYTE_ARRAY_DESERIALIZER,
      value_deserializer=BYTE_ARRAY_DESERIALIZER,
      commit_offset_in_finalize=bool(s['commit_offsets']),
      timestamp_policy=_java_timestamp_policy(
          read_kwargs.get('timestamp_policy', TimestampPolicy.CREATE_TIME)),
      with_metadata=bool(s['with_metadata']),
  )
  return kwargs


def record_from_row(row) -> KafkaRecord:
  """A Java KafkaIO metadata row as our KafkaRecord.

  Rows have topic, partition, offset, timestamp (ms), key, value, headers
  (rows of key, value, or None), timestampTypeId and timestampTypeName.
  """
  ts_type = _TIMESTAMP_TYPE.get(row.timestampTypeName)
  if ts_type is None:
    # Unknown name: Java's ids are confluent-kafka's minus one.
    ts_type = max(0, int(row.timestampTypeId) + 1)
  headers = row.headers
  return KafkaRecord(
      row.topic, int(row.partition), int(row.offset), row.key, row.value,
      int(row.timestamp), ts_type,
      tuple((h.key, h.value) for h in headers) if headers else ())


class _RowsToElements(beam.DoFn):
  """Java KafkaIO output -> our read's elements (KafkaRecord or (key, value),
  one per element or in lists of ``max_batch_records``).

  Lists hold records of one partition (with metadata) and never outlive a
  bundle; each carries its earliest element timestamp, as our reader's do.
  """

  def __init__(self, with_metadata: bool, max_batch_records: int):
    self._with_metadata = with_metadata
    self._max_batch_records = max_batch_records
    self._buffers: dict = {}

  def start_bundle(self):
    self._buffers = {}

  def process(self, element, timestamp=beam.DoFn.TimestampParam,
              window=beam.DoFn.WindowParam):
    if self._with_metadata:
      item = record_from_row(element)
      key = (window, item.topic, item.partition)
    else:
      item = (element[0], element[1])
      key = (window,)
    if self._max_batch_records <= 0:
      yield item
      return
    items, stamps = self._buffers.setdefault(key, ([], []))
    items.append(item)
    stamps.append(timestamp)
    if len(items) >= self._max_batch_records:
      del self._buffers[key]
      yield beam.window.TimestampedValue(items, min(stamps))

  def finish_bundle(self):
    for (window, *_), (items, stamps) in self._buffers.items():
      yield WindowedValue(items, min(stamps), [window])
    self._buffers = {}


class XlangReadFromKafka(beam.PTransform):
  """Java KafkaIO's read plus the adapter to our element types.

  Attributes:
    external: the ``apache_beam.io.kafka.ReadFromKafka`` transform.
    read_kwargs: the arguments it was built with.
  """

  def __init__(self, external_kwargs: dict, *, max_batch_records: int,
               expansion_service=None):
    super().__init__()
    self.read_kwargs = dict(external_kwargs)
    self.max_batch_records = max_batch_records
    self.external = beam_kafka.ReadFromKafka(
        expansion_service=expansion_service, **external_kwargs)

  def expand(self, pbegin):
    with_metadata = self.read_kwargs['with_metadata']
    kv = typehints.Tuple[typehints.Optional[bytes], typehints.Optional[bytes]]
    item = KafkaRecord if with_metadata else kv
    out_type = (typehints.List[item] if self.max_batch_records > 0 else item)
    return (pbegin
            | 'ReadFromKafkaXlang' >> self.external
            | 'ToKafkaRecords' >> beam.ParDo(
                _RowsToElements(with_metadata,
                                self.max_batch_records)).with_output_types(
                                    out_type))


# Write.


class XlangKafkaHeader(NamedTuple):
  """A record header, as the Java with-headers write takes it."""
  key: str
  value: Optional[bytes]


class XlangKafkaRecord(NamedTuple):
  """A record for the Java with-headers write (Beam 2.77 schema: key, value,
  optional headers, optional per-record topic). Keys and values are
  nullable here: None stays "no key" (the partitioner spreads such records)
  and a None value is a tombstone."""
  key: Optional[bytes]
  value: Optional[bytes]
  headers: Optional[typing.List[XlangKafkaHeader]]
  topic: Optional[str]


coders.registry.register_coder(XlangKafkaHeader, coders.RowCoder)
coders.registry.register_coder(XlangKafkaRecord, coders.RowCoder)

# The Java topic of a with-headers write whose records all carry their own
# topic. Not a valid Kafka topic name: if it were ever used, the write would
# fail instead of writing somewhere unexpected.
_PER_RECORD_TOPIC = '<per-record topic>'


def _to_bytes(value) -> Optional[bytes]:
  if value is None or isinstance(value, bytes):
    return value
  if isinstance(value, str):
    return value.encode('utf-8')
  if isinstance(value, (bytearray, memoryview)):
    return bytes(value)
  raise TypeError(f'Kafka keys and values must be bytes, str or None, got '
                  f'{type(value).__name__}')


class _ToJavaRecords(beam.DoFn):
  """Our write's elements -> what Java KafkaIO's write takes: (key, value)
  byte pairs, or XlangKafkaRecord rows when headers or per-record topics are
  used. Applies the key/value/headers/topic functions as WriteToKafka does,
  one record at a time (flattening ``batched`` elements)."""

  def __init__(self, settings: dict, with_headers: bool):
    self._topic = settings['topic']
    self._key = settings['key']
    self._value = settings['value']
    self._headers = settings['headers']
    self._batched = settings['batched']
    self._with_headers = with_headers

  def process(self, element):
    records = element if self._batched else (element,)
    for record in records:
      key = _to_bytes(self._key(record))
      value = _to_bytes(self._value(record))
      if not self._with_headers:
        yield key, value
        continue
      headers = self._headers(record) if self._headers else None
      topic = self._topic(record) if callable(self._topic) else None
      yield XlangKafkaRecord(
          key, value,
          [XlangKafkaHeader(str(k), _to_bytes(v)) for k, v in headers]
          if headers else None, topic)


def xlang_producer_config(producer_config: Mapping[str, Any]) -> dict:
  """Our effective producer settings as Java producer properties."""
  config = java_client_config(producer_config)
  delivery = config.get('delivery.timeout.ms')
  if delivery is not None and 'request.timeout.ms' not in config:
    linger = int(float(config.get('linger.ms', 0)))
    if int(delivery) < linger + _JAVA_REQUEST_TIMEOUT_MS:
      # A short delivery timeout (tests, fail-fast jobs) must stay valid for
      # Java, which rejects delivery.timeout.ms < linger + request timeout.
      config['request.timeout.ms'] = str(max(1, int(delivery) - linger))
  return config


class XlangWriteToKafka(beam.PTransform):
  """The adapter to Java KafkaIO's input plus Java KafkaIO's write.

  Attributes:
    external: the ``apache_beam.io.kafka.WriteToKafka`` transform.
    write_kwargs: the arguments it was built with.
  """

  def __init__(self, settings: dict, *, expansion_service=None):
    super().__init__()
    self.with_headers = bool(settings['headers']) or callable(
        settings['topic'])
    self.write_kwargs = dict(
        producer_config=xlang_producer_config(settings['producer_config']),
        topic=_PER_RECORD_TOPIC if callable(settings['topic']) else
        settings['topic'],
        key_serializer=BYTE_ARRAY_SERIALIZER,
        value_serializer=BYTE_ARRAY_SERIALIZER,
        with_headers=self.with_headers)
    self._settings = settings
    self.external = beam_kafka.WriteToKafka(
        expansion_service=expansion_service, **self.write_kwargs)

  def expand(self, pcoll):
    out_type = (XlangKafkaRecord if self.with_headers else typing.Tuple[
        Optional[bytes], Optional[bytes]])
    return (pcoll
            | 'ToJavaRecords' >> beam.ParDo(
                _ToJavaRecords(self._settings,
                               self.with_headers)).with_output_types(out_type)
            | 'WriteToKafkaXlang' >> self.external)


__all__ = [
    'KAFKA_IO_CHOICES', 'KAFKA_IO_PYTHON', 'KAFKA_IO_XLANG',
    'XlangKafkaHeader', 'XlangKafkaRecord', 'XlangReadFromKafka',
    'XlangWriteToKafka', 'check_kafka_io',
    'java_client_config', 'record_from_row', 'xlang_producer_config',
    'xlang_read_kwargs',
]
