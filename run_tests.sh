#!/usr/bin/env bash
# The test command: sets up .venv (if needed) and runs the whole suite against
# real brokers started by the fixtures. Extra arguments go to pytest, e.g.
#   ./run_tests.sh -k kafka -x
# KAFKA_BOOTSTRAP_SERVERS=host:port runs the Kafka tests against your cluster.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/ensure_venv.sh "test,local"
# The BigQuery emulator's own venv (.venv-bqemu; pyarrow 26, Beam needs < 26).
scripts/ensure_bq_emulator.sh
# Debian's chromium for the status page's browser test (tests/status_page_it_test.py).
scripts/ensure_chromium.sh
# pytest exits 5 when it collected no test: that fails this script too.
exec "$VENV_PYTHON" -m pytest "$@"
