"""tf.Example <-> Arrow columns, with tfx-bsl's C++ coders.

Every place of the project that builds or parses ``tf.train.Example`` protos
goes through here: the ingest job and the span writer (models/
example_layout.py builds the columns), the SavedModel handler's examples
input, the TFRecord prediction files (transforms/sinks/files.py) and the
TFRecord file source (transforms/sources.py). Examples are Arrow
``pa.RecordBatch``es whose columns are lists (one list per row = the
feature's values), the shape tfx-bsl and TFXIO use. Decoding is tfx-bsl's
C++ ``ExamplesToRecordBatchDecoder``; encoding picks between tfx-bsl's C++
encoder and a reused proto by the data (``Encoder``). What each costs is
in bench/example_coder_bench.py and docs/tfx_interop.md.

Kinds: ``float`` (float_list: float32, the only float type of tf.Example),
``int`` (int64_list) and ``bytes`` (bytes_list; ``str`` values are encoded
as UTF-8). A missing value (None in a list, False in ``present``) becomes
the feature with an empty list of its kind, so the example still says what
the feature's type is; a reader sees no value.
"""

import threading
from typing import Mapping, Optional, Sequence, Union

import numpy as np
import pyarrow as pa

FLOAT = 'float'
INT = 'int'
BYTES = 'bytes'
KINDS = (FLOAT, INT, BYTES)

_VALUE_TYPES = {FLOAT: pa.float32(), INT: pa.int64(), BYTES: pa.binary()}
_NUMPY_TYPES = {FLOAT: np.float32, INT: np.int64}


def list_column(values: pa.Array, kind: str) -> pa.ListArray:
  """A scalar Arrow array -> a one-value-per-row feature column of ``kind``.

  Null entries become empty lists (see the module docstring).
  """
  if kind not in _VALUE_TYPES:
    raise ValueError(f'feature kind {kind!r}: use one of {KINDS}')
  n = len(values)
  if values.null_count:
    present = values.is_valid().to_numpy(zero_copy_only=False)
    values = values.drop_null()
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(present, out=offsets[1:])
  else:
    offsets = np.arange(n + 1, dtype=np.int32)
  if values.type != _VALUE_TYPES[kind]:
    values = values.cast(_VALUE_TYPES[kind])
  return pa.ListArray.from_arrays(pa.array(offsets), values)


def column(values: Union[np.ndarray, Sequence], kind: str, *,
           present: Optional[np.ndarray] = None) -> pa.ListArray:
  """A feature column of one value per row.

  Args:
    values: a numpy array (float or int kinds) or a sequence; in a sequence,
      None is a missing value.
    kind: float, int or bytes.
    present: optional bool mask; False rows are missing.
  """
  if isinstance(values, np.ndarray) and kind in _NUMPY_TYPES:
    array = pa.array(values.astype(_NUMPY_TYPES[kind], copy=False),
                     mask=None if present is None else ~present)
  else:
    if present is not None:
      values = [v if p else None for v, p in zip(values, present)]
    array = pa.array(values, type=(pa.binary() if kind == BYTES else None))
  return list_column(array, kind)


def record_batch(columns: Mapping[str, pa.Array]) -> pa.RecordBatch:
  """Feature columns (name -> list array) as one RecordBatch."""
  return pa.RecordBatch.from_arrays(list(columns.values()),
                                    list(columns.keys()))


def float_features(names: Sequence[str], values: np.ndarray
                  ) -> pa.RecordBatch:
  """A [n, F] matrix as F float feature columns named ``names``."""
  if values.ndim != 2 or values.shape[1] != len(names):
    raise ValueError(f'{values.shape} values for {len(names)} feature names')
  return record_batch({name: column(values[:, j], FLOAT)
                       for j, name in enumerate(names)})


class Encoder:
  """RecordBatch -> serialized tf.Examples. Picklable; state is built on
  first use. Thread-safe (a model shared by a worker's threads encodes with
  one): the reused protos are per thread.

  Two implementations, chosen by the data, because neither is faster on
  all of it (bench/example_coder_bench.py): a batch whose every column has
  exactly one value per row (the span examples, a model's examples input)
  is encoded by overwriting the values of one reused proto per row and
  serializing it (upb, in C); any other batch (missing values, several
  values) by tfx-bsl's C++ ``RecordBatchToExamplesEncoder``. Both give the
  same examples.
  """

  def __init__(self):
    self._cpp = None
    self._local = threading.local()

  def __getstate__(self):
    return {}

  def __setstate__(self, unused_state):
    self.__init__()

  def encode(self, batch: pa.RecordBatch) -> list[bytes]:
    if batch.num_rows and all(_one_value_per_row(c) for c in batch.columns):
      return self.encode_reused_proto(batch)
    return self.encode_cpp(batch)

  def encode_cpp(self, batch: pa.RecordBatch) -> list[bytes]:
    """tfx-bsl's C++ encoder, for any batch of list columns."""
    if self._cpp is None:
      # pylint: disable-next=import-outside-toplevel
      from tfx_bsl.coders import example_coder
      self._cpp = example_coder.RecordBatchToExamplesEncoder()
    return self._cpp.encode(batch)

  def encode_reused_proto(self, batch: pa.RecordBatch) -> list[bytes]:
    """One reused proto, values overwritten per row: columns of exactly
    one value per row only."""
    key = tuple(zip(batch.schema.names,
                    (f.type.value_type for f in batch.schema)))
    protos = getattr(self._local, 'protos', None)
    if protos is None:
      protos = self._local.protos = {}
    proto = protos.get(key)
    if proto is None:
      proto = protos[key] = _ReusedProto(key)
    return proto.encode([c.flatten().to_pylist() for c in batch.columns])


def _one_value_per_row(column: pa.Array) -> bool:
  if column.null_count or len(column.flatten()) != len(column):
    return False
  lengths = column.value_lengths().to_numpy()
  return bool((lengths == 1).all())


_PROTO_LISTS = ((pa.types.is_floating, 'float_list', 0.0),
                (pa.types.is_integer, 'int64_list', 0),
                (lambda t: True, 'bytes_list', b''))


class _ReusedProto:
  """A tf.Example with one value per feature, serialized row after row."""

  def __init__(self, names_and_types):
    # pylint: disable-next=import-outside-toplevel
    from tensorflow.core.example import example_pb2
    self._proto = example_pb2.Example()
    fmap = self._proto.features.feature
    self._slots = []
    for name, value_type in names_and_types:
      _, field, zero = next(k for k in _PROTO_LISTS if k[0](value_type))
      values = getattr(fmap[name], field).value
      values.append(zero)
      self._slots.append(values)

  def encode(self, columns: list) -> list[bytes]:
    out = []
    slots = self._slots
    serialize = self._proto.SerializeToString
    for row in zip(*columns):
      for values, value in zip(slots, row):
        values[0] = value
      out.append(serialize())
    return out


_DECODERS: dict = {}


def decode(records: Sequence[bytes], schema=None) -> pa.RecordBatch:
  """Serialized tf.Examples -> RecordBatch of list columns (tfx-bsl, C++).

  Args:
    records: serialized examples.
    schema: optional tensorflow_metadata Schema: only its features, typed
      by it (large_list columns); without one, types are inferred.

  Raises:
    RuntimeError: a record is not a tf.Example, or a feature has different
      kinds in different records (without a schema).
  """
  key = None if schema is None else schema.SerializeToString()
  decoder = _DECODERS.get(key)
  if decoder is None:
    # pylint: disable-next=import-outside-toplevel
    from tfx_bsl.coders import example_coder
    decoder = _DECODERS[key] = example_coder.ExamplesToRecordBatchDecoder(key)
  return decoder.DecodeBatch(list(records))


def _texts(values: pa.Array) -> list:
  """bytes_list values as str where they are UTF-8 (else the bytes)."""
  try:
    return values.cast(pa.large_string()).to_pylist()
  except pa.ArrowInvalid:
    out = []
    for v in values.to_pylist():
      try:
        out.append(v.decode('utf-8'))
      except UnicodeDecodeError:
        out.append(v)
    return out


def to_dicts(batch: pa.RecordBatch) -> list[dict]:
  """Decoded examples as dicts: a feature with one value becomes a scalar
  (bytes as UTF-8 text where they are UTF-8), several stay a list, none
  (absent or an empty list) leaves the key out."""
  rows = [{} for _ in range(batch.num_rows)]
  for name, col in zip(batch.schema.names, batch.columns):
    if pa.types.is_null(col.type):
      continue
    flat = col.flatten()
    values = (_texts(flat) if pa.types.is_binary(flat.type) or
              pa.types.is_large_binary(flat.type) else flat.to_pylist())
    lengths = col.value_lengths().fill_null(0).to_numpy()
    if len(values) == len(rows) and (lengths == 1).all():
      for row, value in zip(rows, values):
        row[name] = value
      continue
    start = 0
    for row, length in zip(rows, lengths.tolist()):
      if length == 1:
        row[name] = values[start]
      elif length:
        row[name] = values[start:start + length]
      start += length
  return rows


def decode_dicts(records: Sequence[bytes]) -> list[Union[dict, Exception]]:
  """``to_dicts`` of each record, or the ValueError saying why a record is
  not a tf.Example. Decoded as one batch; only a batch that fails is
  decoded again record by record (so one bad record fails alone, and
  records that disagree on a feature's kind still decode)."""
  try:
    return to_dicts(decode(records))
  except RuntimeError:
    pass
  out: list = []
  for record in records:
    try:
      out.append(to_dicts(decode([record]))[0])
    except RuntimeError as e:
      out.append(ValueError(f'not a tf.train.Example: {e}'))
  return out
