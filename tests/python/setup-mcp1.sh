#!/usr/bin/env bash
# A second venv with the newest `mcp` 1.x client (the tools venv has 2.x), so
# the gateway is tested against both major versions of the Python SDK.
#
# Idempotent. Needs scripts/setup-python.sh to have run (it uses that uv and
# Python 3.12). Prints the venv's python on stdout.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=/dev/null
source "$("$ROOT/scripts/setup-python.sh" --print-env-file 2>/dev/null)"

SPEC="mcp>=1.30,<2"
VENV="$PLUGIND_TOOLS_DIR/mcp1-venv"
STAMP="$VENV/.plugind-mcp1"

if [[ "$(cat "$STAMP" 2>/dev/null || true)" != "$SPEC" ]] || ! "$VENV/bin/python" -c 'import mcp' 2>/dev/null; then
  printf 'setup-mcp1: installing %s into %s\n' "$SPEC" "$VENV" >&2
  rm -rf "$VENV"
  "$UV_PATH" venv --quiet --python "$PYTHON312" "$VENV" >&2
  "$UV_PATH" pip install --quiet --python "$VENV/bin/python" "$SPEC" >&2
  printf '%s\n' "$SPEC" >"$STAMP"
fi
printf '%s\n' "$VENV/bin/python"
