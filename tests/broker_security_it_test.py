"""SASL handshakes against the embedded brokers, and what cannot be tested.

Neither embedded broker can do a whole authenticated session with checked
credentials (docs/brokers.md, "TLS and SASL"):

* Tansu 0.6.0 (``--authentication``) requires SASL SCRAM and runs the real
  SCRAM exchange, but cannot be given a user, so it refuses every login:
  these tests hold the client side of a refused handshake.
* noida 0.2.3 completes SASL PLAIN handshakes without checking the
  password: these tests run the job over such a session (SASL_PLAINTEXT
  settings through every client the job builds).
* TLS: neither broker can listen with it; the checks here fail if that
  changes, so a TLS handshake test can be added then.
"""

import logging
import subprocess
import time

import orjson
import pytest

import model_fixtures as mf
from beam_jobs import local_broker
from beam_jobs import score_stream
from kafka_helpers import read_topic
from models import susy
from transforms.kafka import admin

pytestmark = pytest.mark.it

PASSWORD = 'kbi-test-Secret-9f3'


class _Broker:
  """A broker address plus the client settings every client needs."""

  def __init__(self, bootstrap_servers: str, config: dict):
    self.bootstrap_servers = bootstrap_servers
    self._config = dict(config, **{'bootstrap.servers': bootstrap_servers})

  def client_config(self, **overrides) -> dict:
    return dict(self._config, **overrides)


@pytest.fixture(scope='module')
def tansu_sasl(tmp_path_factory):
  info = local_broker.start(
      'tansu', sasl=True, data_dir=str(tmp_path_factory.mktemp('tansu-sasl')))
  yield info
  local_broker.stop(info)


@pytest.fixture(scope='module')
def noida_plain(tmp_path_factory):
  info = local_broker.start(
      'noida', data_dir=str(tmp_path_factory.mktemp('noida-sasl')))
  yield _Broker(info.bootstrap_servers, dict(
      local_broker.client_tuning('noida'), log_level=0, **{
          'security.protocol': 'SASL_PLAINTEXT', 'sasl.mechanism': 'PLAIN',
          'sasl.username': 'kbi', 'sasl.password': PASSWORD}))
  local_broker.stop(info)


def _login(info, **overrides) -> dict:
  return info.client_config(log_level=0, **{
      'sasl.username': 'alice', 'sasl.password': PASSWORD, **overrides})


def test_tansu_runs_the_scram_exchange_and_refuses_an_unknown_user_at_once(
    tansu_sasl):
  started = time.monotonic()
  # "unknown-user" is the server-final answer: the client sent its first
  # message, got the server's nonce and salt, and sent its proof.
  with pytest.raises(admin.KafkaUnavailableError,
                     match=r'refused authentication: .*SCRAM .*unknown-user'
                     ) as e:
    admin.wait_for_cluster(_login(tansu_sasl), timeout_s=30)
  assert time.monotonic() - started < 10, 'waited for the metadata timeout'
  assert PASSWORD not in str(e.value)


def test_tansu_refuses_a_mechanism_it_does_not_offer(tansu_sasl):
  with pytest.raises(admin.KafkaUnavailableError,
                     match=r'refused authentication: .*PLAIN mechanism'):
    admin.wait_for_cluster(_login(tansu_sasl, **{'sasl.mechanism': 'PLAIN'}),
                           timeout_s=30)


def test_tansu_gives_a_client_without_sasl_no_metadata(tansu_sasl):
  with pytest.raises(admin.KafkaUnavailableError, match='did not answer'):
    admin.wait_for_cluster({'bootstrap.servers': tansu_sasl.bootstrap_servers,
                            'log_level': 0}, timeout_s=3)


def test_the_job_takes_its_sasl_settings_to_the_handshake(tansu_sasl,
                                                          tmp_path, capfd,
                                                          caplog):
  caplog.set_level(logging.DEBUG)
  mf.write_versioned(str(tmp_path), 1)
  login = _login(tansu_sasl)
  args = ['--bootstrap_servers', tansu_sasl.bootstrap_servers,
          '--input_topic', 'in', '--output_topic', 'out',
          '--dead_letter_topic', 'dlq', '--model_dir', str(tmp_path)]
  args += [f'--kafka_config={k}={v}' for k, v in login.items()
           if k != 'bootstrap.servers']
  started = time.monotonic()
  with pytest.raises(admin.KafkaUnavailableError,
                     match=r'refused authentication: .*unknown-user') as e:
    score_stream.run(args)
  # Preflight stops the job before any pipeline, without waiting out its
  # 30 s metadata timeout.
  assert time.monotonic() - started < 25
  out, err = capfd.readouterr()
  assert PASSWORD not in str(e.value) + out + err + caplog.text


def test_the_job_scores_over_a_sasl_plain_session_on_noida(noida_plain,
                                                           tmp_path, capfd,
                                                           caplog):
  caplog.set_level(logging.DEBUG)
  n = 2000
  config = noida_plain.client_config()
  topics = {'in': 'sasl-in', 'out': 'sasl-out', 'dlq': 'sasl-dlq'}
  for name, topic in topics.items():
    admin.create_topic(config, topic, 2 if name == 'in' else 1,
                       config={'retention.ms': '-1'})
  stats = susy.produce(noida_plain.bootstrap_servers, topics['in'], n=n,
                       rate=0, seed=3, producer_config=config)
  assert (stats['produced'], stats['failed']) == (n, 0)
  mf.write_versioned(str(tmp_path), 1)
  args = ['--bootstrap_servers', noida_plain.bootstrap_servers,
          '--input_topic', topics['in'], '--output_topic', topics['out'],
          '--dead_letter_topic', topics['dlq'], '--consumer_group', 'g-sasl',
          '--start', 'earliest', '--model_dir', str(tmp_path),
          '--window_size_s', '5', '--max_records', str(n)]
  args += [f'--kafka_config={k}={v}' for k, v in config.items()
           if k != 'bootstrap.servers']
  result = score_stream.run(args)
  assert str(result.state) == 'DONE'
  assert result.summary.balanced and result.summary.events_scored == n
  ids = {orjson.loads(m.value())['event_id']
         for m in read_topic(noida_plain, topics['out'], n)}
  assert ids == {f'e{i}' for i in range(n)}
  # The password went through every client the job built, masked wherever
  # the job showed its settings.
  out, err = capfd.readouterr()
  assert PASSWORD not in out + err + caplog.text


def test_noida_does_not_check_sasl_plain_passwords(noida_plain):
  # Why the session above proves the settings reach the wire but not that
  # credentials are checked: any password logs in.
  wrong = noida_plain.client_config(**{'sasl.password': 'not-the-password'})
  assert admin.wait_for_cluster(wrong, timeout_s=10)


def test_neither_broker_can_listen_with_tls(noida_plain, tmp_path):
  # Tansu 0.6.0 takes --cert and --key, but not together (and neither
  # alone turns TLS on); noida has no TLS option at all.
  tansu = subprocess.run(
      [local_broker.find_binary('tansu'), 'broker', '--cert',
       str(tmp_path / 'cert.pem'), '--key', str(tmp_path / 'key.pem')],
      capture_output=True, text=True, timeout=30, check=False)
  assert tansu.returncode != 0
  assert "'--cert <CERT>' cannot be used with '--key <KEY>'" in tansu.stderr
  tls = {'bootstrap.servers': noida_plain.bootstrap_servers,
         'security.protocol': 'SSL', 'log_level': 0}
  with pytest.raises(admin.KafkaUnavailableError):
    admin.wait_for_cluster(tls, timeout_s=3)


def test_noida_cannot_be_asked_to_require_sasl():
  with pytest.raises(local_broker.BrokerError, match='noida has no SASL'):
    local_broker.start('noida', sasl=True)
