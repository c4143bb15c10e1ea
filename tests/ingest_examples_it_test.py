"""The ingest job reading Kafka ranges on a real broker."""

import collections
import os

import pytest
import tensorflow as tf

from beam_jobs import ingest_examples as ingest
from kafka_helpers import read_topic
from models import examples_io, susy
from transforms.kafka import admin

pytestmark = pytest.mark.it


def _ids(span_dir: str) -> collections.Counter:
  files = tf.io.gfile.glob(os.path.join(span_dir, 'Split-*', '*.gz'))
  out = collections.Counter()
  for r in tf.data.TFRecordDataset(files, compression_type='GZIP'):
    ex = tf.train.Example.FromString(r.numpy())
    out[ex.features.feature['event_id'].bytes_list.value[0].decode()] += 1
  return out


def _args(broker, topic, out, *extra):
  args = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', topic, '--output', out]
  args += [f'--kafka_config={k}={v}' for k, v in broker.client_config().items()
           if k != 'bootstrap.servers']
  return args + list(extra)


def test_each_run_ingests_the_new_events_into_the_next_span(
    broker, make_topic, tmp_path):
  topic, dlq = make_topic(4), make_topic(1, suffix='-dlq')
  group = f'ingest-{topic}'
  out = str(tmp_path / 'data')
  malformed = {}
  stats = susy.produce(
      broker.bootstrap_servers, topic, n=3000, rate=0, seed=21,
      malformed_fraction=0.01, producer_config=broker.client_config(),
      on_malformed=lambda e: malformed.__setitem__(e.key.decode(), 1))
  assert stats['failed'] == 0
  first = ingest.run(_args(broker, topic, out, '--consumer_group', group,
                           '--dead_letter_topic', dlq))
  assert first.span == 0
  assert set(_ids(first.span_dir)) == (
      {f'e{i}' for i in range(3000)} - set(malformed))
  assert max(_ids(first.span_dir).values()) == 1
  dead = read_topic(broker, dlq, len(malformed))
  assert {m.key().decode() for m in dead} == set(malformed)
  config = broker.client_config()
  assert admin.committed_offsets(config, group, topic) == admin.end_offsets(
      config, topic)

  # New events only: the group remembers what was ingested.
  susy.produce(broker.bootstrap_servers, topic, n=1000, rate=0, seed=21,
               start_index=3000, producer_config=broker.client_config())
  second = ingest.run(_args(broker, topic, out, '--consumer_group', group,
                            '--dead_letter_topic', dlq))
  assert second.span == 1
  assert set(_ids(second.span_dir)) == {f'e{i}' for i in range(3000, 4000)}
  assert examples_io.list_spans(out) == [0, 1]


def test_time_range_and_record_count(broker, make_topic, tmp_path):
  topic = make_topic(2)
  out = str(tmp_path / 'data')
  t0 = 1_790_000_000.0  # record timestamps = event times, 1000 per second
  susy.produce(broker.bootstrap_servers, topic, n=3000, rate=0, seed=22,
               start_time=t0, producer_config=broker.client_config())
  window = ingest.run(_args(
      broker, topic, out, '--start', '2026-09-21T14:13:21Z',
      '--stop_time', '2026-09-21T14:13:22Z', '--span', '10'))
  # 2026-09-21T14:13:20Z is t0: the range is events 1000..1999.
  assert window.span == 10
  assert set(_ids(window.span_dir)) == {f'e{i}' for i in range(1000, 2000)}

  counted = ingest.run(_args(broker, topic, out, '--start', 'earliest',
                             '--max_records', '500',
                             '--consumer_group', f'count-{topic}'))
  assert counted.span == 11
  assert sum(_ids(counted.span_dir).values()) == 500
