"""The project's tf.Example layout: span examples and examples-taking models.

One example per event, one value per feature (TFX's ExampleGen output has
the same shape)::

  <feature>            float   the schema's model inputs, in order
  label                int64   0/1 (span examples only; not at serving)
  event_id, detector   bytes   the event id and its key
  event_time           float   epoch s (float32: ~2 min precise today)
  event_time_ms        int64   exact epoch ms
  window_start_ms, window_end_ms   int64   the event-time window (int64
                                   min/max for the global window)
  win_count            int64   events of the key in the window so far
  win_mean_<f>, win_std_<f>  float   per window feature

The window columns are there when the events carry window features (the
ingest job computes them; a scoring job has them when it scores after its
windows). ``ExampleLayout.schema()`` describes the columns as a
``tensorflow_metadata`` Schema (what TFX's SchemaGen writes): every column
has a fixed shape of one value, so TFXIO and ``tf.io.parse_example`` give
dense [batch, 1] tensors; the label is left out of the SERVING environment
(TFX's convention); and each column is tagged with its role
(``kbi:feature``, ``kbi:label``, ...) so the training code knows the model
inputs and their order from the schema alone.

Columns are Arrow list arrays (transforms/example_coder.py) and are encoded
to serialized examples in C++ by tfx-bsl.
"""

import dataclasses
from typing import Optional, Sequence

import numpy as np
import pyarrow as pa

from transforms import example_coder as ec
from transforms.events import EventBatch

LABEL_KEY = 'label'
ID_KEY = 'event_id'
DETECTOR_KEY = 'detector'
TIME_KEY = 'event_time'
EVENT_TIME_MS_KEY = 'event_time_ms'
WINDOW_START_KEY = 'window_start_ms'
WINDOW_END_KEY = 'window_end_ms'
WIN_COUNT_KEY = 'win_count'

# Schema annotation tags saying what a column is.
ROLE_FEATURE = 'kbi:feature'
ROLE_LABEL = 'kbi:label'
ROLE_ID = 'kbi:id'
ROLE_KEY = 'kbi:key'
ROLE_TIME = 'kbi:time'
ROLE_WINDOW = 'kbi:window'
TRAINING, SERVING = 'TRAINING', 'SERVING'

# Window bounds of the GlobalWindow (-inf, inf) in int64 milliseconds.
GLOBAL_START_MS = -(2**63)
GLOBAL_END_MS = 2**63 - 1


@dataclasses.dataclass(frozen=True)
class ExampleLayout:
  """The columns of the examples of one event schema.

  Attributes:
    features: the model inputs, in order.
    window_features: the window features; None for examples without window
      columns (``write_span``'s plain rows).
  """
  features: tuple[str, ...]
  window_features: Optional[tuple[str, ...]] = None

  def columns(self, *, label: bool = True, window: bool = True
             ) -> dict[str, tuple[str, str]]:
    """name -> (kind, role) of every column, in example order."""
    out = {n: (ec.FLOAT, ROLE_FEATURE) for n in self.features}
    if label:
      out[LABEL_KEY] = (ec.INT, ROLE_LABEL)
    out.update({ID_KEY: (ec.BYTES, ROLE_ID), DETECTOR_KEY: (ec.BYTES, ROLE_KEY),
                TIME_KEY: (ec.FLOAT, ROLE_TIME),
                EVENT_TIME_MS_KEY: (ec.INT, ROLE_TIME)})
    if window and self.window_features is not None:
      out.update({WINDOW_START_KEY: (ec.INT, ROLE_WINDOW),
                  WINDOW_END_KEY: (ec.INT, ROLE_WINDOW),
                  WIN_COUNT_KEY: (ec.INT, ROLE_WINDOW)})
      for name in self.window_features:
        out[f'win_mean_{name}'] = (ec.FLOAT, ROLE_WINDOW)
        out[f'win_std_{name}'] = (ec.FLOAT, ROLE_WINDOW)
    return out

  def record_batch(self, features: np.ndarray, ids: Sequence[str],
                   keys: Sequence[str], event_time: np.ndarray, *,
                   labels: Optional[np.ndarray] = None,
                   window: Optional[tuple] = None) -> pa.RecordBatch:
    """Columns of rows given as arrays.

    Args:
      features: [n, F] model inputs.
      ids, keys: event ids and keys.
      event_time: [n] epoch seconds.
      labels: [n] 0/1, or None for examples without a label (serving).
      window: None (no window columns), or ``(start, end, win_count
        [n], win_mean [n, W], win_std [n, W])`` with start/end in epoch
        seconds (infinite for the global window).
    """
    features = np.asarray(features)
    if features.ndim != 2 or features.shape[1] != len(self.features):
      raise ValueError(f'{features.shape} feature values for '
                       f'{len(self.features)} feature names')
    n = len(features)
    event_time = np.asarray(event_time, dtype=np.float64)
    cols = {name: ec.column(features[:, j], ec.FLOAT)
            for j, name in enumerate(self.features)}
    if labels is not None:
      cols[LABEL_KEY] = ec.column(np.asarray(labels), ec.INT)
    cols[ID_KEY] = ec.column(list(ids), ec.BYTES)
    cols[DETECTOR_KEY] = ec.column(list(keys), ec.BYTES)
    cols[TIME_KEY] = ec.column(event_time, ec.FLOAT)
    cols[EVENT_TIME_MS_KEY] = ec.column(
        np.round(event_time * 1000).astype(np.int64), ec.INT)
    if window is not None and self.window_features is not None:
      start, end, count, mean, std = window
      cols[WINDOW_START_KEY] = ec.column(np.full(n, _ms(start, GLOBAL_START_MS),
                                                 np.int64), ec.INT)
      cols[WINDOW_END_KEY] = ec.column(np.full(n, _ms(end, GLOBAL_END_MS),
                                               np.int64), ec.INT)
      cols[WIN_COUNT_KEY] = ec.column(np.asarray(count), ec.INT)
      for j, name in enumerate(self.window_features):
        cols[f'win_mean_{name}'] = ec.column(mean[:, j], ec.FLOAT)
        cols[f'win_std_{name}'] = ec.column(std[:, j], ec.FLOAT)
    return ec.record_batch(cols)

  def event_batch(self, batch: EventBatch, *,
                  labels: Optional[np.ndarray] = None) -> pa.RecordBatch:
    """Columns of an EventBatch's rows (window columns when it has window
    features), with ``labels`` or without a label column."""
    window = None
    if self.window_features is not None and batch.win_count is not None:
      start, end = (batch.window if batch.window is not None else
                    (-np.inf, np.inf))
      width = len(self.window_features)
      empty = np.zeros((len(batch), width), np.float32)
      window = (start, end, batch.win_count,
                batch.win_mean if batch.win_mean is not None else empty,
                batch.win_std if batch.win_std is not None else empty)
    return self.record_batch(batch.features, batch.ids, batch.keys,
                             batch.event_time, labels=labels, window=window)

  def schema(self, *, annotations: Sequence[str] = ()):
    """The tensorflow_metadata Schema of the columns (module docstring).

    Args:
      annotations: schema-level tags (e.g. how the span was split).
    """
    return make_schema(self.columns(), annotations=annotations)


def make_schema(columns: dict, *, annotations: Sequence[str] = ()):
  """A tensorflow_metadata Schema of {name: (kind, role)} columns."""
  # pylint: disable-next=import-outside-toplevel
  from tensorflow_metadata.proto.v0 import schema_pb2
  types = {ec.FLOAT: schema_pb2.FLOAT, ec.INT: schema_pb2.INT,
           ec.BYTES: schema_pb2.BYTES}
  schema = schema_pb2.Schema(default_environment=[TRAINING, SERVING])
  schema.annotation.tag.extend(annotations)
  for name, (kind, role) in columns.items():
    feature = schema.feature.add(name=name, type=types[kind])
    feature.shape.dim.add(size=1)
    feature.presence.min_fraction = 1.0
    feature.presence.min_count = 1
    feature.annotation.tag.append(role)
    if role == ROLE_LABEL:
      feature.not_in_environment.append(SERVING)
      feature.int_domain.min, feature.int_domain.max = 0, 1
      feature.int_domain.is_categorical = True
  return schema


def _ms(seconds: float, infinite: int) -> int:
  return infinite if np.isinf(seconds) else int(round(seconds * 1000))


def columns_with_role(schema, role: str) -> list[str]:
  """Names of the schema's features tagged with ``role``, in schema order."""
  return [f.name for f in schema.feature if role in f.annotation.tag]


def layout_of(schema) -> ExampleLayout:
  """The ExampleLayout a tensorflow_metadata Schema describes.

  Raises:
    ValueError: the schema tags no feature as a model input.
  """
  features = columns_with_role(schema, ROLE_FEATURE)
  if not features:
    raise ValueError(f'the schema tags no feature {ROLE_FEATURE!r}: not a '
                     f'span schema of this project')
  names = {f.name for f in schema.feature}
  window = None
  if WIN_COUNT_KEY in names:
    window = tuple(n[len('win_mean_'):] for n in
                   columns_with_role(schema, ROLE_WINDOW)
                   if n.startswith('win_mean_'))
  return ExampleLayout(tuple(features), window)
