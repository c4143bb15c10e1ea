"""File and BigQuery sinks end to end on the GCS and BigQuery emulators.

Every test runs under the guard of tests/emulators.py: a connection attempt
to a real Google endpoint fails the test.
"""

import math
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import apache_beam as beam
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing import test_stream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window as window_lib
from apache_beam.transforms.window import TimestampedValue

from emulators import GoogleEndpointBlocked, GoogleEndpointGuard
from sinks_files_test import COLUMNS, T0, W1, W2, make_rows
from transforms.sinks import (BIGQUERY_INVALID_ROW, WritePredictionFiles,
                              WritePredictionsToBigQuery, read_row_file)

pytestmark = [pytest.mark.it, pytest.mark.gcp]

_COLLECTED: list = []


def _collect(rows):
  # Module-level so it survives DoFn pickling on the in-process runners.
  _COLLECTED.extend(r['event_id'] for r in rows)


def gcs_files(prefix: str) -> list[str]:
  (result,) = FileSystems.match([prefix.rstrip('/') + '/**'])
  return sorted(m.path for m in result.metadata_list)


def assert_table_equals(got: list[dict], want: list[dict]):
  """Exactly the rows of ``want`` (each once), every column equal."""
  ids = [r['event_id'] for r in got]
  assert len(ids) == len(set(ids))
  assert sorted(ids) == sorted(r['event_id'] for r in want)
  by_id = {r['event_id']: r for r in got}
  for w in want:
    g = by_id[w['event_id']]
    assert g == {name: w.get(name) for name, _ in COLUMNS}, w['event_id']


def batch_windowed(p, batches):
  return (p
          | 'Create' >> beam.Create(batches)
          | 'Stamp' >> beam.Map(lambda tb: TimestampedValue(tb[1], tb[0]))
          | 'Fixed60' >> beam.WindowInto(window_lib.FixedWindows(60)))


def streaming_pipeline(**options):
  return beam.Pipeline(runner=BundleBasedDirectRunner(),
                       options=PipelineOptions(streaming=True, **options))


# --- files on gs:// ------------------------------------------------------------

@pytest.mark.parametrize('file_format', ['jsonl', 'parquet', 'tfrecord'])
def test_prediction_files_on_gcs(gcs_emulator, file_format):
  out = gcs_emulator.unique_prefix(f'predictions-{file_format}')
  batches = [(T0 + 1, make_rows('a', 40, W1, 1)),
             (T0 + 61, make_rows('b', 25, W2, 2))]
  want = [r for _, rows in batches for r in rows]
  with beam.Pipeline(runner=FnApiRunner()) as p:
    _ = batch_windowed(p, batches) | WritePredictionFiles(
        out, file_format, COLUMNS, num_shards=2)
  paths = gcs_files(out)
  names = [pathlib.PurePosixPath(x).name for x in paths]
  assert names == [
      f'predictions-{w}-pane-0-0000{s}-of-00002.{file_format}'
      for w in ('20261124T080000Z-20261124T080100Z',
                '20261124T080100Z-20261124T080200Z') for s in (0, 1)]
  got = [r for path in paths
         for r in read_row_file(path, file_format, COLUMNS)]
  ids = [r['event_id'] for r in got]
  assert sorted(ids) == sorted(r['event_id'] for r in want)
  assert len(set(ids)) == len(ids)
  scores = {r['event_id']: r['score'] for r in got}
  for w in want:
    if file_format == 'tfrecord':  # float32 in tf.train.Example
      assert math.isclose(scores[w['event_id']], w['score'], rel_tol=1e-6)
    else:
      assert scores[w['event_id']] == w['score']
  # The temporary objects went to a sibling prefix and were renamed away.
  assert gcs_files(out + '.tmp') == []


# --- BigQuery -------------------------------------------------------------------

def test_streaming_inserts_on_the_streaming_runner(bq_emulator):
  table = bq_emulator.table('stream')
  w1, w2 = make_rows('s1', 30, W1, 3), make_rows('s2', 12, W2, 4)
  bad = make_rows('nan', 1, W2, 5)
  bad[0]['score'] = float('nan')
  stream = (test_stream.TestStream()
            .advance_watermark_to(T0)
            .add_elements([TimestampedValue(w1, T0 + 5)])
            .add_elements([TimestampedValue(w2 + bad, T0 + 65)])
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    dead = (p | stream
            | beam.WindowInto(window_lib.FixedWindows(60))
            | WritePredictionsToBigQuery(table, COLUMNS, streaming=True,
                                         endpoint=bq_emulator.endpoint))
    assert_that(dead | beam.Map(lambda d: (d.stage, d.reason, d.event_id)),
                equal_to([('sink', BIGQUERY_INVALID_ROW, 'nan-0')]))
  assert_table_equals(bq_emulator.query_rows(table), w1 + w2)


def test_file_loads_on_fnapi_runner(gcs_emulator, bq_emulator):
  table = bq_emulator.table('loads')
  batches = [(T0 + 1, make_rows('l1', 50, W1, 6)),
             (T0 + 70, make_rows('l2', 20, W2, 7))]
  want = [r for _, rows in batches for r in rows]
  temp = gcs_emulator.unique_prefix('bq-temp')
  with beam.Pipeline(runner=FnApiRunner(),
                     options=PipelineOptions(project=bq_emulator.project)) as p:
    dead = batch_windowed(p, batches) | WritePredictionsToBigQuery(
        table, COLUMNS, streaming=False, endpoint=bq_emulator.endpoint,
        temp_location=temp)
    assert_that(dead, equal_to([]))
  assert_table_equals(bq_emulator.query_rows(table), want)


def test_one_pipeline_writes_files_bigquery_and_a_list(gcs_emulator,
                                                       bq_emulator):
  _COLLECTED.clear()
  out = gcs_emulator.unique_prefix('all-sinks')
  table = bq_emulator.table('all_sinks')
  w1, w2 = make_rows('m1', 20, W1, 8), make_rows('m2', 15, W2, 9)
  stream = (test_stream.TestStream()
            .advance_watermark_to(T0)
            .add_elements([TimestampedValue(w1, T0 + 5)])
            .advance_watermark_to(T0 + 60)
            .add_elements([TimestampedValue(w2, T0 + 65)])
            .advance_watermark_to_infinity())
  with streaming_pipeline() as p:
    rows = p | stream | 'Fixed60' >> beam.WindowInto(
        window_lib.FixedWindows(60))
    written = rows | 'Files' >> WritePredictionFiles(out, 'jsonl', COLUMNS)
    dead = rows | 'BigQuery' >> WritePredictionsToBigQuery(
        table, COLUMNS, streaming=True, endpoint=bq_emulator.endpoint)
    _ = rows | 'ListSink' >> beam.Map(_collect)
    assert_that(written | beam.Map(lambda f: (f.window, f.shard)),
                equal_to([(w, s) for w in ('20261124T080000Z-20261124T080100Z',
                                           '20261124T080100Z-20261124T080200Z')
                          for s in (0, 1)]), label='Files')
    assert_that(dead, equal_to([]), label='NoDeadLetters')
  want = w1 + w2
  got_files = [r for path in gcs_files(out)
               for r in read_row_file(path, 'jsonl')]
  assert sorted(r['event_id'] for r in got_files) == sorted(
      r['event_id'] for r in want)
  assert_table_equals(bq_emulator.query_rows(table), want)
  assert sorted(_COLLECTED) == sorted(r['event_id'] for r in want)


# --- the guard ---------------------------------------------------------------------

@pytest.mark.parametrize('host', [
    'bigquery.googleapis.com', 'storage.googleapis.com',
    'oauth2.googleapis.com', 'accounts.google.com',
    'metadata.google.internal', '169.254.169.254'])
def test_guard_blocks_google_endpoints(host):
  with GoogleEndpointGuard() as guard:
    with pytest.raises(GoogleEndpointBlocked):
      socket.getaddrinfo(host, 443)
    with pytest.raises(GoogleEndpointBlocked):
      socket.create_connection((host, 443), timeout=1)
    # Local addresses stay reachable.
    socket.getaddrinfo('127.0.0.1', 80)
  assert [a[1] for a in guard.attempts] == [host, host]


def test_guard_fails_a_test_that_swallowed_the_error(tmp_path):
  """A test whose code catches the blocked connection still FAILS."""
  (tmp_path / 'pytest.ini').write_text(textwrap.dedent("""\
      [pytest]
      markers =
          gcp: uses GCP emulators
      """))
  (tmp_path / 'inner_test.py').write_text(textwrap.dedent("""\
      import socket
      import pytest

      @pytest.mark.gcp
      def test_reaches_google():
        try:
          socket.getaddrinfo('bigquery.googleapis.com', 443)
        except OSError:
          pass  # a client library retrying or giving up quietly

      def test_unmarked_is_not_guarded():
        pass
      """))
  tests_dir = pathlib.Path(__file__).resolve().parent
  proc = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-p', 'emulators',
       '-p', 'no:cacheprovider', str(tmp_path)],
      cwd=tmp_path, capture_output=True, text=True, timeout=120,
      env={**os.environ, 'PYTHONPATH': str(tests_dir)})
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert '1 failed, 1 passed' in proc.stdout, proc.stdout
  assert ('tried to reach real Google endpoints: '
          'getaddrinfo(bigquery.googleapis.com:443)') in proc.stdout
