"""The local streaming engine: an unbounded Kafka read with event-time windows.

Records are produced by a background thread WHILE the pipeline runs; the
tests check what fires, when, and what is committed at the end.
"""

import threading
import time

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from confluent_kafka import Producer

from beam_jobs import engine as engine_lib
from transforms.kafka import ReadFromKafka, StopAt, admin
from beam_jobs.local_runner import LocalStreamingRunner

pytestmark = pytest.mark.it

# Firings observed by the pipeline: (window start, count, wall time).
_FIRED: list = []


def _record_firing(count, window=beam.DoFn.WindowParam):
  _FIRED.append((float(window.start), count, time.time()))


def _windowed_counts(p, config, topic, window_s=2.0, idle_timeout_s=1.0):
  return (p
          | ReadFromKafka(config, topic, start='earliest',
                          max_batch_records=100,
                          idle_timeout_s=idle_timeout_s)
          | 'Sizes' >> beam.Map(len)
          | beam.WindowInto(beam.window.FixedWindows(window_s))
          | beam.CombineGlobally(sum).without_defaults()
          | beam.Map(_record_firing))


def _non_daemon_threads():
  return {t.name for t in threading.enumerate()
          if t.is_alive() and not t.daemon}


def test_windows_fire_in_order_while_records_are_produced(broker, make_topic):
  topic = make_topic(4)
  config = broker.client_config(**{'group.id': f'g-{topic}'})
  _FIRED.clear()
  threads_before = _non_daemon_threads()
  p = beam.Pipeline(runner=LocalStreamingRunner(),
                    options=PipelineOptions(streaming=True))
  _windowed_counts(p, config, topic)
  result = p.run()

  # Event times: the 2 s windows [T, T+2), [T+2, T+4), [T+4, T+6), with
  # 100, 150 and 200 records, produced as time passes.
  base = (int(time.time()) // 2 + 1) * 2
  producer = Producer(broker.client_config(**{'linger.ms': 5}))
  produced_at = {}
  for w, n in enumerate((100, 150, 200)):
    start = base + 2 * w
    while time.time() < start:
      time.sleep(0.02)
    for i in range(n):
      ts = int((start + i * (1.9 / n)) * 1000)
      producer.produce(topic, value=b'%d-%d' % (w, i), partition=i % 4,
                       timestamp=ts)
    producer.flush(10)
    produced_at[start] = time.time()
  # After the last window's end + idle timeout, everything has fired.
  deadline = time.time() + 20
  while len(_FIRED) < 3 and time.time() < deadline:
    time.sleep(0.1)
  result.stop_reading()
  assert result.wait_until_finish() == PipelineState.DONE

  assert [(s, c) for s, c, _ in _FIRED] == [(base, 100), (base + 2, 150),
                                            (base + 4, 200)]
  # Each window fired within seconds of its end, not at the end of the run.
  for start, _, fired in _FIRED:
    assert fired - (start + 2) < 5.0, (start, fired)
  assert admin.committed_offsets(config, f'g-{topic}', topic) == (
      admin.end_offsets(config, topic))
  assert _non_daemon_threads() <= threads_before


def test_record_after_ten_seconds_of_silence_is_still_delivered(
    broker, make_topic):
  topic = make_topic(2)
  config = broker.client_config(**{'group.id': f'g-{topic}'})
  _FIRED.clear()
  p = beam.Pipeline(runner=LocalStreamingRunner(),
                    options=PipelineOptions(streaming=True))
  _windowed_counts(p, config, topic, window_s=1.0)
  result = p.run()
  producer = Producer(broker.client_config())
  producer.produce(topic, value=b'first', partition=0)
  producer.flush(10)
  time.sleep(10)
  t_late = time.time()
  producer.produce(topic, value=b'after-silence', partition=1)
  producer.flush(10)
  deadline = time.time() + 15
  while sum(c for _, c, _ in _FIRED) < 2 and time.time() < deadline:
    time.sleep(0.1)
  result.stop_reading()
  result.wait_until_finish()
  assert sum(c for _, c, _ in _FIRED) == 2
  # Its window (1 s, idle partitions advance after 1 s) fired promptly.
  assert _FIRED[-1][2] - t_late < 5.0
  assert admin.committed_offsets(config, f'g-{topic}', topic) == {0: 1, 1: 1}


def test_max_read_time_stops_cleanly_and_commits(broker, make_topic):
  topic = make_topic(2)
  config = broker.client_config(**{'group.id': f'g-{topic}',
                                   'auto.offset.reset': 'earliest'})
  producer = Producer(broker.client_config())
  for i in range(50):
    producer.produce(topic, value=b'v%d' % i, partition=i % 2)
  producer.flush(10)
  _FIRED.clear()
  threads_before = _non_daemon_threads()
  t0 = time.monotonic()
  p = beam.Pipeline(runner=LocalStreamingRunner(),
                    options=PipelineOptions(streaming=True))
  _ = (p
       | ReadFromKafka(config, topic, start='committed',
                       stop=StopAt.read_time(3), max_batch_records=10)
       | beam.Map(len)
       | beam.CombineGlobally(sum)
       | beam.Map(_record_firing))
  result = p.run()
  assert result.wait_until_finish() == PipelineState.DONE
  elapsed = time.monotonic() - t0
  assert 3 <= elapsed < 20
  assert [c for _, c, _ in _FIRED] == [50]
  records = result.metrics().query(
      MetricsFilter().with_name('records'))['counters']
  assert sum(c.committed for c in records) == 50
  assert admin.committed_offsets(config, f'g-{topic}', topic) == {0: 25, 1: 25}
  assert _non_daemon_threads() <= threads_before


def test_engine_selection_is_explicit_and_logged(monkeypatch):
  monkeypatch.setattr(engine_lib.shutil, 'which', lambda name: None)
  streaming = engine_lib.select_engine(PipelineOptions(['--streaming']))
  assert isinstance(streaming.runner, LocalStreamingRunner)
  assert 'no Prism binary' in streaming.name
  prism = engine_lib.select_engine(PipelineOptions(
      ['--streaming', '--prism_location', '/opt/prism']))
  assert prism.runner == 'PrismRunner' and '/opt/prism' in prism.name
  batch = engine_lib.select_engine(PipelineOptions([]))
  assert 'FnApiRunner' in batch.name
  dataflow = engine_lib.select_engine(PipelineOptions(
      ['--runner', 'DataflowRunner', '--streaming']))
  assert dataflow.runner == 'DataflowRunner'


def test_total_records_stop_is_exact_and_commits_only_what_was_read(
    broker, make_topic):
  topic = make_topic(4)
  config = broker.client_config(**{'group.id': f'g-{topic}'})
  producer = Producer(broker.client_config())
  for i in range(400):
    producer.produce(topic, value=b'v%d' % i, partition=i % 4)
  producer.flush(10)
  _FIRED.clear()
  p = beam.Pipeline(runner=LocalStreamingRunner(),
                    options=PipelineOptions(streaming=True))
  _ = (p
       | ReadFromKafka(config, topic, start='earliest',
                       stop=StopAt.total_records(250), max_batch_records=30)
       | beam.Map(len)
       | beam.CombineGlobally(sum)
       | beam.Map(_record_firing))
  assert p.run().wait_until_finish() == PipelineState.DONE
  assert [c for _, c, _ in _FIRED] == [250]
  committed = admin.committed_offsets(config, f'g-{topic}', topic)
  assert sum(o or 0 for o in committed.values()) == 250
