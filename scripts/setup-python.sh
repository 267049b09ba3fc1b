#!/usr/bin/env bash
# Prepares the Python tools the test suite needs: a virtual environment with
# uv, the dify_plugin SDK, httpx, pytest, moto[server], mcp, cfn-lint and
# the AWS CLI (for the infra/ checks).
#
# Idempotent: a second run with the same requirements only checks the venv.
# Writes "$PLUGIND_TOOLS_DIR/env.sh" (export lines for PYTHON312, TOOLS_PYTHON,
# UV_PATH, PLUGIND_TOOLS_DIR) and prints the same lines, so callers can
#   source "$(scripts/setup-python.sh --print-env-file)"
# or simply source the env file after running this script.
set -euo pipefail

TOOLS_DIR="${PLUGIND_TOOLS_DIR:-$HOME/.cache/plugind/tools}"
VENV="$TOOLS_DIR/venv"
ENV_FILE="$TOOLS_DIR/env.sh"

# The tool set. Bump STAMP_VERSION when the list changes so existing venvs
# are refreshed.
REQUIREMENTS=(
  "uv"
  "dify_plugin>=0.10,<0.11"
  "httpx"
  "pytest"
  "moto[server]"
  "mcp"
  "cfn-lint"
  "awscli"
)
STAMP_VERSION=2

log() { printf 'setup-python: %s\n' "$*" >&2; }

find_python312() {
  if [[ -n "${PYTHON312:-}" && -x "${PYTHON312}" ]]; then
    printf '%s\n' "$PYTHON312"
    return 0
  fi
  local candidate
  if candidate="$(command -v python3.12 2>/dev/null)" && "$candidate" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
    printf '%s\n' "$candidate"
    return 0
  fi
  local root=""
  if command -v pyenv >/dev/null 2>&1; then
    root="$(pyenv root 2>/dev/null || true)"
  fi
  root="${root:-${PYENV_ROOT:-$HOME/.pyenv}}"
  local found
  for found in "$root"/versions/3.12*/bin/python3.12; do
    if [[ -x "$found" ]]; then
      printf '%s\n' "$found"
      return 0
    fi
  done
  return 1
}

PY312="$(find_python312)" || {
  log "Python 3.12 not found."
  log "Looked for: \$PYTHON312, python3.12 on PATH, \$(pyenv root)/versions/3.12*/bin/python3.12."
  log "Install Python 3.12 (e.g. 'pyenv install 3.12') and run this script again."
  exit 1
}
log "using $PY312 ($("$PY312" --version 2>&1))"

mkdir -p "$TOOLS_DIR"
STAMP_FILE="$VENV/.plugind-tools"
WANT_STAMP="$STAMP_VERSION $PY312 ${REQUIREMENTS[*]}"

if [[ ! -x "$VENV/bin/python" ]] || ! "$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
  log "creating venv at $VENV"
  rm -rf "$VENV"
  "$PY312" -m venv "$VENV"
fi

# True when every tool is importable at a matching version.
verify_tools() {
  "$VENV/bin/python" - <<'PY'
import importlib.metadata as md
import sys

need = {"dify_plugin": "0.10.", "httpx": "", "pytest": "", "moto": "", "mcp": "", "uv": "", "cfn-lint": "", "awscli": ""}
for name, prefix in need.items():
    try:
        version = md.version(name)
    except md.PackageNotFoundError:
        sys.exit(f"setup-python: {name} is not installed")
    if not version.startswith(prefix):
        sys.exit(f"setup-python: {name} {version} does not match {prefix}x")
PY
}

if [[ "$(cat "$STAMP_FILE" 2>/dev/null || true)" == "$WANT_STAMP" ]] && verify_tools 2>/dev/null; then
  log "tools venv is up to date"
else
  log "installing uv with pip"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip uv
  log "installing ${REQUIREMENTS[*]}"
  # uv resolves and installs far faster than pip on a 2-core machine.
  "$VENV/bin/uv" pip install --quiet --python "$VENV/bin/python" "${REQUIREMENTS[@]}"
  verify_tools
  printf '%s\n' "$WANT_STAMP" >"$STAMP_FILE"
fi

UV_PATH="$VENV/bin/uv"
cat >"$ENV_FILE.$$.tmp" <<ENV
export PLUGIND_TOOLS_DIR="$TOOLS_DIR"
export PYTHON312="$PY312"
export TOOLS_PYTHON="$VENV/bin/python"
export UV_PATH="$UV_PATH"
ENV
mv "$ENV_FILE.$$.tmp" "$ENV_FILE"

if [[ "${1:-}" == "--print-env-file" ]]; then
  printf '%s\n' "$ENV_FILE"
else
  cat "$ENV_FILE"
fi
