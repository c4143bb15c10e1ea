"""Which consumer errors end a read, and which librdkafka recovers from.

librdkafka reports many conditions to consumers as error events although it
recovers from them itself: a broker connection lost (``_TRANSPORT``), all
brokers down during a restart (``_ALL_BROKERS_DOWN``), a request timed out.
Failing the read on those would turn a broker restart into a job failure.
Fatal errors (``err.fatal()``) and conditions that do not heal by waiting
(authentication, authorization, a topic or partition that does not exist)
end the read with a clear error instead.
"""

import logging
import time

from confluent_kafka import KafkaError

_LOGGER = logging.getLogger(__name__)

PERMANENT_CODES = frozenset(
    getattr(KafkaError, name) for name in (
        '_AUTHENTICATION', 'SASL_AUTHENTICATION_FAILED', '_SSL',
        'TOPIC_AUTHORIZATION_FAILED', 'GROUP_AUTHORIZATION_FAILED',
        'CLUSTER_AUTHORIZATION_FAILED', '_UNKNOWN_TOPIC',
        'UNKNOWN_TOPIC_OR_PART', '_UNKNOWN_PARTITION', '_INVALID_ARG',
        '_FATAL') if hasattr(KafkaError, name))


def is_recoverable(err: KafkaError) -> bool:
  """True for consumer errors librdkafka recovers from on its own."""
  return not err.fatal() and err.code() not in PERMANENT_CODES


class RecoverableErrorLog:
  """Logs recoverable consumer errors at most once per interval."""

  def __init__(self, interval_s: float = 10.0):
    self._interval_s = interval_s
    self._last = 0.0
    self._suppressed = 0

  def log(self, err: KafkaError) -> None:
    now = time.monotonic()
    if now - self._last < self._interval_s:
      self._suppressed += 1
      return
    _LOGGER.warning('Kafka consumer: %s (librdkafka retries; %d similar '
                    'message(s) suppressed)', err.str(), self._suppressed)
    self._last = now
    self._suppressed = 0
