"""tf.Example coding: both encoders agree with protobuf; decoding; framing."""

import io

import numpy as np
import pyarrow as pa
import pytest
from tensorflow.core.example import example_pb2

from transforms import example_coder as ec
from transforms import tfrecord


def _proto(**features) -> example_pb2.Example:
  ex = example_pb2.Example()
  for name, (field, values) in features.items():
    getattr(ex.features.feature[name], field).value.extend(values)
  return ex


def _batch(n=5):
  return ec.record_batch({
      'x': ec.column(np.arange(n) / 4, ec.FLOAT),
      'i': ec.column(np.arange(n) * 10**12, ec.INT),
      's': ec.column([f'é{k}' for k in range(n)], ec.BYTES),
  })


def test_both_encoders_give_the_protos_python_would_build():
  batch = _batch()
  encoder = ec.Encoder()
  want = [_proto(x=('float_list', [k / 4]), i=('int64_list', [k * 10**12]),
                 s=('bytes_list', [f'é{k}'.encode()])) for k in range(5)]
  for records in (encoder.encode(batch), encoder.encode_cpp(batch),
                  encoder.encode_reused_proto(batch)):
    assert [example_pb2.Example.FromString(r) for r in records] == want


def test_missing_values_are_empty_lists_and_go_through_cpp():
  batch = ec.record_batch({
      'x': ec.column([1.5, None, 2.5], ec.FLOAT),
      'n': ec.column(np.array([1, 2, 3]), ec.INT,
                     present=np.array([True, True, False])),
  })
  encoder = ec.Encoder()
  encoder.encode_reused_proto = None  # must not be used for this batch
  got = [example_pb2.Example.FromString(r) for r in encoder.encode(batch)]
  assert got[0] == _proto(x=('float_list', [1.5]), n=('int64_list', [1]))
  empty_x = got[1].features.feature['x']
  assert empty_x.WhichOneof('kind') == 'float_list'
  assert not empty_x.float_list.value
  assert not got[2].features.feature['n'].int64_list.value


def test_decode_dicts_scalars_lists_text_and_bad_records_alone():
  good = _proto(id=('bytes_list', [b'e1']), tags=('bytes_list', [b'a', b'b']),
                raw=('bytes_list', [b'\xff']), x=('float_list', [0.25]),
                empty=('float_list', []))
  other = _proto(x=('int64_list', [3]))  # x of another kind: decoded alone
  docs = ec.decode_dicts([good.SerializeToString(), b'\xff\xff not a proto',
                          other.SerializeToString()])
  assert docs[0] == {'id': 'e1', 'tags': ['a', 'b'], 'raw': b'\xff',
                     'x': 0.25}
  assert isinstance(docs[1], ValueError) and 'not a tf.train.Example' in str(
      docs[1])
  assert docs[2] == {'x': 3}


def test_decode_with_a_schema_keeps_its_features_and_types():
  from tensorflow_metadata.proto.v0 import schema_pb2
  schema = schema_pb2.Schema()
  schema.feature.add(name='x', type=schema_pb2.FLOAT)
  records = ec.Encoder().encode(_batch(3))
  batch = ec.decode(records, schema)
  assert batch.schema.names == ['x']
  assert batch.column(0).to_pylist() == [[0.0], [0.25], [0.5]]


def test_framing_round_trip_and_errors(tmp_path):
  records = [b'', b'abc', bytes(range(256))]
  data = tfrecord.frame_all(records)
  assert tfrecord.records(data) == records
  assert [r for r, e in tfrecord.iter_records(io.BytesIO(data))] == records
  bad = bytearray(data)
  bad[-1] ^= 0xFF
  with pytest.raises(ValueError, match='data CRC mismatch'):
    tfrecord.records(bytes(bad))
  with pytest.raises(IOError, match='truncated TFRecord at byte 35'):
    tfrecord.records(data[:-3], 'f')
  import tensorflow as tf  # TensorFlow reads the same frames.
  path = str(tmp_path / 'x.tfrecord')
  with open(path, 'wb') as f:
    f.write(data)
  assert [r.numpy() for r in tf.data.TFRecordDataset(path)] == records


def test_list_column_casts_and_rejects_unknown_kinds():
  col = ec.list_column(pa.array([True, None, False]), ec.INT)
  assert col.to_pylist() == [[1], [], [0]]
  with pytest.raises(ValueError, match='feature kind'):
    ec.list_column(pa.array([1]), 'double')


def test_one_encoder_is_safe_across_threads():
  import concurrent.futures
  encoder = ec.Encoder()
  batches = [ec.record_batch({'x': ec.column(np.full(500, float(k)),
                                             ec.FLOAT)}) for k in range(8)]
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    results = list(pool.map(encoder.encode, batches * 4))
  for k, records in enumerate(results):
    values = {example_pb2.Example.FromString(r).features.feature['x']
              .float_list.value[0] for r in records}
    assert values == {float(k % 8)}
