#!/usr/bin/env bash
# Launches one of the jobs on Google Cloud Dataflow, the command line built
# from environment variables. Run ./run_dataflow.sh --help for the list.
#
#   PROJECT=p REGION=europe-west1 BUCKET=b SERVICE_ACCOUNT=sa@p.iam.gserviceaccount.com \
#     ./run_dataflow.sh score_stream --bootstrap_servers 10.0.0.2:9092 \
#       --input_topic events --output_topic predictions \
#       --dead_letter_topic events-dlq --model_dir gs://b/models/susy \
#       --kafka_config @gs://b/secrets/client.properties
#
#   ./run_dataflow.sh --dry-run score_stream ...   # print + build offline
#   ./run_dataflow.sh --print score_stream ...     # print the command only
set -euo pipefail
cd "$(dirname "$0")"

JOBS="score_stream backfill ingest_examples"

usage() {
  cat <<'EOF'
usage: ./run_dataflow.sh [--dry-run|--print] JOB [job flags...]

JOB: score_stream (streaming), backfill (batch), ingest_examples (batch).
Job flags go to `python -m beam_jobs.JOB` unchanged (see its --help);
worker paths must be gs:// (--model_dir, --output_path, ...), and Kafka
secrets must come by reference: --kafka_config @gs://B/client.properties,
--kafka_config @secret:projects/P/secrets/S[/versions/V], or
--kafka_config sasl.password=@secret:projects/P/secrets/S.

  --dry-run   print the command, then build the job graph with Beam's
              DataflowRunner --dry_run=True: validated and translated into
              the Dataflow job, nothing staged or submitted, no credentials
              needed (reading --kafka_config @gs:// files still needs GCS).
              DRY_RUN_OUT=DIR also writes DIR/pipeline.pb (the portable
              pipeline Dataflow runs), DIR/pipeline.txt and DIR/options.json.
  --print     print the command only.

Required environment:
  PROJECT            GCP project id                    -> --project
  REGION             Dataflow region                   -> --region
  TEMP_LOCATION      gs:// prefix for temp files       -> --temp_location
   or BUCKET         uses gs://$BUCKET/tmp (and gs://$BUCKET/staging)
  SERVICE_ACCOUNT    worker service account e-mail     -> --service_account_email
                     (needs Dataflow Worker, storage access to the buckets,
                     Secret Manager Secret Accessor for @secret: references);
                     SERVICE_ACCOUNT=default uses the Compute Engine default

Optional environment:
  STAGING_LOCATION   gs:// prefix for staged files (default gs://$BUCKET/staging,
                     else Beam's default: TEMP_LOCATION)
  NETWORK            VPC network name                  -> --network
  SUBNETWORK         regions/R/subnetworks/S or URL    -> --subnetwork
                     (workers must reach the Kafka brokers)
  PUBLIC_IPS         false: workers get no public IP   -> --no_use_public_ips
                     (then workers need Private Google Access, and Cloud NAT
                     to pip-install from PyPI unless SDK_CONTAINER_IMAGE)
  MACHINE_TYPE       worker machine type (default n2-standard-4)
  MAX_WORKERS        autoscaling limit (default 10)    -> --max_num_workers
  NUM_WORKERS        initial workers                   -> --num_workers
  DISK_SIZE_GB       worker boot disk                  -> --disk_size_gb
  SDK_CONTAINER_IMAGE  worker image with this package preinstalled (built
                     from templates/score_stream/Dockerfile): replaces
                     --setup_file ./setup.py (no sdist, no pip at worker start)
  KAFKA_IO           python (default) or xlang         -> --kafka_io
                     (xlang: Java + Beam's expansion service on this machine)
  STREAMING_MODE     exactly_once (default) or at_least_once (score_stream;
                     -> --dataflow_service_options=streaming_mode_at_least_once)
  JOB_NAME           default kbi-JOB-YYYYMMDD-HHMMSS (UTC); set it to the
                     running job's name with --update
  LABELS             extra labels k=v,k=v              -> --labels
  DATAFLOW_SERVICE_OPTIONS  comma-separated extra service options
  EXPERIMENTS        comma-separated extra experiments
  KBI_PYTHON         interpreter to use instead of the project's .venv

Runner v2 and Streaming Engine: Beam 2.77 adds use_runner_v2 to every
Dataflow job (it cannot be turned off) and Streaming Engine
(enable_streaming_engine, enable_windmill_service) to every streaming job;
--enable_streaming_engine is a deprecated no-op. The command names Runner v2
explicitly anyway. See docs/operations.md.
EOF
}

die() { echo "error: $*" >&2; exit 2; }

MODE=run
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --dry-run) MODE=dry-run; shift ;;
    --print) MODE=print; shift ;;
    -*) die "unknown option $1 (options come before the job name; --help)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { usage >&2; exit 2; }
JOB="$1"; shift
case " $JOBS " in
  *" $JOB "*) ;;
  *) die "unknown job '$JOB': choose one of $JOBS" ;;
esac
for arg in "$@"; do
  case "$arg" in
    --runner|--runner=*|--project|--project=*|--region|--region=*)
      die "$arg: set it through the environment (--help), not as a job flag" ;;
  esac
done

need() {  # need VAR "what it is"
  [ -n "${!1:-}" ] || die "set $1 ($2); ./run_dataflow.sh --help lists the settings"
}
need PROJECT "the GCP project id"
need REGION "the Dataflow region, e.g. europe-west1"
if [ -z "${TEMP_LOCATION:-}" ] && [ -z "${BUCKET:-}" ]; then
  die "set TEMP_LOCATION (gs://bucket/tmp) or BUCKET (a gs bucket name); ./run_dataflow.sh --help lists the settings"
fi
need SERVICE_ACCOUNT "the worker service account e-mail, or 'default'"

BUCKET="${BUCKET#gs://}"; BUCKET="${BUCKET%/}"
TEMP_LOCATION="${TEMP_LOCATION:-gs://$BUCKET/tmp}"
if [ -z "${STAGING_LOCATION:-}" ] && [ -n "$BUCKET" ]; then
  STAGING_LOCATION="gs://$BUCKET/staging"
fi
case "$TEMP_LOCATION" in gs://?*) ;; *) die "TEMP_LOCATION must be gs://..., got '$TEMP_LOCATION'" ;; esac
if [ -n "${STAGING_LOCATION:-}" ]; then
  case "$STAGING_LOCATION" in gs://?*) ;; *) die "STAGING_LOCATION must be gs://..., got '$STAGING_LOCATION'" ;; esac
fi
KAFKA_IO="${KAFKA_IO:-python}"
case "$KAFKA_IO" in python|xlang) ;; *) die "KAFKA_IO must be python or xlang, got '$KAFKA_IO'" ;; esac
STREAMING_MODE="${STREAMING_MODE:-exactly_once}"
case "$STREAMING_MODE" in exactly_once|at_least_once) ;; *) die "STREAMING_MODE must be exactly_once or at_least_once, got '$STREAMING_MODE'" ;; esac
if [ "$STREAMING_MODE" = at_least_once ] && [ "$JOB" != score_stream ]; then
  die "STREAMING_MODE applies to the streaming job (score_stream) only"
fi

job_dashes="${JOB//_/-}"
has_job_name=0
for arg in "$@"; do
  case "$arg" in --job_name|--job_name=*) has_job_name=1 ;; esac
done

CMD=(-m "beam_jobs.$JOB"
  --runner=DataflowRunner
  "--project=$PROJECT"
  "--region=$REGION"
  "--temp_location=$TEMP_LOCATION")
[ -n "${STAGING_LOCATION:-}" ] && CMD+=("--staging_location=$STAGING_LOCATION")
if [ "$has_job_name" = 0 ]; then
  CMD+=("--job_name=${JOB_NAME:-kbi-$job_dashes-$(date -u +%Y%m%d-%H%M%S)}")
fi
[ "$SERVICE_ACCOUNT" != default ] && CMD+=("--service_account_email=$SERVICE_ACCOUNT")
[ -n "${NETWORK:-}" ] && CMD+=("--network=$NETWORK")
[ -n "${SUBNETWORK:-}" ] && CMD+=("--subnetwork=$SUBNETWORK")
case "${PUBLIC_IPS:-}" in
  ''|true) ;;
  false) CMD+=(--no_use_public_ips) ;;
  *) die "PUBLIC_IPS must be true or false, got '$PUBLIC_IPS'" ;;
esac
CMD+=("--machine_type=${MACHINE_TYPE:-n2-standard-4}"
  "--max_num_workers=${MAX_WORKERS:-10}")
[ -n "${NUM_WORKERS:-}" ] && CMD+=("--num_workers=$NUM_WORKERS")
[ -n "${DISK_SIZE_GB:-}" ] && CMD+=("--disk_size_gb=$DISK_SIZE_GB")
if [ -n "${SDK_CONTAINER_IMAGE:-}" ]; then
  CMD+=("--sdk_container_image=$SDK_CONTAINER_IMAGE")
else
  CMD+=(--setup_file=./setup.py)
fi
CMD+=(--experiments=use_runner_v2)
IFS=',' read -r -a extra_experiments <<< "${EXPERIMENTS:-}"
for e in "${extra_experiments[@]}"; do [ -n "$e" ] && CMD+=("--experiments=$e"); done
if [ "$JOB" = score_stream ]; then
  CMD+=(--streaming)
  [ "$STREAMING_MODE" = at_least_once ] && CMD+=(--dataflow_service_options=streaming_mode_at_least_once)
fi
IFS=',' read -r -a extra_service_options <<< "${DATAFLOW_SERVICE_OPTIONS:-}"
for o in "${extra_service_options[@]}"; do [ -n "$o" ] && CMD+=("--dataflow_service_options=$o"); done
labels="kbi-job=$JOB${LABELS:+,$LABELS}"
IFS=',' read -r -a label_list <<< "$labels"
for l in "${label_list[@]}"; do [ -n "$l" ] && CMD+=("--labels=$l"); done
CMD+=("--kafka_io=$KAFKA_IO")
CMD+=("$@")

if [ -n "${KBI_PYTHON:-}" ]; then
  VENV_PYTHON="$KBI_PYTHON"
else
  # The launcher needs only the package itself; "local" shares run_local.sh's install.
  source scripts/ensure_venv.sh "local"
fi

# Printed with secret-looking values masked (sasl.password=***): the
# command may hold an inline secret that validation rejects later.
printf 'command: %s\n' "$("$VENV_PYTHON" -m transforms.redact "$VENV_PYTHON" "${CMD[@]}")"
[ "$MODE" = print ] && exit 0
if [ "$MODE" = run ]; then
  exec "$VENV_PYTHON" "${CMD[@]}"
fi

# --dry-run: validate and build the job exactly as the job module does, on
# the DataflowRunner with --dry_run=True (apache_beam 2.77
# DataflowRunner.run_pipeline returns right after translating the pipeline
# into the Dataflow job: no staging, no API call, no credentials). The job's
# preflight (model load, Kafka metadata) is not run: it needs the cluster.
echo "dry run: building the job graph with --dry_run=True (nothing is staged or submitted)"
exec "$VENV_PYTHON" - "$JOB" "${CMD[@]:2}" --dry_run=True <<'PY'
import importlib
import json
import os
import sys

import apache_beam as beam
from apache_beam.options.pipeline_options import (DebugOptions, GoogleCloudOptions,
                                                  WorkerOptions)
from apache_beam.portability.api import beam_runner_api_pb2 as rapi

from beam_jobs import logs
from beam_jobs import options as opts
from transforms import redact

logs.configure('WARNING', fmt='%(levelname)s %(name)s %(message)s')
job_name, argv = sys.argv[1], sys.argv[2:]
job = importlib.import_module(f'beam_jobs.{job_name}')
options = job.parse_options(argv)  # unknown flags: exit 2
try:
  settings = job.resolve(options)  # every job: the settings build_pipeline takes
  opts.validate_dataflow_paths(options)
except ValueError as e:
  print(f'error: {redact.mask_text(str(e))}', file=sys.stderr)
  sys.exit(2)
pipeline = beam.Pipeline(options=options)
job.build_pipeline(pipeline, settings)
result = pipeline.run()
proto = result.job.proto
graph = result.job.proto_pipeline
options = result.job.options  # as the runner completed them (experiments)
gco = options.view_as(GoogleCloudOptions)
print(f'job: {proto.name} ({proto.type_.name}), project {gco.project}, region {gco.region}')
for env_id, env in sorted(graph.components.environments.items()):
  image = rapi.DockerPayload.FromString(env.payload).container_image
  staged = []
  for dep in env.dependencies:
    name = rapi.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name
    path = rapi.ArtifactFilePayload.FromString(dep.type_payload).path
    size = os.path.getsize(path) if os.path.exists(path) else 0
    staged.append(f'{name} ({os.path.basename(path)}, {size // 1024} KiB)')
  print(f'worker image: {image}')
  print(f'staged at submission: {", ".join(staged) or "nothing"}')
print(f'experiments: {", ".join(options.view_as(DebugOptions).experiments or [])}')
print(f'service options: {", ".join(gco.dataflow_service_options or []) or "none"}')
worker = options.view_as(WorkerOptions)
print(f'workers: {worker.machine_type}, max {worker.max_num_workers}, '
      f'service account {gco.service_account_email or "(Compute Engine default)"}')
root = graph.components.transforms[graph.root_transform_ids[0]]
labels = [graph.components.transforms[t].unique_name for t in root.subtransforms]
print(f'steps ({len(labels)}): {", ".join(labels)}')
unbounded = sum(p.is_bounded == rapi.IsBounded.UNBOUNDED
                for p in graph.components.pcollections.values())
print(f'transforms: {len(graph.components.transforms)}, pcollections: '
      f'{len(graph.components.pcollections)} ({unbounded} unbounded)')
out = os.environ.get('DRY_RUN_OUT')
if out:
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'pipeline.pb'), 'wb') as f:
    f.write(graph.SerializeToString())
  with open(os.path.join(out, 'pipeline.txt'), 'w') as f:
    f.write(str(graph))
  with open(os.path.join(out, 'options.json'), 'w') as f:
    json.dump(options.get_all_options(drop_default=True), f, indent=2,
              default=str)
  print(f'wrote {out}/pipeline.pb, pipeline.txt, options.json')
PY
