"""Deployment records: what serves, as data (docs/operating_models.md).

A deployment record names the versions of ``--model_dir`` that a running
scoring job serves, and in which role:

* ``primary``: scores every event (its score is the prediction);
* ``canary`` with ``canary_fraction``: scores the events whose key hashes
  into that fraction instead of the primary (models/routing.py: the same
  key always goes to the same version while the canary lasts);
* ``shadow``: scores every event too; its score is written beside the
  primary's and never replaces it.

Records are JSON objects published to a compacted Kafka control topic keyed
by the deployment name (models/control_topic.py); the latest record of a key
is what serves, the records before it are the audit log. Each record also
says who changed what, when and why (``actor``, ``action``, ``reason``,
``updated_at``), the promotion gate's numbers when a gate ran (``gate``),
and the record it replaced (``previous``, without that record's own
``previous``, so records stay small while ``rollback`` still has one step
back after compaction).

This module owns the record type, its JSON encoding and its validation
against a model directory (versions exist and are complete, by
models/versions.py's one rule). It imports neither Kafka, Beam nor TensorFlow.
"""

import dataclasses
import datetime
import getpass
import json
import math
import socket
from typing import Any, Mapping, Optional

from models import versions as versions_lib
from transforms.events import CANARY_ROLE, PRIMARY_ROLE, SHADOW_ROLE

DEFAULT_DEPLOYMENT = 'default'
# The record format; a reader refuses a record of a newer format.
FORMAT = 1

# What changed the deployment (the ``action`` field).
PROMOTE = 'promote'
CANARY = 'canary'
SHADOW = 'shadow'
ROLLBACK = 'rollback'
PIN = 'pin'
GUARD_ROLLBACK = 'guard_rollback'
ACTIONS = (PROMOTE, CANARY, SHADOW, ROLLBACK, PIN, GUARD_ROLLBACK)

# The roles a version can have, as written in prediction rows.
PRIMARY = PRIMARY_ROLE
ROLES = (PRIMARY_ROLE, CANARY_ROLE, SHADOW_ROLE)

# A deployment name is a Kafka record key and appears in metric names.
_MAX_NAME = 200


class DeploymentError(ValueError):
  """A record that is malformed, or names versions that cannot serve."""


def _version(value: Any, field: str, *, optional: bool) -> Optional[int]:
  if value is None and optional:
    return None
  if isinstance(value, bool) or not isinstance(value, int) or value < 0:
    raise DeploymentError(f'{field} must be a version number (an integer '
                          f'>= 0), got {value!r}')
  return value


def now_iso(when: Optional[float] = None) -> str:
  """``when`` (epoch seconds; default now) as ISO-8601 UTC, to the ms."""
  moment = (datetime.datetime.now(datetime.timezone.utc) if when is None else
            datetime.datetime.fromtimestamp(when, datetime.timezone.utc))
  return moment.isoformat(timespec='milliseconds').replace('+00:00', 'Z')


def default_actor() -> str:
  """``user@host`` of this process, for the ``actor`` field."""
  try:
    user = getpass.getuser()
  except Exception:  # pylint: disable=broad-except
    user = 'unknown'
  return f'{user}@{socket.gethostname()}'


@dataclasses.dataclass(frozen=True)
class Deployment:
  """One deployment record (module docstring).

  Attributes:
    deployment: the name (the control topic's record key).
    primary: the version that scores every event not routed to the canary.
    canary: a version scoring ``canary_fraction`` of the keys, or None.
    canary_fraction: in (0, 1] with a canary, 0 without.
    shadow: a version scoring every event beside the primary, or None.
    action: what made this record (ACTIONS).
    updated_at: when it was published, ISO-8601 UTC.
    actor: who published it (user@host, or the guard).
    reason: why, free text.
    gate: the promotion gate's decision and numbers, when one ran
      (models/gate.py), or the guard's numbers for a guard rollback.
    previous: the record this one replaced, as a dict without its own
      ``previous``; None for the first record.
  """
  deployment: str
  primary: int
  canary: Optional[int] = None
  canary_fraction: float = 0.0
  shadow: Optional[int] = None
  action: str = PIN
  updated_at: str = ''
  actor: str = ''
  reason: str = ''
  gate: Optional[dict] = None
  previous: Optional[dict] = None

  def __post_init__(self):
    name = self.deployment
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME:
      raise DeploymentError(f'deployment name must be 1-{_MAX_NAME} '
                            f'characters, got {name!r}')
    _version(self.primary, 'primary', optional=False)
    _version(self.canary, 'canary', optional=True)
    _version(self.shadow, 'shadow', optional=True)
    fraction = self.canary_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
      raise DeploymentError(f'canary_fraction must be a number, got '
                            f'{fraction!r}')
    if self.canary is None:
      if fraction != 0:
        raise DeploymentError('canary_fraction without a canary version')
    else:
      if not (math.isfinite(fraction) and 0 < fraction <= 1):
        raise DeploymentError(f'canary_fraction must be in (0, 1], got '
                              f'{fraction!r}')
      if self.canary == self.primary:
        raise DeploymentError(f'version {self.canary} cannot be both '
                              f'primary and canary')
    if self.shadow is not None and self.shadow == self.primary:
      raise DeploymentError(f'version {self.shadow} cannot be both primary '
                            f'and shadow')
    if self.action not in ACTIONS:
      raise DeploymentError(f'action must be one of {ACTIONS}, got '
                            f'{self.action!r}')

  def serving(self) -> tuple:
    """What scores, as a comparable value: (primary, canary, fraction,
    shadow). Two records with the same ``serving()`` serve the same."""
    return (self.primary, self.canary,
            float(self.canary_fraction) if self.canary is not None else 0.0,
            self.shadow)

  def versions(self) -> list[int]:
    """The versions this record serves, primary first."""
    return [v for v in (self.primary, self.canary, self.shadow)
            if v is not None]

  def role_of(self, version: int) -> Optional[str]:
    """The role of ``version`` here, or None."""
    for role, v in ((PRIMARY, self.primary), (CANARY_ROLE, self.canary),
                    (SHADOW_ROLE, self.shadow)):
      if v == version:
        return role
    return None

  def describe(self) -> str:
    """One line: ``primary 3, canary 4 (10%), shadow 5``."""
    parts = [f'primary {self.primary}']
    if self.canary is not None:
      parts.append(f'canary {self.canary} ({self.canary_fraction:.0%})')
    if self.shadow is not None:
      parts.append(f'shadow {self.shadow}')
    return ', '.join(parts)

  def to_dict(self, *, with_previous: bool = True) -> dict:
    out = dataclasses.asdict(self)
    out['format'] = FORMAT
    if not with_previous:
      out.pop('previous')
    return out

  def successor(self, **changes) -> 'Deployment':
    """A new record replacing this one: ``changes`` applied, ``previous``
    set to this record (without its own previous), gate reset unless
    given."""
    changes.setdefault('gate', None)
    changes['previous'] = self.to_dict(with_previous=False)
    return dataclasses.replace(self, **changes)


def encode(record: Deployment) -> bytes:
  """The record as the control topic's value (UTF-8 JSON)."""
  return json.dumps(record.to_dict(), sort_keys=True,
                    separators=(',', ':')).encode('utf-8')


def from_dict(doc: Mapping[str, Any]) -> Deployment:
  """A Deployment from its dict form; DeploymentError if malformed."""
  if not isinstance(doc, Mapping):
    raise DeploymentError(f'a deployment record is a JSON object, got '
                          f'{type(doc).__name__}')
  fmt = doc.get('format', FORMAT)
  if not isinstance(fmt, int) or fmt > FORMAT:
    raise DeploymentError(f'record format {fmt!r} is newer than this '
                          f'code\'s ({FORMAT}): upgrade the reader')
  fields = {f.name for f in dataclasses.fields(Deployment)}
  unknown = set(doc) - fields - {'format'}
  if unknown:
    raise DeploymentError(f'unknown fields {sorted(unknown)}')
  for required in ('deployment', 'primary'):
    if required not in doc:
      raise DeploymentError(f'field {required!r} is missing')
  kwargs = {k: v for k, v in doc.items() if k in fields}
  for name in ('gate', 'previous'):
    if kwargs.get(name) is not None and not isinstance(kwargs[name], dict):
      raise DeploymentError(f'{name} must be an object or null')
  for name in ('updated_at', 'actor', 'reason'):
    if not isinstance(kwargs.get(name, ''), str):
      raise DeploymentError(f'{name} must be a string')
  try:
    return Deployment(**kwargs)
  except TypeError as e:
    raise DeploymentError(str(e)) from e


def decode(value: Optional[bytes]) -> Optional[Deployment]:
  """A control topic value -> Deployment (None for a tombstone).

  Raises:
    DeploymentError: not JSON, or not a valid record.
  """
  if value is None:
    return None
  try:
    doc = json.loads(value)
  except (UnicodeDecodeError, ValueError) as e:
    raise DeploymentError(f'not a JSON record: {e}') from e
  return from_dict(doc)


def check_versions(record: Deployment, model_dir: str) -> None:
  """Every version of ``record`` is complete under ``model_dir``
  (models/versions.py); DeploymentError naming the first that is not."""
  complete = set(versions_lib.list_versions(model_dir))
  for role, version in ((PRIMARY, record.primary),
                        (CANARY_ROLE, record.canary),
                        (SHADOW_ROLE, record.shadow)):
    if version is not None:
      check_version(model_dir, version, role=role, complete=complete)


def check_version(model_dir: str, version: int, *, role: str = 'version',
                  complete: Optional[set] = None) -> None:
  """DeploymentError unless ``version`` is complete under ``model_dir``,
  saying whether it is missing or incomplete."""
  if complete is None:
    complete = set(versions_lib.list_versions(model_dir))
  if version in complete:
    return
  path = versions_lib.version_dir(model_dir, version)
  if versions_lib.exists(path):
    raise DeploymentError(
        f'{role} {version}: {path} is not a complete version (it needs '
        f'saved_model.pb, variables/variables.index and '
        f'{versions_lib.METRICS_FILE}; an export still running or one that '
        f'failed)')
  known = sorted(complete)
  raise DeploymentError(f'{role} {version}: no version {version} under '
                        f'{model_dir} (complete versions: {known or "none"})')


__all__ = ['ACTIONS', 'CANARY', 'CANARY_ROLE', 'DEFAULT_DEPLOYMENT',
           'Deployment', 'DeploymentError', 'GUARD_ROLLBACK', 'PIN',
           'PRIMARY', 'PROMOTE', 'ROLES', 'ROLLBACK', 'SHADOW', 'SHADOW_ROLE',
           'check_version', 'check_versions', 'decode', 'default_actor',
           'encode', 'from_dict', 'now_iso']
