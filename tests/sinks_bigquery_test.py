"""WritePredictionsToBigQuery without an emulator: schema, row checks, and
BigQuery's per-row insert errors -> DeadLetters (the emulator does not
reproduce per-row errors: docs/testing.md).

The fake client below answers ``insert_rows_json`` exactly as
google-cloud-bigquery does: a list of ``insertErrors`` entries
``{'index': i, 'errors': [{'reason', 'location', 'debugInfo', 'message'}]}``
(``Client.insert_rows_json`` returns ``response.get('insertErrors', [])``),
or raises a ``GoogleAPICallError`` for a whole rejected request. Beam's own
BigQueryWriteFn runs on top of it, so the retry policy tested is Beam's.
"""

import collections
import math
import pickle
import types

import apache_beam as beam
import orjson
import pytest
from apache_beam.io.gcp.internal.clients import bigquery as apitools_bq
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from google.api_core import exceptions as api_exceptions

from transforms import prediction_rows as output, schema
from transforms.dead_letters import DeadLetter
from transforms.sinks import bigquery as bq
from transforms.sinks.bigquery import (BIGQUERY_INSERT_ERROR,
                                       BIGQUERY_INVALID_ROW,
                                       WritePredictionsToBigQuery)

pytestmark = pytest.mark.gcp

COLUMNS = output.output_columns(schema.resolve('susy'))
TYPES = dict(COLUMNS)


def row(eid, **overrides):
  r = {name: None for name, _ in COLUMNS}
  r.update(event_id=eid, key='k', window_start=60.0, window_end=120.0,
           score=0.25, model_version=3, event_time=61.5, read_time=62.0,
           scored_time=62.5, late=False, win_count=4)
  r.update(overrides)
  return r


# --- schema and row checks --------------------------------------------------------

def test_schema_from_output_columns():
  s = bq.bigquery_schema(COLUMNS)
  assert s['fields'][:5] == [
      {'name': 'event_id', 'type': 'STRING', 'mode': 'NULLABLE'},
      {'name': 'key', 'type': 'STRING', 'mode': 'NULLABLE'},
      {'name': 'window_start', 'type': 'FLOAT', 'mode': 'NULLABLE'},
      {'name': 'window_end', 'type': 'FLOAT', 'mode': 'NULLABLE'},
      {'name': 'score', 'type': 'FLOAT', 'mode': 'NULLABLE'}]
  assert [f['name'] for f in s['fields']] == [n for n, _ in COLUMNS]
  assert {f['type'] for f in s['fields']} == {'STRING', 'FLOAT', 'INTEGER',
                                              'BOOLEAN'}
  assert {f['mode'] for f in s['fields']} == {'NULLABLE'}
  # Beam accepts it as a TableSchema.
  from apache_beam.io.gcp import bigquery_tools
  parsed = bigquery_tools.parse_table_schema_from_json(orjson.dumps(s).decode())
  assert [f.name for f in parsed.fields] == [n for n, _ in COLUMNS]
  with pytest.raises(ValueError, match='TIMESTAMP'):
    bq.bigquery_schema([('t', 'TIMESTAMP')])


@pytest.mark.parametrize('overrides,problem', [
    ({}, None),
    ({'label': None, 'score': None}, None),                # NULLs are fine
    ({'score': 1}, None),                                  # int for FLOAT
    ({'score': float('nan')}, 'score: nan is not a finite FLOAT'),
    ({'score': float('inf')}, 'score: inf is not a finite FLOAT'),
    ({'score': '0.5'}, 'score: FLOAT expected, got str'),
    ({'score': True}, 'score: FLOAT expected, got bool'),
    ({'model_version': 3.0}, 'model_version: INTEGER expected, got float'),
    ({'model_version': True}, 'model_version: INTEGER expected, got bool'),
    ({'late': 1}, 'late: BOOLEAN expected, got int'),
    ({'event_id': 7}, 'event_id: STRING expected, got int'),
    ({'extra': 1}, 'extra: no such column'),
])
def test_row_problem(overrides, problem):
  assert bq.row_problem(row('e', **overrides), TYPES) == problem


def test_row_problem_not_a_dict():
  assert bq.row_problem(['e'], TYPES) == 'row is a list, not a dict'


# --- insertErrors -> DeadLetter ------------------------------------------------------

# One entry of insertErrors as BigQuery's tabledata.insertAll returns it.
INVALID_SCORE = {
    'index': 0,
    'errors': [{'reason': 'invalid', 'location': 'score', 'debugInfo': '',
                'message': 'Cannot convert value to floating point (bad '
                           'value): abc'}]}


def test_failed_row_becomes_a_dead_letter():
  r = row('e-1')
  d = bq.failed_row_dead_letter(('proj-1:ds.t', r, INVALID_SCORE['errors']))
  assert isinstance(d, DeadLetter)
  assert (d.stage, d.reason, d.source, d.event_id) == (
      'sink', BIGQUERY_INSERT_ERROR, 'bigquery:proj-1:ds.t', 'e-1')
  assert d.detail == ('invalid at score: Cannot convert value to floating '
                      'point (bad value): abc')
  assert orjson.loads(d.payload) == r
  assert DeadLetter.from_dict(orjson.loads(d.to_json())).payload == d.payload


def test_insert_error_details():
  assert bq.insert_errors_detail([
      {'reason': 'invalid', 'location': 'late', 'debugInfo': '',
       'message': 'no such field: late2.'},
      {'reason': 'stopped', 'location': '', 'debugInfo': '', 'message': ''},
  ]) == 'invalid at late: no such field: late2.; stopped'
  # Beam refuses rows above the payload limit itself, with a string.
  too_big = 'Received row with size 11MB that exceeds the maximum'
  assert bq.insert_errors_detail(too_big) == too_big
  assert bq.insert_errors_detail([]) == 'rejected by BigQuery (no error given)'


# --- Beam's WriteToBigQuery on a fake client ------------------------------------------

# Per table: inserted rows, calls. Module-level: the runner pickles the client.
_INSERTED = collections.defaultdict(list)
_CALLS = collections.Counter()


class _FakeTables:

  def Get(self, request):  # pylint: disable=invalid-name
    ref = apitools_bq.TableReference(projectId=request.projectId,
                                     datasetId=request.datasetId,
                                     tableId=request.tableId)
    return apitools_bq.Table(tableReference=ref)


class FakeBigQueryClient:
  """insert_rows_json like google-cloud-bigquery's, by event id:

  * ``reject-*``: insertErrors 'invalid' (permanent);
  * ``flaky-*``: 'backendError' on the first attempt (transient), then ok;
  * ``down-*``: 'backendError' always;
  * ``badrequest-*``: the whole request fails with HTTP 400;
  * others: inserted.
  """

  tables = _FakeTables()

  def insert_rows_json(self, table, json_rows, row_ids=None,
                       skip_invalid_rows=None, ignore_unknown_values=None,
                       timeout=None):
    _CALLS[table] += 1
    if any(r['event_id'].startswith('badrequest') for r in json_rows):
      raise api_exceptions.BadRequest(
          'Invalid JSON payload received.',
          response=types.SimpleNamespace(reason='Bad Request'))
    errors = []
    for i, r in enumerate(json_rows):
      eid = r['event_id']
      if eid.startswith('reject'):
        errors.append({'index': i, 'errors': [dict(
            INVALID_SCORE['errors'][0])]})
      elif eid.startswith('down') or (
          eid.startswith('flaky') and (table, eid) not in _SEEN_FLAKY):
        _SEEN_FLAKY.add((table, eid))
        errors.append({'index': i, 'errors': [{
            'reason': 'backendError', 'location': '', 'debugInfo': '',
            'message': 'Backend error. Please try again.'}]})
    failed = {e['index'] for e in errors}
    _INSERTED[table].extend(
        r for i, r in enumerate(json_rows) if i not in failed)
    return errors


_SEEN_FLAKY: set = set()


def run_write(table, batches, expected, **kwargs):
  """Streaming inserts of ``batches`` through the fake; asserts the dead
  letters as (reason, event id, detail)."""
  with beam.Pipeline(runner=FnApiRunner(),
                     options=PipelineOptions(project='proj-1')) as p:
    dead = (p | beam.Create(batches)
            | WritePredictionsToBigQuery(
                table, COLUMNS, method='streaming_inserts', streaming=False,
                test_client=FakeBigQueryClient(), **kwargs))
    assert_that(dead | beam.Map(lambda d: (d.reason, d.event_id, d.detail)),
                equal_to(expected))


def test_rejected_rows_come_back_as_dead_letters():
  table = 'proj-1:ds.rejects'
  ref = 'proj-1.ds.rejects'
  batches = [[row(f'ok-{i}') for i in range(5)] + [row('reject-0')],
             [row('flaky-0'), row('nan-0', score=float('nan')),
              row('reject-1', score=2.0), row('ok-5')]]
  expected = [
      (BIGQUERY_INSERT_ERROR, 'reject-0',
       'invalid at score: Cannot convert value to floating point (bad '
       'value): abc'),
      (BIGQUERY_INSERT_ERROR, 'reject-1',
       'invalid at score: Cannot convert value to floating point (bad '
       'value): abc'),
      (BIGQUERY_INVALID_ROW, 'nan-0', 'score: nan is not a finite FLOAT'),
  ]
  run_write(table, batches, expected)
  inserted = sorted(r['event_id'] for r in _INSERTED[ref])
  # Each good row once; the flaky one after a retry; nothing else.
  assert inserted == sorted([f'ok-{i}' for i in range(6)] + ['flaky-0'])
  # The invalid row was never sent.
  assert all(r['event_id'] != 'nan-0' for r in _INSERTED[ref])


def test_transient_errors_exhausting_retries_are_dead_letters():
  table = 'proj-1:ds.down'
  run_write(table, [[row('down-0'), row('ok-0')]],
            [(BIGQUERY_INSERT_ERROR, 'down-0',
              'backendError: Backend error. Please try again.')],
            max_retries=2)
  assert [r['event_id'] for r in _INSERTED['proj-1.ds.down']] == ['ok-0']
  assert _CALLS['proj-1.ds.down'] == 3  # first attempt + 2 retries


def test_whole_request_rejected_dead_letters_every_row():
  table = 'proj-1:ds.badrequest'
  run_write(table, [[row('badrequest-0'), row('ok-0')]],
            [(BIGQUERY_INSERT_ERROR, eid,
              'Bad Request: Invalid JSON payload received.')
             for eid in ('badrequest-0', 'ok-0')])
  assert _INSERTED['proj-1.ds.badrequest'] == []
  assert _CALLS['proj-1.ds.badrequest'] == 1  # 400 is permanent: no retry


# --- configuration --------------------------------------------------------------------

def test_method_resolution_and_validation():
  assert WritePredictionsToBigQuery(
      'proj-1:ds.t', COLUMNS, streaming=True).resolved_method() == 'streaming_inserts'
  assert WritePredictionsToBigQuery(
      'proj-1:ds.t', COLUMNS, streaming=False).resolved_method() == 'file_loads'
  assert WritePredictionsToBigQuery(
      'proj-1:ds.t', COLUMNS, streaming=True,
      method='file_loads').resolved_method() == 'file_loads'
  with pytest.raises(ValueError, match='method'):
    WritePredictionsToBigQuery('proj-1:ds.t', COLUMNS, streaming=True, method='x')
  with pytest.raises(ValueError, match='not both'):
    WritePredictionsToBigQuery('proj-1:ds.t', COLUMNS, streaming=True,
                               endpoint='http://x:1', test_client=object())


def test_file_loads_need_a_gcs_temp_location():
  p = beam.Pipeline(options=PipelineOptions(temp_location='/tmp/x'))
  with pytest.raises(ValueError, match='gs:// temp location'):
    _ = p | beam.Create([[row('e')]]) | WritePredictionsToBigQuery(
        'proj-1:ds.t', COLUMNS, streaming=False)


def test_table_without_project_needs_project_option():
  p = beam.Pipeline(options=PipelineOptions())
  with pytest.raises(ValueError, match='no project'):
    _ = p | beam.Create([[row('e')]]) | WritePredictionsToBigQuery(
        'd.t', COLUMNS, streaming=True)


def test_endpoint_client_builds_lazily_and_pickles_small():
  c = bq._EndpointClient('http://127.0.0.1:9050/', 'proj')
  assert c.anonymous
  assert c._apitools is None and c._cloud is None  # nothing built yet
  assert c.apitools().url == 'http://127.0.0.1:9050/bigquery/v2/'
  assert c.tables is c.apitools().tables
  assert c.cloud()._connection.API_BASE_URL == 'http://127.0.0.1:9050'
  clone = pickle.loads(pickle.dumps(c))
  assert (clone.endpoint, clone.project, clone._apitools) == (
      'http://127.0.0.1:9050', 'proj', None)
  assert callable(c.test_clock) and math.isfinite(c.test_clock())
  assert not bq._EndpointClient('https://bq.example.internal', 'p').anonymous
  with pytest.raises(ValueError, match='endpoint'):
    bq._EndpointClient('127.0.0.1:9050', 'p')
