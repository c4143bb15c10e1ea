"""librdkafka's log lines through Python logging, repeats collapsed.

Left alone, librdkafka prints every log line to stderr itself: a client
pointed at a wrong ``--bootstrap_servers`` prints "Connection refused" about
20 times a second until the job's 30 s preflight gives up (~575 lines before
the one error that says what is wrong). Every client this package builds
gets ``route(config)``: its lines go to the ``librdkafka`` Python logger
(so ``--log_level`` and the handlers apply), and a line that repeats is
logged once, then as one line with a count when it has repeated for
``REPEAT_INTERVAL_S`` seconds or when ``flush()`` is called (a failed
preflight, process exit).

confluent-kafka hands log lines over in ``poll()`` (consumers and producers
poll anyway; admin clients must be polled: transforms/kafka/admin.py does).
A ``logger`` set in the config wins.
"""

import atexit
import logging
import re
import threading
import time
from typing import Any, Mapping

_LOGGER = logging.getLogger('librdkafka')

REPEAT_INTERVAL_S = 60.0

# The parts of a line that differ between repeats of the same condition:
# the thread tag, elapsed times, librdkafka's own "N identical error(s)".
_VOLATILE = (
    (re.compile(r'^\[thrd:[^\]]*\]:\s*'), ''),
    (re.compile(r'\b\d+ms\b'), 'Nms'),
    (re.compile(r'\b\d+ identical error'), 'N identical error'),
)


def _normalized(message: str) -> str:
  for pattern, replacement in _VOLATILE:
    message = pattern.sub(replacement, message)
  return message


class _Repeats:
  __slots__ = ('level', 'text', 'count', 'since')

  def __init__(self, level: int, text: str, now: float):
    self.level = level
    self.text = text
    self.count = 0
    self.since = now


class ClientLog:
  """The ``logger`` confluent-kafka clients are given (thread-safe).

  confluent-kafka calls ``log(level, '%s [%s] %s', facility, client name,
  message)`` with a Python logging level.
  """

  def __init__(self, logger: logging.Logger = _LOGGER, *,
               repeat_interval_s: float = REPEAT_INTERVAL_S):
    self._logger = logger
    self._interval_s = repeat_interval_s
    self._lock = threading.Lock()
    self._seen: dict[tuple, _Repeats] = {}

  def log(self, level: int, unused_fmt: str, *args: Any) -> None:
    facility, message = (args[0], args[-1]) if len(args) >= 2 else (
        '', ' '.join(str(a) for a in args))
    text = f'{facility}: {_normalized(str(message))}'
    key = (level, text)
    now = time.monotonic()
    with self._lock:
      repeats = self._seen.get(key)
      if repeats is None:
        self._seen[key] = _Repeats(level, text, now)
        emit = text
      else:
        repeats.count += 1
        if now - repeats.since < self._interval_s:
          return
        emit = self._summary(repeats, now)
    self._logger.log(level, '%s', emit)

  def _summary(self, repeats: _Repeats, now: float) -> str:
    text = (f'{repeats.text} (repeated {repeats.count} more times in '
            f'{now - repeats.since:.0f} s)')
    repeats.count = 0
    repeats.since = now
    return text

  def flush(self) -> None:
    """Logs the count of every line that repeated since it was last logged."""
    now = time.monotonic()
    with self._lock:
      pending = [(r.level, self._summary(r, now))
                 for r in self._seen.values() if r.count]
    for level, text in pending:
      self._logger.log(level, '%s', text)


# One per process: every client's repeats are counted together (a preflight
# builds several admin clients against the same unreachable brokers).
CLIENT_LOG = ClientLog()
atexit.register(CLIENT_LOG.flush)


def route(config: Mapping[str, Any]) -> dict:
  """A copy of a client config whose log lines go to CLIENT_LOG."""
  out = dict(config)
  if 'logger' not in out:
    out['logger'] = CLIENT_LOG
  return out


def flush() -> None:
  CLIENT_LOG.flush()


__all__ = ['CLIENT_LOG', 'ClientLog', 'flush', 'route']
