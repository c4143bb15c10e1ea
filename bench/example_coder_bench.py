"""tf.Example coding and TFRecord framing: Python protos vs tfx-bsl's C++.

Each place of the project that builds or parses tf.Examples, measured both
ways on the same rows (best of --repeat, rows/s, and the ratio C++ / Python):

  span_encode      an EventBatch with window features -> the span examples
                   of the ingest job (18 features, label, id, key, times,
                   window columns). Python: the proto reused and its values
                   overwritten per row (the pre-tfx-bsl ingest encoder).
                   C++: models.example_layout + RecordBatchToExamplesEncoder.
  model_examples   an EventBatch -> the examples a TFX-style model takes
                   (the same columns without the label): the handler's
                   examples input. Python: the pre-tfx-bsl handler's reused
                   proto of the 18 features only; C++: the full layout.
  model_features   the 18 features alone, both ways (what the old handler
                   encoded).
  prediction_rows  prediction rows -> the TFRecord file sink's examples.
                   Python: a proto per row dict (the old sink); C++: the
                   sink's Arrow columns (transforms/sinks/files.py).
  decode_dicts     serialized examples -> dicts (the TFRecord file source).
                   Python: Example.FromString + a dict per feature; C++:
                   ExamplesToRecordBatchDecoder + columns to dicts.
  frame / unframe  TFRecord framing of the span examples: the project's
                   transforms/tfrecord.py (struct + google-crc32c) vs
                   TensorFlow's tf.io.TFRecordWriter (to a local file) and
                   tf.data.TFRecordDataset (reading it back).

  python -m bench.example_coder_bench            # 100k rows, best of 3
  python -m bench.example_coder_bench --n 20000 --repeat 5

Results and the decisions taken from them: docs/tfx_interop.md.
"""

import argparse
import os
import tempfile
import time

import numpy as np

from models import example_layout, susy
from transforms import example_coder, tfrecord
from transforms import schema as schema_lib
from transforms.events import EventBatch


def _event_batch(n: int) -> EventBatch:
  data = susy.generate(n, seed=1)
  schema = schema_lib.susy_schema()
  cols = [susy.FEATURE_NAMES.index(f) for f in schema.window_features]
  rng = np.random.default_rng(2)
  return EventBatch(
      source='bench', positions=np.arange(n), raw=[],
      ids=[f'e{i}' for i in range(n)],
      keys=[susy.DEFAULT_KEYS[i % 4] for i in range(n)],
      event_time=susy.DEFAULT_START_TIME + np.arange(n) / 1000.0,
      features=data.features, window_values=data.features[:, cols],
      labels=data.labels.astype(np.float64), read_time=np.zeros(n),
      window=(1.7e9, 1.7e9 + 5), win_count=rng.integers(1, 100, n),
      win_mean=rng.random((n, len(cols)), np.float32),
      win_std=rng.random((n, len(cols)), np.float32))


def _best(fn, repeat: int) -> float:
  best = float('inf')
  for _ in range(repeat):
    t0 = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t0)
  return best


def _line(name: str, n: int, python_s: float, cpp_s: float,
          labels=('python', 'tfx-bsl')) -> None:
  print(f'{name:<16} {labels[0]} {n / python_s:>11,.0f} rows/s   '
        f'{labels[1]} {n / cpp_s:>11,.0f} rows/s   ratio '
        f'{python_s / cpp_s:4.2f}x')


def _compare(name, n, repeat, encoder, columns) -> None:
  """The reused proto vs tfx-bsl on the same columns (built in the time)."""
  python = lambda: encoder.encode_reused_proto(columns())
  cpp = lambda: encoder.encode_cpp(columns())
  _same(python(), cpp())
  _line(name, n, _best(python, repeat), _best(cpp, repeat))


def _same(python_records, cpp_records) -> None:
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  for a, b in zip(python_records[:50], cpp_records[:50]):
    if example_pb2.Example.FromString(a) != example_pb2.Example.FromString(b):
      raise AssertionError('the two encoders disagree')


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--n', type=int, default=100_000)
  parser.add_argument('--repeat', type=int, default=3)
  args = parser.parse_args(argv)
  n, repeat = args.n, args.repeat
  batch = _event_batch(n)
  schema = schema_lib.susy_schema()
  layout = example_layout.ExampleLayout(schema.features,
                                        schema.window_features)
  labels = batch.labels.astype(np.int64)
  encoder = example_coder.Encoder()
  print(f'{n:,} rows, best of {repeat}; load average '
        f'{os.getloadavg()[0]:.2f}')

  for name, with_label in (('span_encode', True), ('model_examples', False)):
    columns = lambda: layout.event_batch(  # pylint: disable=cell-var-from-loop
        batch, labels=labels if with_label else None)  # pylint: disable=cell-var-from-loop
    _compare(name, n, repeat, encoder, columns)
  _compare('model_features', n, repeat, encoder,
           lambda: example_coder.float_features(schema.features,
                                                batch.features))
  _prediction_rows(batch, repeat)
  _decode(n, repeat, encoder.encode(layout.event_batch(batch, labels=labels)))
  _framing(n, repeat, encoder.encode(layout.event_batch(batch,
                                                        labels=labels)))
  return 0


def _prediction_rows(batch: EventBatch, repeat: int) -> None:
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel
  from transforms.events import ScoredBatch  # pylint: disable=import-outside-toplevel
  from transforms import prediction_rows as output  # pylint: disable=import-outside-toplevel
  from transforms.sinks import files  # pylint: disable=import-outside-toplevel
  schema = schema_lib.susy_schema()
  columns = output.output_columns(schema)
  rows = output.PredictionRows.of(
      ScoredBatch(batch, np.random.default_rng(3).random(len(batch),
                                                         np.float32), 1,
                  1.7e9), schema.window_features, with_label=True)

  def per_row_proto():
    out = []
    for row in rows:
      ex = example_pb2.Example()
      fmap = ex.features.feature
      for name, typ in columns:
        v = row.get(name)
        if typ == 'STRING':
          fmap[name].bytes_list.value.append(v.encode())
        elif typ == 'FLOAT':
          fmap[name].float_list.value.append(v)
          if name in files.TIME_COLUMNS:
            fmap[f'{name}_us'].int64_list.value.append(round(v * 1e6))
        else:
          fmap[name].int64_list.value.append(int(v))
      out.append(ex.SerializeToString())
    return out

  codec = files._RowCodec('tfrecord', columns)  # pylint: disable=protected-access
  project = lambda: codec._examples(rows)  # pylint: disable=protected-access
  _same(per_row_proto(), project())
  _line('prediction_rows', len(batch), _best(per_row_proto, repeat),
        _best(project, repeat), labels=('per-row proto', 'project'))


def _decode(n: int, repeat: int, records: list) -> None:
  from tensorflow.core.example import example_pb2  # pylint: disable=import-outside-toplevel

  def python():
    out = []
    for record in records:
      doc = {}
      for name, feature in example_pb2.Example.FromString(
          record).features.feature.items():
        kind = feature.WhichOneof('kind')
        values = getattr(feature, kind).value
        if kind == 'bytes_list':
          values = [v.decode('utf-8') for v in values]
        doc[name] = values[0] if len(values) == 1 else list(values)
      out.append(doc)
    return out

  cpp = lambda: example_coder.decode_dicts(records)
  if python()[:100] != cpp()[:100]:
    raise AssertionError('the two decoders disagree')
  _line('decode_dicts', n, _best(python, repeat), _best(cpp, repeat))


def _framing(n: int, repeat: int, records: list) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  with tempfile.TemporaryDirectory() as tmp:
    ours, theirs = os.path.join(tmp, 'ours'), os.path.join(tmp, 'tf')

    def frame_ours():
      with open(ours, 'wb') as f:
        f.write(tfrecord.frame_all(records))

    def frame_tf():
      with tf.io.TFRecordWriter(theirs) as writer:
        for record in records:
          writer.write(record)

    _line('frame', n, _best(frame_tf, repeat), _best(frame_ours, repeat),
          labels=('tf.io', 'project'))
    with open(ours, 'rb') as f, open(theirs, 'rb') as g:
      if f.read() != g.read():
        raise AssertionError('the two framings differ')

    def unframe_ours():
      with open(ours, 'rb') as f:
        return [r for r, _ in tfrecord.iter_records(f, ours)]

    def unframe_tf():
      return list(tf.data.TFRecordDataset(theirs).as_numpy_iterator())

    _line('unframe', n, _best(unframe_tf, repeat), _best(unframe_ours, repeat),
          labels=('tf.data', 'project'))


if __name__ == '__main__':
  raise SystemExit(main())
