"""Model and output faults: nothing is dropped silently.

* A model that raises on some inputs: those events are dead letters
  (inference_error), every other event is scored.
* An output that cannot be written: the write is retried in place for as
  long as the outage policy allows, then fails naming the output; the
  read's offsets are not committed past what was not written, so a rerun
  with the same consumer group delivers everything.
"""

import logging

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

import model_fixtures as mf
from beam_jobs import score_stream
from kafka_helpers import produce, read_topic
from models import susy
from transforms.kafka import ReadFromKafka, StopAt, WriteToKafka, admin
from beam_jobs.local_runner import LocalStreamingRunner
from transforms.outage import OutageError, OutagePolicy

pytestmark = pytest.mark.it


def test_events_the_model_raises_on_are_dead_lettered(broker, make_topic,
                                                      tmp_path):
  model_dir = mf.write_module_tensor(str(tmp_path / 'raising'),
                                     raise_above=100.0)
  topics = {'in': make_topic(2), 'out': make_topic(1, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  data = susy.generate(300, seed=4)
  events = susy.to_events(data, start_index=0, rate=1000)
  poisoned = {7, 123, 250}
  records = []
  for i, event in enumerate(events):
    if i in poisoned:
      event['MT2'] = 1000.0  # valid input, but this model raises on it
    records.append((i % 2, event['event_id'].encode(), orjson.dumps(event),
                    None, None))
  produce(broker, topics['in'], records)
  score_stream.run([
      '--bootstrap_servers', broker.bootstrap_servers,
      '--input_topic', topics['in'], '--output_topic', topics['out'],
      '--dead_letter_topic', topics['dlq'], '--start', 'earliest',
      '--model_dir', model_dir, '--max_records', '300'] + [
          f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
          if k != 'bootstrap.servers'])
  scored = {orjson.loads(m.value())['event_id']
            for m in read_topic(broker, topics['out'], 297)}
  dead = {m.key().decode(): dict(m.headers())
          for m in read_topic(broker, topics['dlq'], 3)}
  assert scored == {f'e{i}' for i in range(300)} - {f'e{i}' for i in poisoned}
  assert set(dead) == {f'e{i}' for i in poisoned}
  for headers in dead.values():
    assert headers['dlq.stage'] == b'inference'
    assert headers['dlq.reason'] == b'inference_error'
    assert b'feature too large' in headers['dlq.detail']


def _copy_pipeline(read_config, topic, write_config, out_topic, n,
                   outage_policy=None):
  p = beam.Pipeline(runner=LocalStreamingRunner(),
                    options=PipelineOptions(streaming=True))
  _ = (p
       | ReadFromKafka(read_config, topic, start='committed',
                       stop=StopAt.total_records(n), max_batch_records=50,
                       with_metadata=False)
       | WriteToKafka(write_config, out_topic, batched=True,
                      outage_policy=outage_policy))
  return p


def test_unwritable_output_is_retried_then_fails_and_nothing_is_lost(
    broker, make_topic, caplog):
  source, out = make_topic(2), make_topic(2, suffix='-out')
  produce(broker, source, [(i % 2, b'k%d' % i, b'v%d' % i, None, None)
                           for i in range(200)])
  group = f'g-{source}'
  read_config = broker.client_config(**{'group.id': group,
                                        'auto.offset.reset': 'earliest'})
  unreachable = {'bootstrap.servers': '127.0.0.1:9', 'log_level': 0,
                 'message.timeout.ms': 2000}
  caplog.set_level(logging.WARNING, logger='transforms.outage')
  policy = OutagePolicy(max_outage_s=3, initial_backoff_s=0.1,
                        max_backoff_s=0.5, log_every_s=1)
  with pytest.raises(OutageError, match="Kafka output topic '.*' at "
                     "127.0.0.1:9 unavailable for"):
    _copy_pipeline(read_config, source, unreachable, out, 200,
                   policy).run().wait_until_finish()
  retries = [r for r in caplog.records
             if 'unavailable for' in r.getMessage()]
  assert len(retries) >= 2, 'the write was not retried in place'
  # Nothing was written, so nothing may be committed.
  assert admin.committed_offsets(read_config, group, source) == {
      0: None, 1: None}

  # The output is back: the same group reads from where it was, all arrive.
  _copy_pipeline(read_config, source, broker.client_config(), out,
                 200).run().wait_until_finish()
  written = read_topic(broker, out, 200)
  assert sorted(m.value() for m in written) == sorted(
      b'v%d' % i for i in range(200))
  assert admin.committed_offsets(read_config, group, source) == {
      0: 100, 1: 100}
