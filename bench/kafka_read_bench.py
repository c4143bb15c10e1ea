"""Read throughput of ReadFromKafka against the raw confluent-kafka consumer.

Starts an embedded broker, fills a 4-partition topic with SUSY-like JSON
events (~300 bytes, 18 float features), then measures in one run:

  raw   one confluent-kafka Consumer, all partitions assigned, consume() in
        batches, counting the records (error() checked per message, nothing
        else): the ceiling a Python reader can reach.
  fnapi ReadFromKafka(start='earliest', stop='end', max_batch_records=1000)
        -> record count, on the FnApiRunner (what batch DirectRunner runs).
  local the same read on LocalStreamingRunner (the bundle-based DirectRunner
        with the native local Kafka read).

Each figure is records / wall second of the whole read (pipeline construction
and start included for the Beam runs; a warm-up pipeline runs first so module
imports are not counted). Prints each run, then a table: the best rate of
each run and its ratio to raw's best, and the median over rounds of the
ratio to the raw run of the same round ("paired": robust to other load on a
shared machine, which drifts between rounds).

  python -m bench.kafka_read_bench                       # noida, 1M records
  python -m bench.kafka_read_bench --records 200000 --broker tansu
  python -m bench.kafka_read_bench --broker noida --broker tansu --repeat 3
  python -m bench.kafka_read_bench --profile fnapi       # cProfile, top 25
  python -m bench.kafka_read_bench --gc_freeze   # gc.freeze() after warm-up

Tansu's high watermark is wrong (docs/brokers.md), so ``stop='end'`` would end
early there: on tansu the Beam runs stop at
``StopAt.records_per_partition`` instead (the topic is filled evenly).
"""

import argparse
import cProfile
import gc
import io
import json
import logging
import pstats
import random
import statistics
import sys
import tempfile
import time
import uuid

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from beam_jobs import local_broker
from transforms.kafka import ReadFromKafka, StopAt, admin
from beam_jobs.local_runner import LocalStreamingRunner

_LOGGER = logging.getLogger(__name__)

PARTITIONS = 4
MAX_BATCH_RECORDS = 1000
_FEATURES = 18
_NAMESPACE = 'kafka_read_bench'


def _event_bodies(n: int, seed: int = 7) -> list[bytes]:
  """n distinct SUSY-like JSON bodies of ~300 bytes (without the id field)."""
  rng = random.Random(seed)
  bodies = []
  for _ in range(n):
    features = {f'f{i:02d}': round(rng.uniform(-3.0, 3.0), 9)
                for i in range(_FEATURES)}
    body = json.dumps({'label': rng.randint(0, 1), **features},
                      separators=(',', ':'))
    bodies.append(body.encode())
  return bodies


def produce(config: dict, topic: str, records: int) -> float:
  """Fills the topic evenly (round robin over partitions); returns seconds."""
  bodies = _event_bodies(4096)
  producer = Producer({**config, 'linger.ms': 20, 'batch.size': 1_000_000,
                       'compression.type': 'lz4',
                       'queue.buffering.max.messages': 2_000_000})
  t0 = time.perf_counter()
  for i in range(records):
    value = b'{"id":%d,%s' % (i, bodies[i & 4095][1:])
    while True:
      try:
        producer.produce(topic, value=value, key=b'%d' % i,
                         partition=i % PARTITIONS)
        break
      except BufferError:
        producer.poll(0.05)
    if i % 10_000 == 0:
      producer.poll(0)
  remaining = producer.flush(120)
  if remaining:
    raise RuntimeError(f'{remaining} records not delivered')
  return time.perf_counter() - t0


def raw_consume(config: dict, topic: str, records: int) -> float:
  """Reads every record with one plain consumer; returns seconds."""
  consumer = Consumer({**config, 'group.id': f'bench-raw-{uuid.uuid4().hex}',
                       'enable.auto.commit': False,
                       'enable.partition.eof': False})
  try:
    t0 = time.perf_counter()
    consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    n = 0
    deadline = time.monotonic() + 300
    while n < records:
      if time.monotonic() > deadline:
        raise RuntimeError(f'raw consume stalled at {n}/{records}')
      for m in consumer.consume(num_messages=MAX_BATCH_RECORDS, timeout=1.0):
        err = m.error()
        if err is None:
          n += 1
        elif err.code() != KafkaError._PARTITION_EOF:
          raise RuntimeError(f'consume error: {err}')
    return time.perf_counter() - t0
  finally:
    consumer.close()


class _CountRecords(beam.DoFn):
  """Counts records of batched elements into a metric (no per-record work)."""

  def __init__(self):
    self.records = Metrics.counter(_NAMESPACE, 'records')

  def process(self, batch):
    self.records.inc(len(batch))


def _stop(kind: str, records: int):
  if kind == 'tansu':
    return StopAt.records_per_partition(records // PARTITIONS)
  return 'end'


def beam_read(runner, config: dict, topic: str, records: int,
              kind: str) -> float:
  """Reads the topic with ReadFromKafka on ``runner``; returns seconds."""
  t0 = time.perf_counter()
  p = beam.Pipeline(runner=runner)
  _ = (p
       | 'Read' >> ReadFromKafka(config, topic, start='earliest',
                                 stop=_stop(kind, records),
                                 max_batch_records=MAX_BATCH_RECORDS)
       | 'Count' >> beam.ParDo(_CountRecords()))
  result = p.run()
  result.wait_until_finish()
  seconds = time.perf_counter() - t0
  counters = result.metrics().query(
      MetricsFilter().with_namespace(_NAMESPACE).with_name('records'))
  got = sum(c.committed or 0 for c in counters['counters'])
  if got != records:
    raise RuntimeError(f'{type(runner).__name__} read {got} records, '
                       f'expected {records}')
  return seconds


def _warm_up(runner_factory) -> None:
  with beam.Pipeline(runner=runner_factory()) as p:
    _ = p | beam.Create([1, 2, 3]) | beam.Map(lambda x: x)


def _profiled(fn, *args):
  profiler = cProfile.Profile()
  profiler.enable()
  try:
    return fn(*args)
  finally:
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats('tottime').print_stats(25)
    print(out.getvalue())


def run_bench(kind: str, records: int, runs: list[str], profile: str = '',
              repeat: int = 1, gc_freeze: bool = False) -> dict:
  """Starts a broker of ``kind``, fills a topic, measures.

  With ``repeat`` > 1 the runs are interleaved (raw, fnapi, local, raw, ...):
  on a shared machine, other load drifts over time, so each run is also
  compared with the raw run of its own round.

  Returns:
    {run name: [records/s of each round]}.
  """
  data_dir = tempfile.mkdtemp(prefix=f'kafka-read-bench-{kind}-')
  info = local_broker.start(kind, data_dir=data_dir)
  try:
    config = info.client_config()
    topic = f'bench-{uuid.uuid4().hex[:8]}'
    admin.create_topic(config, topic, PARTITIONS,
                       config={'retention.ms': '-1'})
    seconds = produce(config, topic, records)
    print(f'[{kind}] produced {records:,} records in {seconds:.1f}s '
          f'({records / seconds:,.0f}/s)', flush=True)
    _warm_up(FnApiRunner)
    if gc_freeze:
      # What a job can do once its worker is set up (models loaded): move
      # everything alive to the permanent generation, so the full
      # collections that the reader's records trigger stay cheap.
      gc.freeze()
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for name in [r for _ in range(repeat) for r in runs]:
      if name == 'raw':
        fn, args = raw_consume, (config, topic, records)
      elif name == 'fnapi':
        fn, args = beam_read, (FnApiRunner(), config, topic, records, kind)
      elif name == 'local':
        fn, args = beam_read, (LocalStreamingRunner(), config, topic, records,
                               kind)
      else:
        raise ValueError(f'unknown run {name!r}')
      seconds = _profiled(fn, *args) if name == profile else fn(*args)
      rate = records / seconds
      rates[name].append(rate)
      print(f'[{kind}] {name:5s}: {records:,} records in {seconds:.2f}s = '
            f'{rate:,.0f} records/s', flush=True)
    return rates
  finally:
    local_broker.stop(info)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--records', type=int, default=1_000_000,
                      help='records to produce and read (default 1000000)')
  parser.add_argument('--broker', action='append', choices=local_broker.KINDS,
                      help='embedded broker kind; repeat for both '
                           '(default noida)')
  parser.add_argument('--runs', default='raw,fnapi,local',
                      help='comma-separated subset of raw,fnapi,local '
                           '(default all three)')
  parser.add_argument('--repeat', type=int, default=1,
                      help='run each measurement this many times, '
                           'interleaved, and keep the best (default 1)')
  parser.add_argument('--gc_freeze', action='store_true',
                      help='call gc.freeze() after the warm-up (default off)')
  parser.add_argument('--profile', default='',
                      help='cProfile one run (raw, fnapi or local) and print '
                           'its top 25 functions by own time (default none)')
  args = parser.parse_args(argv)
  if args.records < PARTITIONS or args.records % PARTITIONS:
    parser.error(f'--records must be a positive multiple of {PARTITIONS}')
  logging.basicConfig(level=logging.WARNING)
  runs = [r.strip() for r in args.runs.split(',') if r.strip()]
  results = {kind: run_bench(kind, args.records, runs, args.profile,
                             args.repeat, args.gc_freeze)
             for kind in (args.broker or ['noida'])}

  # best: the best rate of the run over the rounds, and its ratio to raw's
  # best; paired: the median over rounds of (run / raw of the same round).
  print(f'\n{"broker":7s} {"run":6s} {"best/s":>12s} {"vs raw":>7s} '
        f'{"paired":>7s}')
  for kind, rates in results.items():
    raw = rates.get('raw')
    for name, values in rates.items():
      best = max(values)
      ratio = f'{best / max(raw):6.0%}' if raw else '   n/a'
      paired = (f'{statistics.median(v / r for v, r in zip(values, raw)):6.0%}'
                if raw else '   n/a')
      print(f'{kind:7s} {name:6s} {best:12,.0f} {ratio:>7s} {paired:>7s}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
