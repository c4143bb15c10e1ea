"""Outputs that become unavailable are ridden out, not fatal (issue 21).

* A file output that cannot be written for 20 s: the job keeps running,
  retries in place, and every row is in the files afterwards (the same rows
  as on the output topic).
* The broker (input and outputs) stopped for longer than a failing bundle
  used to survive: with records timing out after 3 s, the old bundle retries
  gave up after ~12 s; the job now waits for the broker and loses nothing.
"""

import glob
import os
import shutil
import time

import orjson
import pytest

import turbine_fixtures as tf_
from beam_jobs import score_stream
from beam_jobs import fault_harness as rel
from kafka_helpers import produce, read_topic
from transforms.kafka import admin
from transforms.sinks import read_row_file

pytestmark = [pytest.mark.it, pytest.mark.slow]


@pytest.fixture(scope='module')
def turbine(tmp_path_factory):
  root = tmp_path_factory.mktemp('turbine')
  model_root = str(root / 'models')
  tf_.write_model(model_root, version=1)
  return {'model_root': model_root, 'schema': tf_.write_schema(str(root))}


def _count(broker, topic):
  return sum(admin.end_offsets(broker.client_config(), topic).values())


def test_file_output_unwritable_for_20_s_is_ridden_out(broker, make_topic,
                                                      turbine, tmp_path):
  topics = {'in': make_topic(4), 'out': make_topic(2, suffix='-out'),
            'dlq': make_topic(1, suffix='-dlq')}
  out = str(tmp_path / 'predictions')
  args = ['--bootstrap_servers', broker.bootstrap_servers,
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'], '--consumer_group', 'g-files',
          '--start', 'earliest', '--schema', turbine['schema'],
          '--model_dir', turbine['model_root'], '--window_size_s', '2',
          '--idle_timeout_s', '1', '--max_delay_s', '0',
          '--output_path', out] + [
              f'--kafka_config={k}={v}' for k, v in
              broker.client_config().items() if k != 'bootstrap.servers']
  result = score_stream.run(args, block=False)
  sent = []
  try:
    def burst(start, n):
      now = time.time()
      docs = [tf_.reading(start + i, now + i * 0.001, f't{i % 3}')
              for i in range(n)]
      produce(broker, topics['in'], [(i % 4, d['reading_id'].encode(),
                                      tf_.encode(d), None, None)
                                     for i, d in enumerate(docs)])
      sent.extend(docs)

    burst(0, 200)
    deadline = time.monotonic() + 60
    while not glob.glob(os.path.join(out, '*.jsonl')):
      assert time.monotonic() < deadline, 'no file written'
      time.sleep(0.2)
    # The output directory becomes a file: every rename into it fails.
    shutil.move(out, out + '.away')
    with open(out, 'w') as f:
      f.write('not a directory')
    for k in range(4):
      burst(1000 + 200 * k, 200)
      time.sleep(5)
    assert str(result.state) == 'RUNNING', 'the job gave up'
    os.remove(out)
    shutil.move(out + '.away', out)
    deadline = time.monotonic() + 90
    while _count(broker, topics['out']) < len(sent):
      assert time.monotonic() < deadline
      time.sleep(0.5)
    time.sleep(4)  # the last windows close and are written
  finally:
    result.stop_reading()
    result.wait_until_finish()
  rows = [r for f in glob.glob(os.path.join(out, '*.jsonl'))
          for r in read_row_file(f, 'jsonl')]
  kafka = {orjson.loads(m.value())['event_id']
           for m in read_topic(broker, topics['out'], len(sent))}
  ids = {d['reading_id'] for d in sent}
  assert {r['event_id'] for r in rows} == ids == kafka
  assert len(rows) == len(ids), 'a row written twice'
  print(f'\nfile output unwritable for 20 s: job kept running; {len(rows)} '
        f'rows in files = {len(kafka)} on Kafka, none lost or doubled')


def test_broker_down_longer_than_bundle_retries_is_ridden_out(tmp_path):
  model_root = str(tmp_path / 'models')
  import model_fixtures as mf  # pylint: disable=import-outside-toplevel
  mf.write_versioned(model_root, 1)
  outcome = rel.broker_restart(
      model_root, str(tmp_path / 'job.log'), str(tmp_path), n=30_000,
      rate=1000, down_s=20,
      extra_args=['--kafka_config=message.timeout.ms=3000'])
  print('\n' + rel.HEADER + '\n' + outcome.row())
  assert 'rode through' in outcome.notes, outcome
  assert outcome.lost == 0, outcome
  assert (outcome.exit_code, outcome.lag_after) == (0, 0), outcome
