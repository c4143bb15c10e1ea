"""python -m beam_jobs.lag against a real broker."""

import json

import pytest
from confluent_kafka import Consumer, TopicPartition

from beam_jobs import lag
from kafka_helpers import produce

pytestmark = pytest.mark.it


def _commit(broker, group, topic, offsets):
  consumer = Consumer(broker.client_config(**{'group.id': group,
                                              'enable.auto.commit': False}))
  try:
    consumer.commit(offsets=[TopicPartition(topic, p, o)
                             for p, o in offsets.items()],
                    asynchronous=False)
  finally:
    consumer.close()


def test_lag_per_partition_and_exit_code(broker, make_topic, capsys):
  topic = make_topic(2)
  produce(broker, topic, [(i % 2, None, b'v', None, None) for i in range(100)])
  group = f'g-{topic}'
  _commit(broker, group, topic, {0: 30})
  base = ['--bootstrap_servers', broker.bootstrap_servers, '--group', group,
          '--topic', topic, '--json']
  assert lag.main(base) == 0
  rows = json.loads(capsys.readouterr().out)
  assert rows == [
      {'topic': topic, 'partition': 0, 'committed': 30, 'end': 50, 'lag': 20},
      {'topic': topic, 'partition': 1, 'committed': None, 'end': 50,
       'lag': 50}]
  assert lag.main(base + ['--max_lag', '69']) == 1
  assert 'lag 70 exceeds --max_lag 69' in capsys.readouterr().err
  assert lag.main(base + ['--max_lag', '70']) == 0
  capsys.readouterr()
  # Without --topic: the topics the group has committed offsets for.
  assert lag.main(base[:4]) == 0
  table = capsys.readouterr().out
  assert topic in table and table.strip().splitlines()[-1].split()[-1] == '70'


def test_unreachable_cluster_is_exit_2():
  assert lag.main(['--bootstrap_servers', '127.0.0.1:9', '--group', 'g',
                   '--topic', 't', '--timeout_s', '2']) == 2
