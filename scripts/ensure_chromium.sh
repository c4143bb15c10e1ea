#!/usr/bin/env bash
# Installs Debian's chromium for the status page's browser test when it is
# missing (needs root and apt-get; otherwise says so and leaves it). Quiet
# and idempotent: run by run_tests.sh on every run.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "warning: chromium is missing and cannot be installed here (needs root and apt-get); the browser test will fail" >&2
  exit 0
fi
echo "installing chromium (apt-get) for the status page's browser test" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium >/dev/null
