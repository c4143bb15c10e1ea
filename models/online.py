"""Online learning: labelled events from Kafka -> Keras updates -> new versions.

  python -m models.online --bootstrap_servers localhost:9092 --topic events \\
      --group kbi-online --model_dir ./models_out/susy \\
      [--batch_size 256] [--export_every 20] [--config mlp_small] \\
      [--learning_rate 0.001] [--max_batches N] [--idle_timeout_s 10] \\
      [--history_out history.json]

Consumes labelled events (the scoring job's event schema, JSON by default)
from ``--topic`` with the consumer group ``--group``, in mini-batches of
``--batch_size`` events, in one pass like TensorFlow-IO's
``KafkaBatchIODataset``: it stops when no record arrived for
``--idle_timeout_s`` (or after ``--max_batches``). For each mini-batch it

1. scores the batch with the current model (before learning from it: a
   prequential, "test then train" estimate of accuracy on recent data),
2. takes ``--steps_per_batch`` gradient steps on it (``train_on_batch``),
3. commits the batch's offsets to the group (synchronously): a restart
   resumes after the last batch applied, never skipping one that was not;
   a crash between steps 2 and 3 learns that batch twice.

Every ``--export_every`` batches (and once at the end for a partial run of
batches) the model is exported as a new version under ``--model_dir`` with
models/export.py (atomic; metrics.json holds the prequential accuracy, AUC
and log loss of the batches since the previous export). A scoring job
serving ``--model_dir`` picks each version up by itself (hot swap).

The model warm-starts from the latest complete version's
``assets.extra/model.keras`` (written by every export), optimizer state
included; without one, ``--config`` is built from the registry with the
first mini-batch as normalization data. Events that do not parse, or carry
no 0/1 label, are counted and skipped (``--dead_letter_topic`` receives
their original bytes with the scoring job's dlq.* headers).
"""

import argparse
import dataclasses
import json
import logging
import math
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

_LOGGER = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 256
DEFAULT_EXPORT_EVERY = 20
DEFAULT_IDLE_TIMEOUT_S = 10.0
DEFAULT_GROUP = 'kbi-online'


@dataclasses.dataclass
class MiniBatch:
  """Labelled rows of one mini-batch and the offsets to commit after it.

  Attributes:
    features: float32 [n, F].
    labels: float32 [n] (0.0 / 1.0).
    event_time: float64 [n] epoch seconds.
    ids: event ids.
    next_offsets: {(topic, partition): next offset to read} covering every
      record consumed for this batch, skipped ones included.
    skipped: records consumed but not learnt from (malformed, unlabelled).
  """
  features: np.ndarray
  labels: np.ndarray
  event_time: np.ndarray
  ids: list
  next_offsets: dict
  skipped: int = 0

  def __len__(self) -> int:
    return int(self.labels.shape[0])


class KafkaMiniBatches:
  """Mini-batches of labelled events from a topic, via a consumer group.

  Iterate once; call ``commit(batch)`` after applying each batch. Closes
  its consumer when iteration ends or on ``close()``.
  """

  def __init__(self, consumer_config: dict, topic: str, *, schema=None,
               input_format: str = 'json', batch_size: int = DEFAULT_BATCH_SIZE,
               idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
               max_batches: Optional[int] = None,
               on_skipped: Optional[Callable[[Any], None]] = None):
    """Configures the reader.

    Args:
      consumer_config: librdkafka settings incl. ``bootstrap.servers`` and
        ``group.id``; auto-commit is turned off, ``auto.offset.reset``
        defaults to earliest (a new group starts at the beginning).
      topic: the topic of labelled events.
      schema: a transforms.schema.EventSchema (default: susy).
      input_format: json, csv or avro (transforms/parse/decoders/).
      batch_size: labelled rows per mini-batch (the last may be smaller).
      idle_timeout_s: end of the pass: this long without any record.
      max_batches: stop after this many mini-batches.
      on_skipped: called with each DeadLetter (malformed or unlabelled).
    """
    # pylint: disable=import-outside-toplevel
    from transforms import parse as parse_lib
    from transforms import schema as schema_lib
    if batch_size < 1:
      raise ValueError(f'batch_size must be >= 1, got {batch_size}')
    self._schema = schema or schema_lib.susy_schema()
    if not self._schema.label_field:
      raise ValueError(f'schema {self._schema.name!r} has no label field')
    self._parser = parse_lib.RecordParser(self._schema, input_format)
    self._config = dict(consumer_config)
    self._config['enable.auto.commit'] = False
    self._config.setdefault('auto.offset.reset', 'earliest')
    if 'group.id' not in self._config:
      raise ValueError('consumer_config needs a group.id')
    self._topic = topic
    self._batch_size = batch_size
    self._idle_timeout_s = idle_timeout_s
    self._max_batches = max_batches
    self._on_skipped = on_skipped
    self._consumer = None
    self._idle = False
    self.batches = 0
    self.rows = 0
    self.skipped = 0

  def __iter__(self) -> Iterator[MiniBatch]:
    # pylint: disable-next=import-outside-toplevel
    from confluent_kafka import Consumer
    self._consumer = Consumer(self._config)
    self._consumer.subscribe([self._topic])
    try:
      while self._max_batches is None or self.batches < self._max_batches:
        batch = self._next_batch()
        if batch is None:
          return
        self.batches += 1
        self.rows += len(batch)
        yield batch
        if self._idle:
          return  # the pass ended with this (partial) batch
    finally:
      self.close()

  def _next_batch(self) -> Optional[MiniBatch]:
    # pylint: disable=import-outside-toplevel
    from transforms.events import RawRecord
    features, labels, times, ids = [], [], [], []
    next_offsets = {}
    skipped = 0
    have = 0
    last_record = time.monotonic()
    while have < self._batch_size:
      messages = self._consumer.consume(
          num_messages=max(1, self._batch_size - have), timeout=0.2)
      records = []
      for m in messages:
        if m.error() is not None:
          _LOGGER.warning('consumer error: %s', m.error())
          continue
        ts_type, ts = m.timestamp()
        records.append(RawRecord(
            f'kafka:{m.topic()}/{m.partition()}', m.offset(), m.value(),
            ts / 1000.0 if ts_type and ts >= 0 else None, m.key()))
        next_offsets[(m.topic(), m.partition())] = m.offset() + 1
      if not records:
        if time.monotonic() - last_record >= self._idle_timeout_s:
          self._idle = True
          break
        continue
      last_record = time.monotonic()
      parsed, dead = self._parser.parse(records)
      for letter in dead:
        skipped += 1
        self._skip(letter)
      for b in parsed:
        ok = (b.labels == 0.0) | (b.labels == 1.0)
        for i in np.flatnonzero(~ok):
          skipped += 1
          self._skip(_unlabelled_letter(b, int(i)))
        if ok.any():
          b = b.take(ok) if not ok.all() else b
          features.append(b.features)
          labels.append(b.labels.astype(np.float32))
          times.append(b.event_time)
          ids.extend(b.ids)
          have += len(b)
    self.skipped += skipped
    if not next_offsets:
      return None
    if not have:
      # Only skipped records: nothing to learn, but their offsets still
      # need committing; an empty batch carries them.
      return MiniBatch(np.zeros((0, len(self._schema.features)), np.float32),
                       np.zeros((0,), np.float32), np.zeros((0,)), [],
                       next_offsets, skipped)
    return MiniBatch(np.concatenate(features), np.concatenate(labels),
                     np.concatenate(times), ids, next_offsets, skipped)

  def _skip(self, letter) -> None:
    if self._on_skipped is not None:
      self._on_skipped(letter)

  def commit(self, batch: MiniBatch) -> None:
    """Commits ``batch``'s offsets (synchronously; raises on failure)."""
    # pylint: disable-next=import-outside-toplevel
    from confluent_kafka import TopicPartition
    offsets = [TopicPartition(t, p, o)
               for (t, p), o in sorted(batch.next_offsets.items())]
    if offsets:
      self._consumer.commit(offsets=offsets, asynchronous=False)

  def close(self) -> None:
    if self._consumer is not None:
      try:
        self._consumer.close()
      except RuntimeError:
        pass  # already closed
      self._consumer = None


def _unlabelled_letter(batch, i: int):
  # pylint: disable=import-outside-toplevel
  from transforms import dead_letters as dl
  label = batch.labels[i]
  return dl.of_row(
      batch, i, stage=dl.VALIDATE,
      reason=dl.MISSING_FIELD if math.isnan(label) else dl.WRONG_TYPE,
      detail=('no label: cannot learn from it' if math.isnan(label) else
              f'label {label!r} is not 0 or 1'))


# --- The model ---------------------------------------------------------------


def load_or_build(model_dir: str, *, config: str, feature_names: Sequence[str],
                  first_features: Optional[np.ndarray],
                  learning_rate: Optional[float] = None
                  ) -> tuple[Any, Optional[int], str]:
  """The model to continue training: (model, warm-start version, config).

  Warm-starts from the latest complete version's Keras file; otherwise
  builds ``config`` with ``first_features`` as normalization data.
  """
  # pylint: disable=import-outside-toplevel
  import keras
  import tensorflow as tf
  from models import export, registry, versions
  latest = versions.latest_version(model_dir)
  model, version, config_name = None, None, config
  if latest is not None:
    path = versions.version_dir(model_dir, latest)
    if tf.io.gfile.exists(f'{path}/{export.KERAS_FILE}'):
      meta = export.read_model_meta(path)
      if list(meta.get('feature_names', [])) != list(feature_names):
        raise ValueError(f'version {latest} at {path} takes features '
                         f'{meta.get("feature_names")}, the events have '
                         f'{list(feature_names)}')
      model = export.load_keras_model(path)
      version = latest
      config_name = str(meta.get('config') or config)
      _LOGGER.info('warm start from version %d (%s, config %s)', latest,
                   path, config_name)
    else:
      _LOGGER.warning('version %d has no %s: starting from config %s',
                      latest, export.KERAS_FILE, config)
  if model is None:
    if first_features is None or not len(first_features):
      raise ValueError('no model to warm-start from and no data to build '
                       f'config {config!r} with')
    model = registry.build(config, len(feature_names),
                           adapt_data=first_features)
    _LOGGER.info('built a new %s model (normalized on %d rows)', config,
                 len(first_features))
  if getattr(model, 'optimizer', None) is None or not getattr(
      model, 'compiled', True):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate or 1e-3),
                  loss=keras.losses.BinaryCrossentropy(),
                  metrics=[keras.metrics.BinaryAccuracy(name='accuracy')])
  if learning_rate is not None:
    model.optimizer.learning_rate.assign(learning_rate)
  return model, version, config_name


@dataclasses.dataclass
class OnlineResult:
  """What one pass did."""
  batches: int
  examples: int
  skipped: int
  warm_start_version: Optional[int]
  versions: list
  history: list
  seconds: float


def _online_config_name(config: str) -> str:
  return config if config.endswith('+online') else f'{config}+online'


def learn(batches: KafkaMiniBatches, model_dir: str, *,
          feature_names: Sequence[str], config: str = 'mlp_small',
          export_every: int = DEFAULT_EXPORT_EVERY,
          steps_per_batch: int = 1, learning_rate: Optional[float] = None,
          export_at_end: bool = True, source: str = '') -> OnlineResult:
  """One pass over ``batches``: test, train, commit; export every N batches.

  Returns:
    OnlineResult; ``history`` has one entry per exported version: version,
    batches and examples so far, the prequential accuracy/auc/loss of the
    batches since the previous export, and their event-time range.
  """
  # pylint: disable=import-outside-toplevel
  from models import export
  from models.train import binary_metrics
  if export_every < 1:
    raise ValueError(f'export_every must be >= 1, got {export_every}')
  started = time.monotonic()
  model = warm_version = name = None
  window_labels, window_scores, window_times = [], [], []
  since_export = 0
  examples = 0
  versions, history = [], []

  def export_version(done_batches: int) -> None:
    nonlocal since_export
    labels = np.concatenate(window_labels)
    scores = np.concatenate(window_scores)
    times = np.concatenate(window_times)
    metrics = binary_metrics(labels, scores)
    metrics.update(train_examples=examples, online=True,
                   batches=done_batches, window_batches=since_export,
                   source=source, warm_start_version=warm_version)
    path = export.export_model(model, model_dir, feature_names=feature_names,
                               metrics=metrics,
                               config_name=_online_config_name(name))
    version = int(path.rstrip('/').rsplit('/', 1)[-1])
    versions.append(version)
    entry = {'version': version, 'batches': done_batches,
             'examples': examples, 'window_examples': int(len(labels)),
             'accuracy': metrics['accuracy'], 'auc': metrics['auc'],
             'loss': metrics['loss'],
             'event_time_min': float(times.min()),
             'event_time_max': float(times.max())}
    history.append(entry)
    _LOGGER.info('exported version %d after %d batches (%d examples): '
                 'prequential accuracy %.4f, auc %.4f on the last %d',
                 version, done_batches, examples, metrics['accuracy'],
                 metrics['auc'], len(labels))
    window_labels.clear()
    window_scores.clear()
    window_times.clear()
    since_export = 0

  done = 0
  for batch in batches:
    if len(batch):
      if model is None:
        model, warm_version, name = load_or_build(
            model_dir, config=config, feature_names=feature_names,
            first_features=batch.features, learning_rate=learning_rate)
      scores = np.asarray(model.predict_on_batch(batch.features)).reshape(-1)
      window_labels.append(batch.labels)
      window_scores.append(scores)
      window_times.append(batch.event_time)
      for _ in range(steps_per_batch):
        model.train_on_batch(batch.features, batch.labels)
      examples += len(batch)
      since_export += 1
    batches.commit(batch)
    done += 1
    if since_export >= export_every:
      export_version(done)
  if export_at_end and since_export:
    export_version(done)
  return OnlineResult(batches=done, examples=examples,
                      skipped=batches.skipped,
                      warm_start_version=warm_version, versions=versions,
                      history=history,
                      seconds=time.monotonic() - started)


def _dead_letter_producer(config: dict, topic: Optional[str]):
  """(on_skipped callback, flush function) for --dead_letter_topic."""
  if not topic:
    return None, lambda: None
  # pylint: disable-next=import-outside-toplevel
  from confluent_kafka import Producer
  producer = Producer({k: v for k, v in config.items()
                       if k not in ('group.id', 'auto.offset.reset',
                                    'enable.auto.commit')})

  def send(letter) -> None:
    key = letter.record_key or (letter.event_id or '').encode()
    producer.produce(topic, key=key, value=letter.payload,
                     headers=letter.kafka_headers())
    producer.poll(0)

  def flush() -> None:
    remaining = producer.flush(30)
    if remaining:
      raise RuntimeError(f'{remaining} dead letters not delivered to {topic}')

  return send, flush


def run(bootstrap_servers: str, topic: str, model_dir: str, *,
        group: str = DEFAULT_GROUP, batch_size: int = DEFAULT_BATCH_SIZE,
        export_every: int = DEFAULT_EXPORT_EVERY, config: str = 'mlp_small',
        learning_rate: Optional[float] = None, steps_per_batch: int = 1,
        max_batches: Optional[int] = None,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        schema: str = 'susy', input_format: str = 'json',
        dead_letter_topic: Optional[str] = None,
        kafka_config: Optional[dict] = None) -> OnlineResult:
  """Consumes ``topic`` once with ``group`` and learns (module docstring)."""
  # pylint: disable-next=import-outside-toplevel
  from transforms import schema as schema_lib
  event_schema = schema_lib.resolve(schema)
  config_dict = {'bootstrap.servers': bootstrap_servers, 'group.id': group}
  config_dict.update(kafka_config or {})
  on_skipped, flush = _dead_letter_producer(config_dict, dead_letter_topic)
  batches = KafkaMiniBatches(
      config_dict, topic, schema=event_schema, input_format=input_format,
      batch_size=batch_size, idle_timeout_s=idle_timeout_s,
      max_batches=max_batches, on_skipped=on_skipped)
  try:
    return learn(batches, model_dir, feature_names=event_schema.features,
                 config=config, export_every=export_every,
                 steps_per_batch=steps_per_batch, learning_rate=learning_rate,
                 source=f'kafka:{topic} group {group}')
  finally:
    batches.close()
    flush()


def _build_parser() -> argparse.ArgumentParser:
  # pylint: disable-next=import-outside-toplevel
  from transforms import parse as parse_lib
  parser = argparse.ArgumentParser(
      prog='python -m models.online',
      description='Learn online from labelled Kafka events; export versions.')
  parser.add_argument('--bootstrap_servers', required=True,
                      help='host:port[,host:port...]')
  parser.add_argument('--topic', required=True,
                      help='topic of labelled events')
  parser.add_argument('--group', default=DEFAULT_GROUP,
                      help=f'consumer group (default: {DEFAULT_GROUP})')
  parser.add_argument('--model_dir', required=True,
                      help='versioned model root (local or gs://)')
  parser.add_argument('--batch_size', type=int, default=DEFAULT_BATCH_SIZE,
                      help=f'events per mini-batch (default: '
                      f'{DEFAULT_BATCH_SIZE})')
  parser.add_argument('--export_every', type=int,
                      default=DEFAULT_EXPORT_EVERY,
                      help='export a version every N mini-batches (default: '
                      f'{DEFAULT_EXPORT_EVERY})')
  parser.add_argument('--config', default='mlp_small',
                      help='registry config when there is no version to '
                      'warm-start from (default: mlp_small)')
  parser.add_argument('--learning_rate', type=float, default=None,
                      help='override the optimizer learning rate (default: '
                      'the warm-started optimizer\'s, else the config\'s)')
  parser.add_argument('--steps_per_batch', type=int, default=1,
                      help='gradient steps per mini-batch (default: 1)')
  parser.add_argument('--max_batches', type=int, default=None,
                      help='stop after N mini-batches (default: end of the '
                      'pass)')
  parser.add_argument('--idle_timeout_s', type=float,
                      default=DEFAULT_IDLE_TIMEOUT_S,
                      help='end the pass after this many seconds without a '
                      f'record (default: {DEFAULT_IDLE_TIMEOUT_S:g})')
  parser.add_argument('--schema', default='susy',
                      help='event schema name or file (default: susy)')
  parser.add_argument('--input_format', default='json',
                      choices=parse_lib.INPUT_FORMATS,
                      help='encoding of event payloads (default: json)')
  parser.add_argument('--dead_letter_topic', default=None,
                      help='topic for skipped events (default: none, '
                      'counted only)')
  parser.add_argument('--kafka_config', action='append', default=[],
                      metavar='KEY=VALUE', help='extra librdkafka setting')
  parser.add_argument('--history_out', default=None,
                      help='write the per-version history (JSON) here, for '
                      'python -m models.report --online')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  """CLI entry point; returns the exit status."""
  args = _build_parser().parse_args(argv)
  for flag in ('batch_size', 'export_every', 'steps_per_batch'):
    if getattr(args, flag) < 1:
      print(f'error: --{flag} must be >= 1', file=sys.stderr)
      return 2
  extra = {}
  for kv in args.kafka_config:
    if '=' not in kv:
      print(f'error: --kafka_config {kv!r}: expected KEY=VALUE',
            file=sys.stderr)
      return 2
    key, value = kv.split('=', 1)
    extra[key.strip()] = value.strip()
  try:
    result = run(args.bootstrap_servers, args.topic, args.model_dir,
                 group=args.group, batch_size=args.batch_size,
                 export_every=args.export_every, config=args.config,
                 learning_rate=args.learning_rate,
                 steps_per_batch=args.steps_per_batch,
                 max_batches=args.max_batches,
                 idle_timeout_s=args.idle_timeout_s, schema=args.schema,
                 input_format=args.input_format,
                 dead_letter_topic=args.dead_letter_topic,
                 kafka_config=extra)
  except (ValueError, KeyError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'{result.batches} batches, {result.examples} examples, '
        f'{result.skipped} skipped, versions {result.versions} '
        f'(warm start from {result.warm_start_version}), '
        f'{result.seconds:.1f} s')
  for entry in result.history:
    print(f"  version {entry['version']}: after {entry['examples']} "
          f"examples, prequential accuracy {entry['accuracy']:.4f} on the "
          f"last {entry['window_examples']}")
  if args.history_out:
    with open(args.history_out, 'w', encoding='utf-8') as f:
      json.dump({'history': result.history,
                 'warm_start_version': result.warm_start_version}, f,
                indent=2)
  return 0


if __name__ == '__main__':
  logging.basicConfig(level=logging.INFO,
                      format='%(asctime)s %(levelname)s %(name)s: %(message)s')
  sys.exit(main())
