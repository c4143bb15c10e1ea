#!/usr/bin/env bash
# The README's run command: sets up .venv (if needed), starts the embedded
# Kafka broker unless KAFKA_BOOTSTRAP_SERVERS is set, and runs the streaming
# demo on the local engine. Ctrl-C or --duration SECONDS stops everything it
# started. Options: ./run_local.sh --help
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh "local"
exec "$VENV_PYTHON" -m beam_jobs.demo "$@"
