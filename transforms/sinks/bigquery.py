"""Prediction rows to BigQuery; rejected rows come back as dead letters.

``WritePredictionsToBigQuery`` flattens the lists of rows, checks each row
against the columns, and writes with Beam's ``WriteToBigQuery``
(``CREATE_IF_NEEDED``, ``WRITE_APPEND``, schema from the columns): streaming
inserts for streaming jobs, file loads for batch jobs (``method`` overrides).
It returns the PCollection of DeadLetters for rows that were not written
(stage ``sink``), in the GlobalWindow like every other dead letter.

Endpoint override (``endpoint``, the jobs' ``--bq_endpoint``): Beam 2.77 has
no BigQuery endpoint option. Its ``WriteToBigQuery(test_client=...)`` hook
takes one client object that Beam uses both as its apitools BigQuery client
(tables, datasets, jobs) and as its google-cloud-bigquery client
(``insert_rows_json``). ``_EndpointClient`` is that object, pointed at the
endpoint: an emulator or a private endpoint (Private Service Connect,
``https://bigquery-<name>.p.googleapis.com``). Credentials: ``http://``
endpoints (emulators) are called anonymously, never with a token in clear
text; ``https://`` endpoints with Application Default Credentials. Clients
are built lazily on first use in each worker (the object pickles to its
endpoint and project). Beam's docstring calls the hook "for testing"; the
code path is the same one Beam uses with its own clients.

Retry policy:
  * rows that cannot be valid (a value of the wrong type, NaN or infinity in
    a FLOAT, a column the table does not have) are not sent: dead letters
    with reason ``bigquery_invalid_row``. NaN would otherwise break Beam's
    JSON encoding of a whole file load, and one bad row would fail a whole
    load job.
  * streaming inserts: Beam's ``BigQueryWriteFn`` with
    ``RETRY_ON_TRANSIENT_ERROR``. Rows BigQuery rejects with a permanent
    reason (``invalid``, ``invalidQuery``, ``notImplemented``, or a whole
    request answered 400/401/403/404/501) become dead letters with reason
    ``bigquery_insert_error``, detail = BigQuery's reason, location and
    message, payload = the row as JSON. Transient ones (``backendError``,
    ``internalError``, ``timeout``, ``stopped``, HTTP 429/5xx) are retried with
    fuzzed exponential backoff (0.2 s up to 25 min between attempts) up to
    ``max_retries`` times (Beam's default, 10000: in effect until it works,
    which holds the pipeline back instead of dropping rows), then dead
    letters with the last error. Connection errors and table creation
    errors raise: the runner retries the bundle.
  * file loads: no per-row results exist; a failed load job raises and the
    runner retries, then fails the pipeline. Only ``bigquery_invalid_row``
    dead letters come back.
"""

import logging
import math
import time
from typing import Any, Optional, Sequence

import apache_beam as beam
import orjson
from apache_beam import pvalue
from apache_beam.io.gcp import bigquery as beam_bq
from apache_beam.io.gcp import bigquery_tools
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import GoogleCloudOptions
from apache_beam.transforms import window as window_lib

from transforms.dead_letters import DeadLetter
from transforms.sinks.files import check_columns

_LOGGER = logging.getLogger(__name__)
_NAMESPACE = 'bigquery_sink'

SINK_STAGE = 'sink'
BIGQUERY_INSERT_ERROR = 'bigquery_insert_error'
BIGQUERY_INVALID_ROW = 'bigquery_invalid_row'
METHODS = ('auto', 'streaming_inserts', 'file_loads')
_INVALID_TAG = 'invalid_rows'

_SCOPES = ('https://www.googleapis.com/auth/bigquery',
           'https://www.googleapis.com/auth/cloud-platform')


def bigquery_schema(columns: Sequence[tuple[str, str]]) -> dict:
  """The table schema of ``columns`` for WriteToBigQuery: every field
  NULLABLE, types as given (STRING, FLOAT, INTEGER, BOOLEAN)."""
  return {'fields': [{'name': name, 'type': typ, 'mode': 'NULLABLE'}
                     for name, typ in check_columns(columns)]}


def _type_problem(name: str, typ: str, v) -> Optional[str]:
  if typ == 'FLOAT':
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      return f'{name}: FLOAT expected, got {type(v).__name__}'
    if not math.isfinite(v):
      return f'{name}: {v} is not a finite FLOAT'
    return None
  if typ == 'STRING':
    return None if isinstance(v, str) else (
        f'{name}: STRING expected, got {type(v).__name__}')
  if typ == 'INTEGER':
    return None if isinstance(v, int) and not isinstance(v, bool) else (
        f'{name}: INTEGER expected, got {type(v).__name__}')
  return None if isinstance(v, bool) else (
      f'{name}: BOOLEAN expected, got {type(v).__name__}')


def row_problem(row: Any, types: dict[str, str]) -> Optional[str]:
  """Why ``row`` cannot be written to a table of ``types`` (column ->
  type), or None. Missing columns are fine (NULL)."""
  if not isinstance(row, dict):
    return f'row is a {type(row).__name__}, not a dict'
  for name, v in row.items():
    typ = types.get(name)
    if typ is None:
      return f'{name}: no such column'
    if v is not None:
      problem = _type_problem(name, typ, v)
      if problem:
        return problem
  return None


def _row_json(row) -> bytes:
  try:
    return orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY)
  except TypeError:
    return repr(row).encode('utf-8', 'replace')


def _event_id(row) -> Optional[str]:
  v = row.get('event_id') if isinstance(row, dict) else None
  return v if isinstance(v, str) else None


def insert_errors_detail(errors) -> str:
  """BigQuery's per-row errors (the ``errors`` list of one ``insertErrors``
  entry: dicts with reason, location, debugInfo, message) as one line.
  Beam passes a plain string for rows it refused itself (too large)."""
  if isinstance(errors, str):
    return errors
  parts = []
  for e in errors or []:
    if not isinstance(e, dict):
      parts.append(str(e))
      continue
    text = e.get('reason') or 'error'
    if e.get('location'):
      text += f' at {e["location"]}'
    if e.get('message'):
      text += f': {e["message"]}'
    parts.append(text)
  return '; '.join(parts) or 'rejected by BigQuery (no error given)'


def failed_row_dead_letter(failed) -> DeadLetter:
  """One element of ``WriteResult.failed_rows_with_errors`` -- (destination
  table, row dict, errors) -- as a DeadLetter."""
  destination, row, errors = failed
  return DeadLetter(
      stage=SINK_STAGE, reason=BIGQUERY_INSERT_ERROR,
      detail=insert_errors_detail(errors), payload=_row_json(row),
      source=f'bigquery:{destination}', position=-1,
      event_id=_event_id(row))


class _FlattenAndCheck(beam.DoFn):
  """list of rows -> rows; rows that cannot be valid -> dead letters."""

  def __init__(self, columns, table: str):
    self._types = dict(columns)
    self._table = table
    self._invalid = Metrics.counter(_NAMESPACE, 'invalid_rows')
    # Rows handed to BigQuery; written = sent - rejected_rows.
    self._sent = Metrics.counter(_NAMESPACE, 'rows_sent')

  def process(self, rows):
    types = self._types
    for row in rows:
      problem = row_problem(row, types)
      if problem is None:
        self._sent.inc()
        yield row
      else:
        self._invalid.inc()
        yield pvalue.TaggedOutput(_INVALID_TAG, DeadLetter(
            stage=SINK_STAGE, reason=BIGQUERY_INVALID_ROW, detail=problem,
            payload=_row_json(row), source=f'bigquery:{self._table}',
            position=-1, event_id=_event_id(row)))


class _CountRejected(beam.DoFn):

  def __init__(self):
    self._rejected = Metrics.counter(_NAMESPACE, 'rejected_rows')

  def process(self, failed):
    self._rejected.inc()
    yield failed_row_dead_letter(failed)


class _EndpointClient:
  """The client object Beam's ``test_client`` hook expects, on an endpoint.

  Beam's BigQueryWrapper uses it as the apitools ``BigqueryV2`` client
  (``.tables``, ``.datasets``, ``.jobs``, ``.tabledata``) and as the
  google-cloud-bigquery client (``.insert_rows_json``). Both are built on
  first use and dropped when pickled.
  """

  # Read by Beam's file loads with auto-sharding.
  test_clock = staticmethod(time.time)

  def __init__(self, endpoint: str, project: Optional[str]):
    if not endpoint.startswith(('http://', 'https://')):
      raise ValueError(f'BigQuery endpoint {endpoint!r}: expected '
                       'http://host:port or https://host')
    self.endpoint = endpoint.rstrip('/')
    self.project = project
    self._apitools = None
    self._cloud = None
    self._credentials = None

  def __getstate__(self):
    return {'endpoint': self.endpoint, 'project': self.project}

  def __setstate__(self, state):
    self.__init__(state['endpoint'], state['project'])

  @property
  def anonymous(self) -> bool:
    return self.endpoint.startswith('http://')

  def _creds(self):
    if self._credentials is None:
      if self.anonymous:
        from google.auth.credentials import AnonymousCredentials  # pylint: disable=import-outside-toplevel
        self._credentials = AnonymousCredentials()
      else:
        import google.auth  # pylint: disable=import-outside-toplevel
        self._credentials, _ = google.auth.default(scopes=list(_SCOPES))
    return self._credentials

  def apitools(self):
    if self._apitools is None:
      import httplib2  # pylint: disable=import-outside-toplevel
      from apache_beam.io.gcp.internal.clients import bigquery as apitools_bq  # pylint: disable=import-outside-toplevel
      http = httplib2.Http(timeout=60)
      if not self.anonymous:
        import google_auth_httplib2  # pylint: disable=import-outside-toplevel
        http = google_auth_httplib2.AuthorizedHttp(self._creds(), http=http)
      self._apitools = apitools_bq.BigqueryV2(
          url=f'{self.endpoint}/bigquery/v2/', http=http, credentials=None,
          get_credentials=False, response_encoding='utf8')
    return self._apitools

  def cloud(self):
    if self._cloud is None:
      from google.cloud import bigquery as gcb  # pylint: disable=import-outside-toplevel
      self._cloud = gcb.Client(
          project=self.project, credentials=self._creds(),
          client_options={'api_endpoint': self.endpoint})
    return self._cloud

  def insert_rows_json(self, *args, **kwargs):
    return self.cloud().insert_rows_json(*args, **kwargs)

  def __getattr__(self, name):
    # tables, datasets, jobs, tabledata, ...: the apitools services.
    if name.startswith('_') or name in ('endpoint', 'project'):
      raise AttributeError(name)
    return getattr(self.apitools(), name)


class WritePredictionsToBigQuery(beam.PTransform):
  """Lists of prediction rows -> BigQuery table; returns DeadLetters.

  See the module docstring for methods, endpoint and retry policy.
  """

  def __init__(self, table: str, columns: Sequence[tuple[str, str]], *,
               method: str = 'auto', streaming: bool,
               endpoint: Optional[str] = None,
               temp_location: Optional[str] = None,
               triggering_frequency_s: int = 60,
               batch_size: Optional[int] = None,
               max_retries: int = beam_bq.MAX_INSERT_RETRIES,
               test_client: Any = None):
    """Configures the write.

    Args:
      table: PROJECT:DATASET.TABLE (or DATASET.TABLE with --project).
      columns: (name, type) pairs; the table schema when it is created.
      method: auto (streaming inserts when streaming, else file loads),
        streaming_inserts or file_loads.
      streaming: whether the pipeline streams.
      endpoint: BigQuery API root, e.g. http://127.0.0.1:9050 (default:
        Google's).
      temp_location: gs:// directory for file loads (default: the
        pipeline's --temp_location).
      triggering_frequency_s: seconds between load jobs for file loads in a
        streaming pipeline.
      batch_size: rows per insertAll request (default: Beam's, 500).
      max_retries: attempts for rows with transient insert errors.
      test_client: a client object for Beam's hook (tests); excludes
        endpoint.
    """
    super().__init__()
    if method not in METHODS:
      raise ValueError(f'BigQuery method {method!r}: use one of {METHODS}')
    if endpoint and test_client is not None:
      raise ValueError('give endpoint or test_client, not both')
    self._table = table
    self._ref = bigquery_tools.parse_table_reference(table)
    self._columns = check_columns(columns)
    self._schema = bigquery_schema(self._columns)
    self._method = method
    self._streaming = streaming
    self._endpoint = endpoint
    self._temp_location = temp_location
    self._triggering_frequency_s = triggering_frequency_s
    self._batch_size = batch_size
    self._max_retries = max_retries
    self._test_client = test_client

  def resolved_method(self) -> str:
    if self._method != 'auto':
      return self._method
    return 'streaming_inserts' if self._streaming else 'file_loads'

  def expand(self, pcoll):
    options = pcoll.pipeline.options.view_as(GoogleCloudOptions)
    project = self._ref.projectId or options.project
    if not project:
      raise ValueError(f'BigQuery table {self._table!r} has no project and '
                       'the pipeline has no --project')
    table = f'{project}:{self._ref.datasetId}.{self._ref.tableId}'
    method = self.resolved_method()
    client = self._test_client
    if self._endpoint:
      client = _EndpointClient(self._endpoint, project)
    kwargs = {}
    if method == 'file_loads':
      temp = self._temp_location or options.temp_location
      if not (temp and temp.startswith('gs://')):
        raise ValueError(
            'BigQuery file loads need a gs:// temp location (--temp_location '
            f'or temp_location=), got {temp!r}')
      kwargs.update(
          method=beam_bq.WriteToBigQuery.Method.FILE_LOADS,
          custom_gcs_temp_location=temp,
          temp_file_format=bigquery_tools.FileFormat.JSON)
      if self._streaming:
        kwargs['triggering_frequency'] = self._triggering_frequency_s
    else:
      kwargs.update(
          method=beam_bq.WriteToBigQuery.Method.STREAMING_INSERTS,
          insert_retry_strategy=(
              bigquery_tools.RetryStrategy.RETRY_ON_TRANSIENT_ERROR),
          max_retries=self._max_retries)
      if self._batch_size:
        kwargs['batch_size'] = self._batch_size

    checked = pcoll | 'FlattenAndCheckRows' >> beam.ParDo(
        _FlattenAndCheck(self._columns, table)).with_outputs(
            _INVALID_TAG, main='rows')
    result = checked.rows | 'WriteToBigQuery' >> beam_bq.WriteToBigQuery(
        table, schema=self._schema,
        create_disposition=beam_bq.BigQueryDisposition.CREATE_IF_NEEDED,
        write_disposition=beam_bq.BigQueryDisposition.WRITE_APPEND,
        test_client=client, **kwargs)
    dead = [checked[_INVALID_TAG]
            | 'InvalidIntoGlobalWindow' >> beam.WindowInto(
                window_lib.GlobalWindows())]
    if method == 'streaming_inserts':
      dead.append(result.failed_rows_with_errors
                  | 'RejectedToDeadLetters' >> beam.ParDo(_CountRejected())
                  | 'RejectedIntoGlobalWindow' >> beam.WindowInto(
                      window_lib.GlobalWindows()))
    return tuple(dead) | 'DeadLetters' >> beam.Flatten()


__all__: Sequence[str] = [
    'BIGQUERY_INSERT_ERROR', 'BIGQUERY_INVALID_ROW', 'METHODS', 'SINK_STAGE',
    'WritePredictionsToBigQuery', 'bigquery_schema', 'failed_row_dead_letter',
    'insert_errors_detail', 'row_problem',
]
