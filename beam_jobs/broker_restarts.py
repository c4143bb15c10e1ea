"""One broker restart under steady acknowledged writes, and what it lost.

A broker with one 4-partition topic, optionally prefilled, a producer at a
steady rate (acks=all), ``local_broker.stop`` (or SIGTERM alone), a pause,
``local_broker.start`` on the same port and data directory, more
production, then the whole topic read back: a record is lost if its
delivery was acknowledged and its key is not on the topic. Used by
bench/broker_restart_loss.py (the table in docs/brokers.md) and
tests/local_broker_it_test.py.
"""

import dataclasses
import os
import shutil
import threading
import time
from typing import Optional

from confluent_kafka import Producer

from beam_jobs import demo
from beam_jobs import local_broker
from beam_jobs import fault_harness as reliability
from models import susy
from transforms.kafka import admin

TOPIC = 'restart-loss'


@dataclasses.dataclass
class Run:
  """One restart and what it cost."""
  broker: str
  stop: str           # 'stop' (local_broker.stop) or 'sigterm' (alone)
  rate: float
  prefill: int
  acked: int          # acknowledged deliveries (distinct keys)
  lost: int           # acknowledged keys not on the topic afterwards
  stop_s: float       # stop request until the process was gone
  snapshot_mb: float  # what noida saved at the stop
  lost_from_ms: Optional[float]  # first lost ack, ms after the stop request
  lost_to_ms: Optional[float]

  def row(self) -> str:
    window = ('' if self.lost_from_ms is None else
              f'{self.lost_from_ms:+.0f}..{self.lost_to_ms:+.0f}')
    return (f'{self.broker:6} {self.stop:7} {self.rate:>6.0f} '
            f'{self.prefill:>8} '
            f'{self.acked:>8} {self.lost:>7} {self.stop_s:>6.1f} '
            f'{self.snapshot_mb:>7.0f}  {window}')


HEADER = (f'{"broker":6} {"stop":7} {"rate":>6} {"prefill":>8} {"acked":>8} '
          f'{"lost":>7} {"stop s":>6} {"snap MB":>7}  lost acked at (ms '
          f'after the stop request)')


class _AckedProducer(threading.Thread):
  """Produces keys k0, k1, ... at ``rate``/s and records when each was
  acknowledged (time.time())."""

  def __init__(self, config: dict, rate: float, first: int):
    super().__init__(daemon=True)
    self._producer = Producer(dict(config, **{
        'linger.ms': 5, 'compression.type': 'lz4', 'acks': 'all',
        'message.timeout.ms': 120_000}))
    self._rate = rate
    self._next = first
    self._halt = threading.Event()
    self.acked: dict[bytes, float] = {}

  def _on_delivery(self, err, msg):
    if err is None:
      self.acked[msg.key()] = time.time()

  def run(self):
    events = susy.iter_encoded_events(10**9, seed=4, start_time=time.time(),
                                      rate=self._rate)
    started, sent = time.monotonic(), 0
    for event in events:
      if self._halt.is_set():
        break
      ahead = sent / self._rate - (time.monotonic() - started)
      if ahead > 0.005:
        self._producer.poll(0)
        time.sleep(ahead)
      key = b'k%d' % self._next
      while True:
        try:
          self._producer.produce(TOPIC, key=key, value=event.value,
                                 on_delivery=self._on_delivery)
          break
        except BufferError:
          self._producer.poll(0.01)
      self._next += 1
      sent += 1
    self._producer.flush(180)

  def stop(self):
    self._halt.set()
    self.join()


def _prefill(config: dict, n: int) -> None:
  producer = Producer(dict(config, **{'linger.ms': 20,
                                      'compression.type': 'lz4'}))
  for event in susy.iter_encoded_events(n, seed=9, start_time=time.time()):
    key = b'p' + event.key
    while True:
      try:
        producer.produce(TOPIC, key=key, value=event.value)
        break
      except BufferError:
        producer.poll(0.01)
  if producer.flush(300):
    raise RuntimeError('prefill: records not delivered in 300 s')


def restart_once(kind: str, rate: float, *, before_s: float, down_s: float,
                 after_s: float, prefill: int, retention_s: float,
                 work_dir: str, sigterm_only: bool = False) -> Run:
  """One run (see the module docstring)."""
  data_dir = os.path.join(work_dir, f'{kind}-{time.monotonic_ns()}')
  broker = local_broker.start(kind, data_dir=data_dir)
  config = broker.client_config(log_level=0)
  topic_config = demo.topic_config(retention_s)
  producer = None
  try:
    admin.create_topic(config, TOPIC, 4, config=topic_config)
    if prefill:
      _prefill(config, prefill)
    producer = _AckedProducer(config, rate, 0)
    producer.start()
    time.sleep(before_s)
    stop_at = time.time()
    result = local_broker.stop(broker, close_port_first=not sigterm_only)
    time.sleep(down_s)
    broker = local_broker.start(kind, port=broker.port, data_dir=data_dir)
    try:
      admin.topic_partitions(config, [TOPIC], timeout_s=5)
    except admin.TopicNotFoundError:
      # Tansu's memory storage: the topic is gone with everything in it.
      admin.create_topic(config, TOPIC, 4, config=topic_config)
    time.sleep(after_s)
    producer.stop()
    on_topic = {m.key() for m in reliability.read_all(config, TOPIC)}
  finally:
    if producer is not None and producer.is_alive():
      producer.stop()
    local_broker.stop(broker)
    shutil.rmtree(data_dir, ignore_errors=True)
  lost = {k: t for k, t in producer.acked.items() if k not in on_topic}
  times = sorted((t - stop_at) * 1000 for t in lost.values())
  return Run(kind, 'sigterm' if sigterm_only else 'stop', rate, prefill, len(producer.acked), len(lost),
             result.seconds, result.snapshot_bytes / 2**20,
             times[0] if times else None, times[-1] if times else None)
