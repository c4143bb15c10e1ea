"""The backfill with gs:// input and outputs, on the GCS emulator (the paths
a Dataflow run uses): split line files read with seeks on GCS, Parquet
footers read from GCS, prediction and dead-letter files written there.
Runs under the guard of tests/emulators.py (no real Google endpoint)."""

import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystems import FileSystems

import model_fixtures as mf
from models import susy
from transforms.prediction_rows import output_columns
from transforms.schema import susy_schema
from transforms.sinks import read_row_file

pytestmark = [pytest.mark.it, pytest.mark.gcp]

N = 2000
START = float(int(time.time()) - 3600)


def _put(url: str, data: bytes) -> None:
  with FileSystems.create(url) as f:
    f.write(data)


def _files(prefix: str, suffix: str) -> list[str]:
  (result,) = FileSystems.match([prefix.rstrip('/') + '/*' + suffix])
  return sorted(m.path for m in result.metadata_list)


def test_files_on_gcs_in_and_out(gcs_emulator, tmp_path):
  from beam_jobs import backfill
  model_root = str(tmp_path / 'models')
  mf.write_versioned(model_root, 1)
  events = list(susy.iter_encoded_events(N, seed=8, start_time=START,
                                         malformed_fraction=0.02))
  bad = sum(1 for e in events if e.malformed)
  inputs = gcs_emulator.unique_prefix('events')
  _put(f'{inputs}/part-0.jsonl',
       b''.join(e.value + b'\n' for e in events[:N // 2]))
  _put(f'{inputs}/part-1.jsonl',
       b''.join(e.value + b'\n' for e in events[N // 2:]))
  out = gcs_emulator.unique_prefix('out')
  result = backfill.run([
      '--input', f'{inputs}/*.jsonl', '--model_dir', model_root,
      '--output_path', f'{out}/predictions', '--output_file_format',
      'parquet', '--dead_letter_path', f'{out}/dead-letters',
      '--split_mb', '0.1'])  # ~0.45 MB per file: several splits each
  assert result.summary.records_read == N
  rows = [r for path in _files(f'{out}/predictions', '.parquet')
          for r in read_row_file(path, 'parquet')]
  assert len(rows) == len({r['event_id'] for r in rows}) == N - bad
  expected = mf.expected_scores(susy.generate(N, seed=8).features)
  for r in rows:
    assert abs(r['score'] - float(expected[int(r['event_id'][1:])])) <= 1e-6
  letters = [d for path in _files(f'{out}/dead-letters', '.jsonl')
             for d in read_row_file(path, 'jsonl')]
  assert len(letters) == bad
  assert all(d['source'].startswith(f'file:{inputs}/part-') for d in letters)

  # Parquet on GCS: row groups planned from the footer read there.
  table = pa.table({
      'event_id': [f'p{i}' for i in range(300)],
      'event_time': [START + i for i in range(300)],
      'detector': ['det-0'] * 300, 'label': [1] * 300,
      **{n: [0.5] * 300 for n in susy.FEATURE_NAMES}})
  sink = pa.BufferOutputStream()
  pq.write_table(table, sink, row_group_size=100)
  _put(f'{inputs}/rows.parquet', sink.getvalue().to_pybytes())
  out2 = gcs_emulator.unique_prefix('out')
  backfill.run([
      '--input', f'{inputs}/rows.parquet', '--model_dir', model_root,
      '--output_path', f'{out2}/predictions',
      '--dead_letter_path', f'{out2}/dead-letters'])
  rows = [r for path in _files(f'{out2}/predictions', '.jsonl')
          for r in read_row_file(path, 'jsonl', output_columns(susy_schema()))]
  assert sorted(r['event_id'] for r in rows) == sorted(
      f'p{i}' for i in range(300))
  assert max(r['win_count'] for r in rows) == 60  # 60 s windows, 1 per s
