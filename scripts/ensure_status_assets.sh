#!/usr/bin/env bash
# Installs the status page's charting library (uPlot, from the npm registry)
# with `npm ci` of beam_jobs/status/web/package.json + package-lock.json
# (exact version and integrity hash) into $KBI_STATUS_ASSETS, default
# <venv>/share/kbi-status (KBI_VENV, default .venv). Idempotent and quiet:
# re-installs only when the lock file changed. Nothing lands in the repo.
set -euo pipefail
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_web="$_root/beam_jobs/status/web"
_dest="${KBI_STATUS_ASSETS:-${KBI_VENV:-$_root/.venv}/share/kbi-status}"
_stamp="$_dest/.kbi-installed"
_want="$(sha256sum "$_web/package-lock.json" | cut -d' ' -f1)"
if [ -f "$_stamp" ] && grep -qxF "$_want" "$_stamp" \
    && [ -f "$_dest/node_modules/uplot/dist/uPlot.iife.min.js" ]; then
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is needed to install the status page's uPlot (apt-get install npm)" >&2
  exit 2
fi
echo "installing the status page's uPlot into $_dest (npm ci)" >&2
mkdir -p "$_dest"
cp "$_web/package.json" "$_web/package-lock.json" "$_dest/"
(cd "$_dest" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
echo "$_want" > "$_stamp"
