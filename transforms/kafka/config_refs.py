"""Kafka client settings read where the clients are built, not put in the job.

A job's librdkafka settings travel inside its DoFns (pickled into the job
graph: Dataflow keeps that graph, shows its options and stages it to GCS).
Settings given by reference stay references there and are read on the
worker, in the DoFn's ``setup()``, right before a consumer, producer or admin
client is created:

* ``@PATH``: a properties file of ``KEY=VALUE`` lines (``#`` comments),
  local or any Beam FileSystems path such as ``gs://bucket/client.properties``;
* ``@secret:projects/P/secrets/S/versions/V``: a Secret Manager secret whose
  payload is such lines (``/versions/V`` defaults to ``latest``);
* ``KEY=@secret:projects/P/secrets/S/versions/V``: one setting whose value
  is the secret's payload (e.g. ``sasl.password``).

``parse_entries`` reads file and whole-secret references once on the
launcher, to learn which settings they hold (and to fail before submission
when they are unreadable), and returns each of those settings as a
``DeferredSetting``: a ``str`` whose text is a placeholder naming the
reference (``<sasl.password from gs://b/client.properties>``) and which
pickles as the reference alone. Dict operations on a config (merging,
``setdefault``, overriding) therefore behave exactly as with plain values;
only the values are late. ``resolve(config)`` replaces every deferred value
by its current content; every place in ``transforms.kafka`` (and
``transforms.dedup``) that builds a confluent-kafka client calls it first.

References are re-read at most every ``CACHE_TTL_S`` seconds per process, so
new clients pick up a rotated password without a restart, and runners that
set DoFns up per bundle (the local bundle-based runner) do not read a file
or call Secret Manager per bundle.

Secret Manager is called with ``google-cloud-secret-manager`` (part of
``apache-beam[gcp]``) using the worker's service account, which needs
``roles/secretmanager.secretAccessor`` on the secret. Tests replace
``secret_client_factory`` with a fake client (the service is unreachable
offline).
"""

import logging
import re
import threading
import time
from typing import Any, Callable, Mapping, Optional

from transforms import redact

_LOGGER = logging.getLogger(__name__)

SECRET_PREFIX = 'secret:'
CACHE_TTL_S = 300.0

_SECRET_NAME_RE = re.compile(
    r'^projects/[^/\s]+/secrets/[^/\s]+(/versions/[^/\s]+)?$')


def secret_version_name(ref: str) -> str:
  """``secret:projects/P/secrets/S[/versions/V]`` -> the version's name.

  Raises:
    ValueError: not a Secret Manager reference of that form.
  """
  if not ref.startswith(SECRET_PREFIX):
    raise ValueError(f'{ref!r} is not a {SECRET_PREFIX} reference')
  name = ref[len(SECRET_PREFIX):]
  if not _SECRET_NAME_RE.match(name):
    raise ValueError(
        f'{ref!r}: expected secret:projects/PROJECT/secrets/NAME[/versions/'
        f'VERSION] (VERSION a number or latest)')
  if '/versions/' not in name:
    name += '/versions/latest'
  return name


def is_local_path(ref: str) -> bool:
  """True for a reference only the launcher's machine can read."""
  return not ref.startswith(SECRET_PREFIX) and '://' not in ref


class DeferredSetting(str):
  """A setting's value held as a reference (see the module docstring).

  The string itself is a placeholder that names the reference; ``ref`` is
  the reference (a path or ``secret:...``) and ``key`` the setting to take
  from the properties it holds, or None when the whole payload is the value.
  Pickles as (ref, key): the value never enters a pickle.
  """

  ref: str
  key: Optional[str]

  def __new__(cls, ref: str, key: Optional[str] = None):
    text = f'<{key} from {ref}>' if key else f'<value of {ref}>'
    self = super().__new__(cls, text)
    self.ref = ref
    self.key = key
    return self

  def __reduce__(self):
    return (DeferredSetting, (self.ref, self.key))

  def __repr__(self):
    return f'DeferredSetting({self.ref!r}, {self.key!r})'


def parse_properties(text: str, source: str) -> dict[str, str]:
  """``KEY=VALUE`` lines (blank lines and ``#`` comments skipped)."""
  out = {}
  for number, line in enumerate(text.splitlines(), 1):
    line = line.strip()
    if not line or line.startswith('#'):
      continue
    if '=' not in line:
      # The line is not echoed: it may hold a secret.
      raise ValueError(f'{source} line {number}: expected KEY=VALUE')
    key, value = line.split('=', 1)
    out[key.strip()] = value.strip()
  return out


def _default_secret_client():
  from google.cloud import secretmanager  # pylint: disable=import-outside-toplevel
  return secretmanager.SecretManagerServiceClient()


# Builds the Secret Manager client (once per process); tests replace it with
# a function returning a fake that has ``access_secret_version``.
secret_client_factory: Callable[[], Any] = _default_secret_client

_cache: dict[str, tuple[float, bytes]] = {}
_cache_lock = threading.Lock()
_client = None
_client_factory_used = None


def _secret_client():
  global _client, _client_factory_used  # pylint: disable=global-statement
  if _client is None or _client_factory_used is not secret_client_factory:
    _client = secret_client_factory()
    _client_factory_used = secret_client_factory
  return _client


def _access_secret(ref: str) -> bytes:
  name = secret_version_name(ref)
  response = _secret_client().access_secret_version(request={'name': name})
  data = response.payload.data
  expected = getattr(response.payload, 'data_crc32c', None)
  if expected:
    import google_crc32c  # pylint: disable=import-outside-toplevel
    if google_crc32c.value(data) != int(expected):
      raise ValueError(f'{ref}: payload failed its CRC32C check')
  return data


def read_reference(ref: str, *, max_age_s: float = CACHE_TTL_S) -> bytes:
  """The content of a file path or ``secret:`` reference (cached).

  Raises:
    ValueError: unreadable (the message names the reference, never content).
  """
  now = time.monotonic()
  with _cache_lock:
    hit = _cache.get(ref)
    if hit is not None and now - hit[0] < max_age_s:
      return hit[1]
  try:
    if ref.startswith(SECRET_PREFIX):
      data = _access_secret(ref)
    else:
      from apache_beam.io.filesystems import FileSystems  # pylint: disable=import-outside-toplevel
      with FileSystems.open(ref) as f:
        data = f.read()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'cannot read {ref}: {type(e).__name__}: {e}') from e
  with _cache_lock:
    _cache[ref] = (now, data)
  _LOGGER.debug('kafka config: read %s (%d bytes)', ref, len(data))
  return data


def read_properties(ref: str, *, max_age_s: float = CACHE_TTL_S
                   ) -> dict[str, str]:
  """The ``KEY=VALUE`` settings held by a file or ``secret:`` reference."""
  data = read_reference(ref, max_age_s=max_age_s)
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{ref}: not UTF-8 text') from e
  return parse_properties(text, ref)


def clear_cache() -> None:
  with _cache_lock:
    _cache.clear()


def parse_entries(entries, *, defer: bool = True) -> dict:
  """``--kafka_config`` entries as a librdkafka dict, later entries winning.

  ``@REF`` entries are read now (the keys they hold become deferred
  settings); ``KEY=@secret:...`` values are not read now. With
  ``defer=False`` every value is resolved now instead (for in-process
  clients such as CLIs).

  Raises:
    ValueError: a malformed entry or an unreadable reference.
  """
  out: dict[str, Any] = {}
  for entry in entries or []:
    entry = entry.strip()
    if entry.startswith('@'):
      ref = entry[1:]
      if ref.startswith(SECRET_PREFIX):
        secret_version_name(ref)
      try:
        settings = read_properties(ref)
      except ValueError as e:
        raise ValueError(f'--kafka_config {entry}: {e}') from None
      for key in settings:
        out[key] = DeferredSetting(ref, key)
      continue
    if '=' not in entry:
      # Masked: 'sasl.password:x' is a secret with the wrong separator.
      raise ValueError(f'--kafka_config {redact.mask_arg(entry)!r}: expected '
                       f'KEY=VALUE')
    key, value = (s.strip() for s in entry.split('=', 1))
    if value.startswith('@' + SECRET_PREFIX):
      try:
        secret_version_name(value[1:])
      except ValueError as e:
        raise ValueError(f'--kafka_config {key}: {e}') from None
      out[key] = DeferredSetting(value[1:])
    else:
      out[key] = value
  return out if defer else resolve(out)


def deferred(config: Mapping[str, Any]) -> dict[str, 'DeferredSetting']:
  """The deferred settings of ``config``."""
  return {k: v for k, v in config.items() if isinstance(v, DeferredSetting)}


def resolve(config: Mapping[str, Any]) -> dict:
  """A copy of ``config`` with every deferred value read from its reference.

  Cheap for configs without references (a scan of the values).

  Raises:
    ValueError: a reference is unreadable or no longer holds its key.
  """
  out = dict(config)
  for key, value in deferred(config).items():
    if value.key is None:
      data = read_reference(value.ref)
      try:
        out[key] = data.decode('utf-8').strip()
      except UnicodeDecodeError as e:
        raise ValueError(f'{value.ref}: not UTF-8 text') from e
      continue
    settings = read_properties(value.ref)
    if value.key not in settings:
      raise ValueError(f'kafka config: {value.ref} no longer holds '
                       f'{value.key!r}')
    out[key] = settings[value.key]
  return out


__all__ = ['CACHE_TTL_S', 'DeferredSetting', 'SECRET_PREFIX', 'clear_cache',
           'deferred', 'is_local_path', 'parse_entries', 'parse_properties',
           'read_properties', 'read_reference', 'resolve',
           'secret_client_factory', 'secret_version_name']
