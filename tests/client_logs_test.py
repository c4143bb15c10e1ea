"""librdkafka's repeated log lines are collapsed into one line with a count."""

import logging
import time

from confluent_kafka.admin import AdminClient

from transforms.kafka import admin, client_logs, reader_core

REFUSED = ('[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect to '
           'ipv4#127.0.0.1:1 failed: Connection refused (after {}ms in state '
           'CONNECT)')


class _Lines(logging.Handler):

  def __init__(self):
    super().__init__()
    self.lines = []

  def emit(self, record):
    self.lines.append((record.levelno, record.getMessage()))


def _log():
  logger = logging.getLogger(f'test-librdkafka-{time.monotonic_ns()}')
  lines = _Lines()
  logger.addHandler(lines)
  logger.propagate = False
  logger.setLevel(logging.DEBUG)
  return client_logs.ClientLog(logger, repeat_interval_s=3600), lines.lines


def test_a_repeated_line_is_logged_once_then_counted():
  log, lines = _log()
  for i in range(575):
    # Client names and elapsed times differ between repeats.
    log.log(logging.ERROR, '%s [%s] %s', 'FAIL', f'rdkafka#producer-{i % 3}',
            REFUSED.format(i % 7))
  log.log(logging.WARNING, '%s [%s] %s', 'REQTMOUT', 'rdkafka#producer-1',
          'Timed out 1 in-flight requests')
  assert len(lines) == 2
  assert lines[0] == (logging.ERROR, 'FAIL: 127.0.0.1:1/bootstrap: Connect to '
                      'ipv4#127.0.0.1:1 failed: Connection refused (after Nms '
                      'in state CONNECT)')
  log.flush()
  assert len(lines) == 3
  level, text = lines[2]
  assert level == logging.ERROR
  assert text.startswith('FAIL: 127.0.0.1:1/bootstrap: Connect to')
  assert 'repeated 574 more times' in text
  log.flush()  # nothing new to report
  assert len(lines) == 3


def test_repeats_are_reported_at_the_interval():
  logger = logging.getLogger('test-librdkafka-interval')
  lines = _Lines()
  logger.addHandler(lines)
  logger.propagate = False
  log = client_logs.ClientLog(logger, repeat_interval_s=0.05)
  log.log(logging.ERROR, '%s [%s] %s', 'FAIL', 'c', 'down')
  log.log(logging.ERROR, '%s [%s] %s', 'FAIL', 'c', 'down')
  time.sleep(0.06)
  log.log(logging.ERROR, '%s [%s] %s', 'FAIL', 'c', 'down')
  assert [t for _, t in lines.lines] == [
      'FAIL: down', 'FAIL: down (repeated 2 more times in 0 s)']


def test_every_client_config_of_the_package_is_routed():
  assert admin.admin_config({'bootstrap.servers': 'b:1'})['logger'] is (
      client_logs.CLIENT_LOG)
  assert reader_core.reader_config({'bootstrap.servers': 'b:1'})['logger'] is (
      client_logs.CLIENT_LOG)
  mine = object()
  assert client_logs.route({'logger': mine})['logger'] is mine


def test_an_unreachable_cluster_gives_a_few_lines_not_hundreds(caplog):
  caplog.set_level(logging.INFO, logger='librdkafka')
  started = time.monotonic()
  try:
    admin.wait_for_cluster({'bootstrap.servers': '127.0.0.1:1'},
                           timeout_s=2)
  except admin.KafkaUnavailableError as e:
    assert 'Check --bootstrap_servers' in str(e)
  else:
    raise AssertionError('no error for an unreachable cluster')
  assert time.monotonic() - started < 10
  lines = [r.getMessage() for r in caplog.records if r.name == 'librdkafka']
  refused = [l for l in lines if 'Connection refused' in l]
  assert 1 <= len(refused) <= 3, lines
  assert any('more times' in l for l in refused), lines


def test_confluent_kafka_calls_the_logger_interface():
  log, lines = _log()
  client = AdminClient({'bootstrap.servers': '127.0.0.1:1', 'logger': log})
  deadline = time.monotonic() + 5
  while not lines and time.monotonic() < deadline:
    try:
      client.list_topics(timeout=0.2)
    except Exception:  # pylint: disable=broad-except
      pass
    client.poll(0)
  assert lines and 'Connection refused' in lines[0][1]
