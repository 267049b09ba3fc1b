#!/usr/bin/env bash
# A second virtual environment holding the newest 1.x release of the Python
# `mcp` package, for tests that drive a server with the 1.x client while the
# tools venv (scripts/setup-python.sh) holds 2.x.
#
# Idempotent. Prints the venv's python path on stdout.
# Needs uv: UV_PATH, else the tools venv's uv, else uv on PATH.
set -euo pipefail

TOOLS_DIR="${PLUGIND_TOOLS_DIR:-$HOME/.cache/plugind/tools}"
VENV="$TOOLS_DIR/mcp1-venv"
SPEC="mcp>=1.30,<2"
STAMP_FILE="$VENV/.plugind-mcp1"

log() { printf 'setup_mcp1: %s\n' "$*" >&2; }

UV="${UV_PATH:-}"
if [[ -z "$UV" || ! -x "$UV" ]]; then
  if [[ -x "$TOOLS_DIR/venv/bin/uv" ]]; then
    UV="$TOOLS_DIR/venv/bin/uv"
  else
    UV="$(command -v uv || true)"
  fi
fi
if [[ -z "$UV" ]]; then
  log "uv not found; run scripts/setup-python.sh first"
  exit 1
fi

PY312="${PYTHON312:-}"
if [[ -z "$PY312" || ! -x "$PY312" ]]; then
  PY312="$(ls -1 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12 2>/dev/null | head -n1 || true)"
fi
if [[ -z "$PY312" ]]; then
  PY312="$(command -v python3.12 || true)"
fi
if [[ -z "$PY312" ]]; then
  log "Python 3.12 not found"
  exit 1
fi

version_ok() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md
import sys

major, minor = (int(p) for p in md.version("mcp").split(".")[:2])
sys.exit(0 if major == 1 and minor >= 30 else 1)
PY
}

if [[ "$(cat "$STAMP_FILE" 2>/dev/null || true)" == "$SPEC" ]] && version_ok; then
  log "mcp 1.x venv is up to date"
else
  log "creating $VENV with $SPEC"
  rm -rf "$VENV"
  "$UV" venv --quiet --python "$PY312" "$VENV"
  "$UV" pip install --quiet --python "$VENV/bin/python" "$SPEC"
  version_ok || { log "installed mcp is not 1.30 or newer"; exit 1; }
  printf '%s\n' "$SPEC" >"$STAMP_FILE"
fi

printf '%s\n' "$VENV/bin/python"
