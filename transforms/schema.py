"""Event schemas: which fields an event has and what each one is for.

A schema file (JSON or YAML) lets users score their own event type without
code changes::

  {
    "name": "orders",
    "fields": [
      {"name": "order_id", "type": "string"},
      {"name": "ts", "type": "timestamp"},
      {"name": "store", "type": "string"},
      {"name": "amount", "type": "float"},
      {"name": "items", "type": "int"},
      {"name": "fraud", "type": "int", "required": false}
    ],
    "id_field": "order_id", "time_field": "ts", "key_field": "store",
    "label_field": "fraud",
    "features": ["amount", "items"],
    "window_features": ["amount"]
  }

Field types: string, int, float, bool, timestamp (epoch seconds, epoch
milliseconds or an ISO-8601 string; ``time_unit`` picks, default auto).
``id_field``/``time_field``/``key_field`` may be null: the id is then derived
from the record's position (topic/partition/offset or file/line), the event
time is the Kafka record timestamp (or the file's default time), and all
events share one key. ``extra_fields``: "reject" (default: a dead letter) or
"ignore". ``csv_columns`` gives the CSV column order (default: field order),
``avro_schema`` the Avro writer schema for ``--input_format=avro``.
"""

import dataclasses
import datetime
import json
import os
from typing import Any, Mapping, Optional, Sequence

FIELD_TYPES = ('string', 'int', 'float', 'bool', 'timestamp')
TIME_UNITS = ('auto', 's', 'ms', 'iso')
EXTRA_FIELD_POLICIES = ('reject', 'ignore')

# Event times outside [MIN_EVENT_TIME, now + max_future_s] are dead-lettered:
# year 1 or 9999 timestamps are data errors, and a future time holds its
# window open until the clock reaches it. Minutes cover clock skew between
# producers; a producer whose clock is further ahead is broken, and its
# events get their own reason (time_in_future).
DEFAULT_MIN_EVENT_TIME = '2000-01-01T00:00:00+00:00'
DEFAULT_MAX_FUTURE_S = 300.0


@dataclasses.dataclass(frozen=True)
class Field:
  """One field of an event."""
  name: str
  type: str
  required: bool = True


@dataclasses.dataclass(frozen=True)
class EventSchema:
  """The shape of an event and the role of its fields.

  Attributes:
    name: schema name (for logs and output metadata).
    fields: all fields, in declaration order.
    id_field: unique event id field, or None (derived from the position).
    time_field: event-time field, or None (record/file timestamp).
    key_field: grouping key for window features, or None (one key).
    label_field: label field (optional in events), or None.
    features: model input features, in the model's input order.
    window_features: fields aggregated per key and window (mean/std).
    extra_fields: 'reject' or 'ignore' fields not in the schema.
    time_unit: how numeric/strings times are read: auto, s, ms, iso.
    min_event_time: earliest accepted event time (epoch seconds).
    max_future_s: latest accepted event time, relative to the clock.
    csv_columns: column order of CSV input.
    csv_header: whether CSV input starts with a header line.
    avro_schema: Avro writer schema (a dict), for Avro input.
  """
  name: str
  fields: tuple[Field, ...]
  id_field: Optional[str]
  time_field: Optional[str]
  key_field: Optional[str]
  label_field: Optional[str]
  features: tuple[str, ...]
  window_features: tuple[str, ...] = ()
  extra_fields: str = 'reject'
  time_unit: str = 'auto'
  min_event_time: float = 946684800.0
  max_future_s: float = DEFAULT_MAX_FUTURE_S
  csv_columns: tuple[str, ...] = ()
  csv_header: bool = False
  avro_schema: Optional[Mapping[str, Any]] = None

  def __post_init__(self):
    names = [f.name for f in self.fields]
    if len(set(names)) != len(names):
      raise ValueError(f'schema {self.name!r}: duplicate field names')
    by_name = {f.name: f for f in self.fields}
    for f in self.fields:
      if f.type not in FIELD_TYPES:
        raise ValueError(f'schema {self.name!r}: field {f.name!r} has type '
                         f'{f.type!r}; use one of {FIELD_TYPES}')
    for role in ('id_field', 'time_field', 'key_field', 'label_field'):
      value = getattr(self, role)
      if value is not None and value not in by_name:
        raise ValueError(f'schema {self.name!r}: {role} {value!r} is not a '
                         f'field')
    if not self.features:
      raise ValueError(f'schema {self.name!r}: features must name at least '
                       f'one field')
    for group in ('features', 'window_features'):
      for name in getattr(self, group):
        if name not in by_name:
          raise ValueError(f'schema {self.name!r}: {group} names unknown '
                           f'field {name!r}')
        if by_name[name].type not in ('float', 'int', 'bool'):
          raise ValueError(f'schema {self.name!r}: {group} field {name!r} '
                           f'must be numeric, not {by_name[name].type}')
        if not by_name[name].required:
          # A model input or window value cannot be absent from an event.
          raise ValueError(f'schema {self.name!r}: {group} field {name!r} '
                           f'must be required')
    if self.time_field and by_name[self.time_field].type not in (
        'timestamp', 'float', 'int', 'string'):
      raise ValueError(f'schema {self.name!r}: time_field must be a '
                       f'timestamp')
    if self.extra_fields not in EXTRA_FIELD_POLICIES:
      raise ValueError(f'schema {self.name!r}: extra_fields must be one of '
                       f'{EXTRA_FIELD_POLICIES}')
    if self.time_unit not in TIME_UNITS:
      raise ValueError(f'schema {self.name!r}: time_unit must be one of '
                       f'{TIME_UNITS}')
    for name in self.csv_columns:
      if name not in by_name:
        raise ValueError(f'schema {self.name!r}: csv_columns names unknown '
                         f'field {name!r}')

  @property
  def field_names(self) -> tuple[str, ...]:
    return tuple(f.name for f in self.fields)

  @property
  def required_names(self) -> frozenset[str]:
    return frozenset(f.name for f in self.fields if f.required)

  @property
  def columns(self) -> tuple[str, ...]:
    """CSV column order."""
    return self.csv_columns or self.field_names

  def field(self, name: str) -> Field:
    for f in self.fields:
      if f.name == name:
        return f
    raise KeyError(name)

  def to_dict(self) -> dict:
    out = dataclasses.asdict(self)
    out['fields'] = [dataclasses.asdict(f) for f in self.fields]
    for key in ('features', 'window_features', 'csv_columns'):
      out[key] = list(out[key])
    return out


def _parse_time_bound(value) -> float:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    return float(value)
  dt = datetime.datetime.fromisoformat(str(value).replace('Z', '+00:00'))
  if dt.tzinfo is None:
    dt = dt.replace(tzinfo=datetime.timezone.utc)
  return dt.timestamp()


def from_dict(spec: Mapping[str, Any]) -> EventSchema:
  """Builds a schema from its JSON/YAML form (see the module docstring).

  Raises:
    ValueError: unknown keys, missing or inconsistent settings.
  """
  allowed = {f.name for f in dataclasses.fields(EventSchema)}
  unknown = set(spec) - allowed
  if unknown:
    raise ValueError(f'unknown schema keys: {sorted(unknown)}; allowed: '
                     f'{sorted(allowed)}')
  if 'fields' not in spec or 'features' not in spec:
    raise ValueError('a schema needs "fields" and "features"')
  fields = []
  for f in spec['fields']:
    if isinstance(f, str):
      f = {'name': f, 'type': 'float'}
    extra = set(f) - {'name', 'type', 'required'}
    if extra:
      raise ValueError(f'field {f.get("name")!r}: unknown keys {sorted(extra)}')
    fields.append(Field(name=f['name'], type=f.get('type', 'float'),
                        required=bool(f.get('required', True))))
  kwargs = dict(spec)
  kwargs['fields'] = tuple(fields)
  kwargs.setdefault('name', 'events')
  for role in ('id_field', 'time_field', 'key_field', 'label_field'):
    kwargs.setdefault(role, None)
  for key in ('features', 'window_features', 'csv_columns'):
    if key in kwargs:
      kwargs[key] = tuple(kwargs[key])
  if 'min_event_time' in kwargs:
    kwargs['min_event_time'] = _parse_time_bound(kwargs['min_event_time'])
  return EventSchema(**kwargs)


def load(path: str) -> EventSchema:
  """Reads a schema file (.json, .yaml/.yml); local path or gs://.

  Raises:
    ValueError: the file cannot be read or parsed, naming the path.
  """
  from apache_beam.io.filesystems import FileSystems
  try:
    with FileSystems.open(path) as f:
      text = f.read().decode('utf-8')
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'cannot read schema file {path}: {e}') from e
  try:
    if os.path.splitext(path)[1].lower() in ('.yaml', '.yml'):
      import yaml
      spec = yaml.safe_load(text)
    else:
      spec = json.loads(text)
    return from_dict(spec)
  except (ValueError, TypeError, KeyError) as e:
    raise ValueError(f'invalid schema file {path}: {e}') from e


# The 18 features of the UCI SUSY set, in its column order (the demo domain:
# models/susy.py generates such events).
SUSY_FEATURE_NAMES = (
    # low level: the two leptons and the missing transverse energy
    'lepton_1_pT', 'lepton_1_eta', 'lepton_1_phi',
    'lepton_2_pT', 'lepton_2_eta', 'lepton_2_phi',
    'missing_energy_magnitude', 'missing_energy_phi',
    # high level: derived by physicists to separate the classes
    'MET_rel', 'axial_MET', 'M_R', 'M_TR_2', 'R', 'MT2', 'S_R', 'M_Delta_R',
    'dPhi_r_b', 'cos_theta_r1',
)


def susy_schema() -> EventSchema:
  """The default event type: SUSY-shaped events (models/susy.py).

  An event id, an event time, a detector key, the label and the 18 features
  of the UCI SUSY set; window features are the lepton momenta and the
  missing energy.
  """
  names = list(SUSY_FEATURE_NAMES)
  fields = ([Field('event_id', 'string'), Field('event_time', 'timestamp'),
             Field('detector', 'string'), Field('label', 'int', required=False)]
            + [Field(n, 'float') for n in names])
  return EventSchema(
      name='susy', fields=tuple(fields), id_field='event_id',
      time_field='event_time', key_field='detector', label_field='label',
      features=tuple(names),
      window_features=('lepton_1_pT', 'lepton_2_pT',
                       'missing_energy_magnitude'))


def susy_csv_schema() -> EventSchema:
  """The real UCI SUSY file format: 19 CSV columns, no header, label first.

  No id, time or key columns: ids come from the position, times from the
  record (or file) timestamp, and all events share one key.
  """
  names = list(SUSY_FEATURE_NAMES)
  fields = [Field('label', 'float')] + [Field(n, 'float') for n in names]
  return EventSchema(
      name='susy_csv', fields=tuple(fields), id_field=None, time_field=None,
      key_field=None, label_field='label', features=tuple(names),
      window_features=('lepton_1_pT', 'lepton_2_pT',
                       'missing_energy_magnitude'))


BUILTIN = {'susy': susy_schema, 'susy_csv': susy_csv_schema}


def resolve(name_or_path: Optional[str]) -> EventSchema:
  """A built-in schema by name ('susy', 'susy_csv') or a schema file path."""
  if not name_or_path:
    return susy_schema()
  if name_or_path in BUILTIN:
    return BUILTIN[name_or_path]()
  return load(name_or_path)


__all__: Sequence[str] = ['EventSchema', 'Field', 'from_dict', 'load',
                          'resolve', 'susy_schema', 'susy_csv_schema']
