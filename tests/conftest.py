"""Shared fixtures: a real Kafka-protocol broker per session, a topic per test.

* ``broker``: the embedded broker of kind ``$KBI_TEST_BROKER`` (default noida),
  started once per session, or the cluster in ``$KAFKA_BOOTSTRAP_SERVERS``
  (kind ``external``). Tests marked ``contract`` run once per broker kind
  (tansu and noida) so the IO code is held to the protocol, not to one server.
* ``make_topic``: creates a uniquely named topic and deletes it afterwards.

Kafka tests are never skipped for want of a broker: if none can be started,
the fixture errors and the run fails.
"""

import os
import re
import uuid
from typing import Optional

import pytest

from beam_jobs import local_broker
from transforms.kafka import admin

pytest_plugins = ['emulators']

EXTERNAL = 'external'


class Broker:
  """What a test needs of a broker: its address, kind and client settings."""

  def __init__(self, kind: str, bootstrap_servers: str, tuning: dict):
    self.kind = kind
    self.bootstrap_servers = bootstrap_servers
    self._tuning = tuning

  def client_config(self, **overrides) -> dict:
    # log_level 2: clients left from earlier tests log every reconnect to a
    # stopped broker at level 3; tests assert on behaviour, not logs.
    cfg = {'bootstrap.servers': self.bootstrap_servers, 'log_level': 2}
    cfg.update(self._tuning)
    cfg.update(overrides)
    return cfg

  def __repr__(self):
    return f'Broker({self.kind}, {self.bootstrap_servers})'


def _default_kind() -> str:
  if os.environ.get('KAFKA_BOOTSTRAP_SERVERS'):
    return EXTERNAL
  kind = os.environ.get('KBI_TEST_BROKER', local_broker.DEFAULT_KIND)
  if kind not in local_broker.KINDS:
    raise pytest.UsageError(
        f'KBI_TEST_BROKER={kind!r}: choose one of {local_broker.KINDS}')
  return kind


def pytest_generate_tests(metafunc):
  if 'broker' not in metafunc.fixturenames:
    return
  if metafunc.definition.get_closest_marker('contract') and (
      _default_kind() != EXTERNAL):
    kinds = list(local_broker.KINDS)
  else:
    kinds = [_default_kind()]
  metafunc.parametrize('broker', kinds, indirect=True)


@pytest.fixture(scope='session')
def _broker_pool(tmp_path_factory):
  started: dict[str, local_broker.BrokerInfo] = {}

  def get(kind: str) -> Broker:
    if kind == EXTERNAL:
      return Broker(EXTERNAL, os.environ['KAFKA_BOOTSTRAP_SERVERS'], {})
    if kind not in started:
      started[kind] = local_broker.start(
          kind, data_dir=str(tmp_path_factory.mktemp(f'broker-{kind}')))
    info = started[kind]
    return Broker(kind, info.bootstrap_servers,
                  local_broker.client_tuning(kind))

  yield get
  for info in started.values():
    local_broker.stop(info)


@pytest.fixture
def broker(request, _broker_pool) -> Broker:
  return _broker_pool(request.param)


@pytest.fixture
def known_broker_bug(request, broker):
  """Marks the running test xfail (strict) on the named broker kinds only.

  Usage: ``known_broker_bug('tansu', 'high watermark is the last batch base')``.
  Strict: if the broker gets fixed, the test fails and the mark must go.
  """

  def mark(kinds, reason: str):
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if broker.kind in kinds:
      request.node.add_marker(
          pytest.mark.xfail(reason=f'{broker.kind}: {reason}', strict=True))

  return mark


@pytest.fixture
def make_topic(request, broker):
  """Factory: ``make_topic(partitions=4)`` -> a new, unique topic name."""
  created = []
  base = re.sub(r'[^A-Za-z0-9]+', '-', request.node.name)[:60].strip('-')

  def make(partitions: int = 4, *, suffix: str = '',
           config: Optional[dict] = None) -> str:
    name = f'{base}{suffix}-{uuid.uuid4().hex[:8]}'
    # Tests produce records with fixed, old timestamps: time-based retention
    # would delete them (noida sweeps by record time; see docs/brokers.md).
    admin.create_topic(broker.client_config(), name, partitions,
                       config={'retention.ms': '-1', **(config or {})})
    created.append(name)
    return name

  yield make
  for name in created:
    try:
      admin.delete_topic(broker.client_config(), name, timeout_s=10)
    except Exception:  # pylint: disable=broad-except
      pass  # the broker may be gone (a test stopped it); nothing to clean
