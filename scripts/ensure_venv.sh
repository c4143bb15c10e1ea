# Sourced by run_tests.sh and run_local.sh: creates .venv if absent and
# installs the project with the pinned set in constraints.txt. Re-installs
# only when setup.py or constraints.txt changed (a stamp in the venv).
# Usage: source scripts/ensure_venv.sh EXTRAS   (e.g. "test,local")
set -euo pipefail
_extras="${1:-local}"
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
_venv="${KBI_VENV:-$_root/.venv}"
_python="${PYTHON:-python3}"

if ! "$_python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "error: Python >= 3.11 is required (found: $("$_python" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 2
fi
if [ ! -x "$_venv/bin/python" ]; then
  echo "creating virtualenv $_venv" >&2
  "$_python" -m venv "$_venv"
fi
_stamp="$_venv/.kbi-installed"
_want="$(cat "$_root/setup.py" "$_root/constraints.txt" | sha256sum | cut -d' ' -f1) $_extras"
if [ ! -f "$_stamp" ] || ! grep -qxF "$_want" "$_stamp"; then
  echo "installing .[$_extras] with constraints.txt into $_venv (first time: ~2 min)" >&2
  "$_venv/bin/python" -m pip install -q --upgrade pip
  "$_venv/bin/python" -m pip install -q -c "$_root/constraints.txt" -e "$_root[$_extras]"
  echo "$_want" >> "$_stamp"
fi
# The status page's uPlot (npm; scripts/ensure_status_assets.sh). Without
# npm the jobs still run; only the status page's web view is missing.
KBI_VENV="$_venv" "$_root/scripts/ensure_status_assets.sh" \
  || echo "warning: the status page's assets are not installed" >&2
export PATH="$_venv/bin:$PATH"
VENV_PYTHON="$_venv/bin/python"
