#!/usr/bin/env bash
# Creates the BigQuery emulator's own virtualenv (.venv-bqemu) if absent or
# stale, with a pinned bqemulator and its whole dependency set.
#
# Its own venv because bqemulator needs pyarrow 26 / DuckDB 2.0 while Beam
# needs pyarrow < 26: the two cannot share .venv. The tests start it with
# .venv-bqemu/bin/python scripts/bq_emulator_launcher.py (tests/emulators.py).
#
# Idempotent: a stamp in the venv records the pins; when they match this
# script returns at once. Usage: scripts/ensure_bq_emulator.sh
# Environment: KBI_BQEMU_VENV (default .venv-bqemu), PYTHON (default python3).
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${KBI_BQEMU_VENV:-$_root/.venv-bqemu}"
_python="${PYTHON:-python3}"

# What to install, and the full set it resolved to (Python 3.11, 2026-11).
_requirements=(bqemulator==1.4.0 numpy==2.4.6)
_constraints='alembic==1.20.1
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
asgiref==3.13.0
bqemulator==1.4.0
certifi==2026.10.18
cffi==2.1.1
charset-normalizer==3.5.2
click==8.5.1
cryptography==50.0.2
duckdb==2.0.0
fastapi==0.165.0
fastavro==1.13.1
google-api-core==2.44.0
google-auth==2.62.2
google-cloud-bigquery-storage==2.43.0
googleapis-common-protos==1.76.0
grpcio==1.85.1
grpcio-health-checking==1.80.1
grpcio-status==1.85.1
grpcio-tools==1.80.1
h11==0.16.0
httpcore==1.0.9
httptools==0.9.0
httpx==0.28.1
idna==3.20
Mako==1.4.3
MarkupSafe==3.0.4
numpy==2.4.6
opentelemetry-api==1.45.2
opentelemetry-exporter-http-transport==0.66b2
opentelemetry-exporter-otlp==1.45.2
opentelemetry-exporter-otlp-common==0.66b2
opentelemetry-exporter-otlp-proto-common==1.45.2
opentelemetry-exporter-otlp-proto-grpc==1.45.2
opentelemetry-exporter-otlp-proto-http==1.45.2
opentelemetry-instrumentation==0.66b2
opentelemetry-instrumentation-asgi==0.66b2
opentelemetry-instrumentation-fastapi==0.66b2
opentelemetry-instrumentation-grpc==0.66b2
opentelemetry-proto==1.45.2
opentelemetry-sdk==1.45.2
opentelemetry-semantic-conventions==0.66b2
opentelemetry-util-http==0.66b2
orjson==3.13.0
packaging==26.3
prometheus_client==0.26.0
proto-plus==1.29.0
protobuf==6.33.6
pyarrow==26.0.1
pyasn1==0.6.5
pyasn1_modules==0.4.2
pycparser==3.12
pydantic==2.14.3
pydantic-settings==2.16.3
pydantic_core==2.50.4
PyJWT==2.15.1
python-dotenv==1.2.4
pytz==2026.6
PyYAML==6.0.3
requests==2.34.2
SQLAlchemy==2.1.9
sqlglot==30.11.0
starlette==1.10.0
structlog==26.1.0
typing-inspection==0.4.5
typing_extensions==4.16.0
urllib3==2.8.0
uvicorn==0.54.0
uvloop==0.23.0
watchfiles==1.3.0
websockets==17.4
wrapt==2.5.2'

_want="$(printf '%s\n%s\n' "${_requirements[*]}" "$_constraints" | sha256sum | cut -d' ' -f1)"
_stamp="$_venv/.kbi-bqemu-installed"
if [ -x "$_venv/bin/python" ] && [ -f "$_stamp" ] && grep -qxF "$_want" "$_stamp"; then
  exit 0
fi
if ! "$_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: the BigQuery emulator needs Python >= 3.11 (found: $("$_python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x "$_venv/bin/python" ]; then
  echo "creating BigQuery emulator virtualenv $_venv" >&2
  "$_python" -m venv "$_venv"
fi
echo "installing ${_requirements[*]} into $_venv (first time: ~30 s)" >&2
_cfile="$(mktemp)"
trap 'rm -f "$_cfile"' EXIT
printf '%s\n' "$_constraints" > "$_cfile"
"$_venv/bin/python" -m pip install -q --disable-pip-version-check -c "$_cfile" "${_requirements[@]}"
"$_venv/bin/python" -c 'import bqemulator, duckdb, numpy' >/dev/null
echo "$_want" > "$_stamp"
