"""Pytest plugin: GCS and BigQuery emulators, and a guard against Google.

Loaded from conftest.py (``pytest_plugins = ['emulators']``).

* ``gcs_emulator`` (session): ``gcp-storage-emulator`` from this venv, on a
  free port, files in a temporary directory (the BigQuery emulator reads load
  files from there). Points Beam and google-cloud-storage at it
  (STORAGE_EMULATOR_HOST, NO_GCE_CHECK=true, no GOOGLE_APPLICATION_CREDENTIALS,
  an empty CLOUDSDK_CONFIG so a developer's gcloud login is not used) and
  skips Beam's ~20 s credential lookup. Yields a ``GcsEmulator`` with a fresh
  bucket.
* ``bq_emulator`` (session): ``bqemulator`` from its own venv
  (``.venv-bqemu``, made by ``scripts/ensure_bq_emulator.sh``, which
  ``run_tests.sh`` runs) through ``scripts/bq_emulator_launcher.py``, with
  ``BQEMU_GCS_LOCAL_ROOT`` on the GCS emulator's files so load jobs read what
  Beam wrote to gs://. Yields a ``BqEmulator`` with a project and dataset.
  Stubs Beam's lookup of a Dataflow job id on the GCE metadata server (file
  loads do it to label load jobs), which the guard would otherwise catch.
* A guard, active for tests marked ``gcp`` and for every test of the sink
  test modules: any attempt to resolve or connect to a Google endpoint
  (*.googleapis.com, *.google.com, metadata.google.internal, 169.254.169.254)
  is blocked (OSError) and recorded, and the test FAILS even if the code
  under test swallowed the error. It patches Python's socket module, so it
  sees every Python HTTP stack (requests, httplib2, http.client, asyncio);
  gRPC's C core resolves names itself and is not seen (nothing here uses
  gRPC towards Google).

Emulators that cannot start fail the tests that need them; they are never
skipped.
"""

import dataclasses
import ipaddress
import os
import pathlib
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
BQ_VENV = pathlib.Path(os.environ.get('KBI_BQEMU_VENV', REPO / '.venv-bqemu'))
BQ_LAUNCHER = REPO / 'scripts' / 'bq_emulator_launcher.py'
BQ_PROJECT = 'kbi-test'
_START_TIMEOUT_S = 60.0

# Test modules whose every test runs under the guard.
GUARDED_MODULES = frozenset({'sinks_files_test.py', 'sinks_bigquery_test.py',
                             'sinks_emulator_it_test.py'})


# --- Guard against real Google endpoints ---------------------------------------

_BLOCKED_DOMAINS = ('googleapis.com', 'google.com', 'metadata.google.internal',
                    'googleusercontent.com', 'gcr.io', 'pkg.dev')
_BLOCKED_HOSTS = frozenset({'metadata', 'metadata.google.internal'})
_BLOCKED_IPS = frozenset({ipaddress.ip_address('169.254.169.254'),
                          ipaddress.ip_address('fd20:ce::254')})


class GoogleEndpointBlocked(OSError):
  """Raised instead of a connection to a real Google endpoint."""


def is_google_endpoint(host) -> bool:
  if isinstance(host, bytes):
    host = host.decode('ascii', 'replace')
  if not isinstance(host, str) or not host:
    return False
  host = host.strip('[]').rstrip('.').lower()
  try:
    return ipaddress.ip_address(host.split('%')[0]) in _BLOCKED_IPS
  except ValueError:
    pass
  return host in _BLOCKED_HOSTS or any(
      host == d or host.endswith('.' + d) for d in _BLOCKED_DOMAINS)


class GoogleEndpointGuard:
  """Blocks and records name lookups and connections to Google endpoints.

  Use as a context manager; ``attempts`` lists (function, host, port).
  """

  def __init__(self):
    self.attempts: list[tuple[str, str, object]] = []
    self._saved = None

  def _check(self, what, host, port):
    if is_google_endpoint(host):
      self.attempts.append((what, str(host), port))
      raise GoogleEndpointBlocked(
          f'test guard: {what}({host}:{port}) blocked: tests must not reach '
          'real Google endpoints')

  def install(self):
    if self._saved is not None:
      return
    guard = self
    real = {'getaddrinfo': socket.getaddrinfo,
            'create_connection': socket.create_connection,
            'connect': socket.socket.connect,
            'connect_ex': socket.socket.connect_ex}
    self._saved = real

    def getaddrinfo(host, port, *args, **kwargs):
      guard._check('getaddrinfo', host, port)
      return real['getaddrinfo'](host, port, *args, **kwargs)

    def create_connection(address, *args, **kwargs):
      guard._check('create_connection', address[0], address[1])
      return real['create_connection'](address, *args, **kwargs)

    def connect(sock, address):
      if isinstance(address, tuple):
        guard._check('connect', address[0], address[1])
      return real['connect'](sock, address)

    def connect_ex(sock, address):
      if isinstance(address, tuple):
        guard._check('connect_ex', address[0], address[1])
      return real['connect_ex'](sock, address)

    socket.getaddrinfo = getaddrinfo
    socket.create_connection = create_connection
    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex

  def uninstall(self):
    if self._saved is None:
      return
    socket.getaddrinfo = self._saved['getaddrinfo']
    socket.create_connection = self._saved['create_connection']
    socket.socket.connect = self._saved['connect']
    socket.socket.connect_ex = self._saved['connect_ex']
    self._saved = None

  def __enter__(self):
    self.install()
    return self

  def __exit__(self, *exc):
    self.uninstall()
    return False


_GUARD = pytest.StashKey[GoogleEndpointGuard]()


def _guarded(item) -> bool:
  return (item.get_closest_marker('gcp') is not None or
          pathlib.Path(str(item.fspath)).name in GUARDED_MODULES)


@pytest.fixture(autouse=True)
def _no_real_google_endpoints(request):
  if not _guarded(request.node):
    yield None
    return
  guard = GoogleEndpointGuard()
  request.node.stash[_GUARD] = guard
  with guard:
    yield guard


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
  try:
    return (yield)
  finally:
    guard = item.stash.get(_GUARD, None)
    if guard is not None and guard.attempts:
      pytest.fail('the test tried to reach real Google endpoints: ' +
                  ', '.join(f'{w}({h}:{p})' for w, h, p in guard.attempts),
                  pytrace=False)


# --- Process helpers --------------------------------------------------------------

def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: pathlib.Path,
               what: str, timeout_s: float = _START_TIMEOUT_S) -> None:
  deadline = time.monotonic() + timeout_s
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise RuntimeError(f'{what} exited with {proc.returncode} at start; '
                         f'log {log}:\n{_tail(log)}')
    try:
      with urllib.request.urlopen(url, timeout=2) as r:
        if r.status == 200:
          return
    except OSError:
      pass
    time.sleep(0.05)
  raise RuntimeError(f'{what} did not answer {url} within {timeout_s} s; '
                     f'log {log}:\n{_tail(log)}')


def _tail(log: pathlib.Path, lines: int = 30) -> str:
  try:
    return '\n'.join(log.read_text(errors='replace').splitlines()[-lines:])
  except OSError:
    return '(no log)'


def _stop(proc: subprocess.Popen) -> None:
  if proc.poll() is None:
    proc.terminate()
    try:
      proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      proc.kill()
      proc.wait(timeout=10)


def _child_env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items()
         if k not in ('PYTHONPATH', 'VIRTUAL_ENV', 'PYTHONHOME')}
  env.update(extra)
  return env


# --- GCS ----------------------------------------------------------------------------

@dataclasses.dataclass
class GcsEmulator:
  endpoint: str         # http://127.0.0.1:PORT (STORAGE_EMULATOR_HOST)
  bucket: str           # created for this session
  local_root: str       # <data dir>/.cloudstorage: objects as files

  def url(self, *parts: str) -> str:
    """gs://<bucket>/<parts...> under a unique prefix per call site."""
    return '/'.join([f'gs://{self.bucket}', *parts])

  def unique_prefix(self, name: str) -> str:
    return self.url(f'{name}-{uuid.uuid4().hex[:8]}')


@pytest.fixture(scope='session')
def gcs_emulator(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('gcs-emulator')
  log = data_dir.parent / f'{data_dir.name}.log'
  port = free_port()
  with open(log, 'wb') as out:
    proc = subprocess.Popen(
        [sys.executable, '-m', 'gcp_storage_emulator', '-d', str(data_dir),
         'start', '--host', '127.0.0.1', '--port', str(port)],
        stdout=out, stderr=subprocess.STDOUT, env=_child_env())
  endpoint = f'http://127.0.0.1:{port}'
  mp = pytest.MonkeyPatch()
  try:
    _wait_http(f'{endpoint}/storage/v1/b', proc, log, 'gcp-storage-emulator')
    mp.setenv('STORAGE_EMULATOR_HOST', endpoint)
    mp.setenv('NO_GCE_CHECK', 'true')  # lowercase: google-auth compares it
    mp.delenv('GOOGLE_APPLICATION_CREDENTIALS', raising=False)
    mp.setenv('CLOUDSDK_CONFIG', str(tmp_path_factory.mktemp('no-gcloud')))
    mp.setenv('GOOGLE_CLOUD_PROJECT', BQ_PROJECT)
    # Beam looks for credentials once per process, retrying for ~20 s when
    # there are none. Private Beam API (2.77): mark the lookup done.
    from apache_beam.internal.gcp import auth
    mp.setattr(auth._Credentials, '_credentials_init', True)  # pylint: disable=protected-access
    mp.setattr(auth._Credentials, '_credentials', None)  # pylint: disable=protected-access
    from google.cloud import storage
    client = storage.Client.create_anonymous_client()
    client.project = BQ_PROJECT
    bucket = f'kbi-test-{uuid.uuid4().hex[:8]}'
    client.create_bucket(bucket)
    yield GcsEmulator(endpoint, bucket, str(data_dir / '.cloudstorage'))
  finally:
    mp.undo()
    _stop(proc)


# --- BigQuery -------------------------------------------------------------------------

@dataclasses.dataclass
class BqEmulator:
  endpoint: str         # http://127.0.0.1:PORT (REST)
  project: str
  dataset: str          # created for this session

  def client(self):
    """A google-cloud-bigquery client on the emulator (anonymous)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import bigquery
    return bigquery.Client(project=self.project,
                           credentials=AnonymousCredentials(),
                           client_options={'api_endpoint': self.endpoint})

  def table(self, name: str) -> str:
    """PROJECT:DATASET.<name>-unique, for Beam."""
    return f'{self.project}:{self.dataset}.{name}_{uuid.uuid4().hex[:8]}'

  def query_rows(self, table: str) -> list[dict]:
    """Every row of PROJECT:DATASET.TABLE, via REST (no Storage API)."""
    ref = table.replace(':', '.')
    job = self.client().query(f'SELECT * FROM `{ref}`')
    return [dict(r.items()) for r in job.result()]


def bq_emulator_python() -> pathlib.Path:
  return BQ_VENV / 'bin' / 'python'


@pytest.fixture(scope='session')
def bq_emulator(gcs_emulator, tmp_path_factory):
  python = bq_emulator_python()
  if not python.exists():
    pytest.fail(f'{python} is missing: run scripts/ensure_bq_emulator.sh '
                '(run_tests.sh does)', pytrace=False)
  work = tmp_path_factory.mktemp('bq-emulator')
  log = work / 'bqemulator.log'
  rest, grpc = free_port(), free_port()
  env = _child_env(BQEMU_GCS_LOCAL_ROOT=gcs_emulator.local_root,
                   BQEMU_LOG_LEVEL='warning', KBI_BQEMU_OFFLINE='1')
  with open(log, 'wb') as out:
    proc = subprocess.Popen(
        [str(python), str(BQ_LAUNCHER), '--rest-port', str(rest),
         '--grpc-port', str(grpc), '--project', BQ_PROJECT],
        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(work))
  mp = pytest.MonkeyPatch()
  try:
    endpoint = f'http://127.0.0.1:{rest}'
    _wait_http(f'{endpoint}/readyz', proc, log, 'bqemulator')
    # Beam's BigQuery file loads ask the GCE metadata server (http://metadata/)
    # for a Dataflow job id to label jobs with; off GCE that is a failed
    # lookup (up to 5 s) and, here, a real Google endpoint: not on Dataflow.
    from apache_beam.io.gcp import gce_metadata_util
    mp.setattr(gce_metadata_util, 'fetch_dataflow_job_id', lambda: '')
    emu = BqEmulator(endpoint, BQ_PROJECT, f'kbi_{uuid.uuid4().hex[:8]}')
    emu.client().create_dataset(emu.dataset)
    yield emu
  finally:
    mp.undo()
    _stop(proc)
