#!/usr/bin/env bash
# Installs what plugind's container image runs with, on top of a Debian
# image that has Python 3.12 (python:3.12-slim-bookworm):
#
#   1. Python 3.12 is there and runs (plugins' default interpreter);
#   2. tini and CA certificates from apt (tini is PID 1: the Python plugin
#      SDK exits when its parent is PID 1, so plugind must not be);
#   3. uv $UV_VERSION, which builds the plugins' environments;
#   4. the entrypoint, as <prefix>/usr/local/bin/plugind-entrypoint;
#   5. /app/storage (Dify's volume) and /app/logs, the daemon's alone (0700).
#
# The Dockerfile runs it as is. CI runs it on the host in two safe modes, so
# what the image does is tested without Docker:
#
#   --check        validate every step (interpreter, pip, apt candidates,
#                  files, folders) and change nothing;
#   --prefix DIR   install into DIR instead of / (apt packages are then only
#                  checked, never installed); with --uv-from FILE an existing
#                  uv binary of the pinned version is copied instead of
#                  installed with pip, so no network is needed.
#
# Options: --python PATH (default: $PYTHON, else python3.12 on PATH).
set -euo pipefail

# The uv the image ships; UV_VERSION in the environment overrides it.
UV_VERSION="${UV_VERSION:-0.13.9}"
APT_PACKAGES=(tini ca-certificates)

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CHECK=""
PREFIX="/"
UV_FROM=""
PYTHON="${PYTHON:-}"

usage() {
  sed -n '2,25p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --check) CHECK=1 ;;
    --prefix) PREFIX="${2:?--prefix needs a folder}"; shift ;;
    --uv-from) UV_FROM="${2:?--uv-from needs a file}"; shift ;;
    --python) PYTHON="${2:?--python needs a path}"; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install-runtime: unknown argument $1" >&2; usage 2 ;;
  esac
  shift
done

say() { printf 'install-runtime: %s\n' "$*"; }
fail() {
  printf 'install-runtime: FAILED: %s\n' "$*" >&2
  exit 1
}
# do_or_say DESCRIPTION COMMAND...: runs it, or in --check says it would.
do_or_say() {
  local what="$1"
  shift
  if [[ -n "$CHECK" ]]; then
    say "would $what"
  else
    say "$what"
    "$@"
  fi
}

PREFIX="${PREFIX%/}"
ROOT_INSTALL=""
[[ -z "$PREFIX" ]] && ROOT_INSTALL=1
BIN_DIR="$PREFIX/usr/local/bin"

# --- 1. Python 3.12 -------------------------------------------------------
if [[ -z "$PYTHON" ]]; then
  PYTHON="$(command -v python3.12 || true)"
fi
[[ -n "$PYTHON" && -x "$PYTHON" ]] || fail "Python 3.12 not found; base the image on python:3.12-slim-bookworm or pass --python"
version="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" ||
  fail "$PYTHON does not run"
[[ "$version" == "3.12" ]] || fail "$PYTHON is Python $version, not 3.12"
say "python: $PYTHON (3.12)"

# --- 2. apt packages --------------------------------------------------------
if [[ -n "$ROOT_INSTALL" && -z "$CHECK" ]]; then
  say "apt: installing ${APT_PACKAGES[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
  rm -rf /var/lib/apt/lists/*
elif command -v apt-cache >/dev/null 2>&1; then
  for pkg in "${APT_PACKAGES[@]}"; do
    candidate="$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n "$candidate" && "$candidate" != "(none)" ]] ||
      fail "apt has no candidate for $pkg (run apt-get update?)"
    say "apt: $pkg $candidate available (installed only with prefix /)"
  done
else
  say "apt: not on this host; the image installs ${APT_PACKAGES[*]} with apt-get"
fi

# --- 3. uv --------------------------------------------------------------------
[[ "$UV_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || fail "UV_VERSION $UV_VERSION is not a version"
uv_version_of() { "$1" --version 2>/dev/null | awk '{print $2}'; }
if [[ -n "$UV_FROM" ]]; then
  [[ -x "$UV_FROM" ]] || fail "--uv-from $UV_FROM is not an executable"
  got="$(uv_version_of "$UV_FROM")"
  [[ "$got" == "$UV_VERSION" ]] || fail "--uv-from $UV_FROM is uv $got, the image pins $UV_VERSION"
  do_or_say "uv: copying $UV_FROM ($got) to $BIN_DIR/uv" \
    install -D -m 0755 "$UV_FROM" "$BIN_DIR/uv"
else
  "$PYTHON" -m pip --version >/dev/null 2>&1 || fail "pip is missing for $PYTHON"
  if [[ -n "$ROOT_INSTALL" ]]; then
    do_or_say "uv: pip install uv==$UV_VERSION" \
      "$PYTHON" -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore "uv==$UV_VERSION"
  else
    do_or_say "uv: pip install uv==$UV_VERSION into $PREFIX/usr/local" \
      "$PYTHON" -m pip install --quiet --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      --prefix "$PREFIX/usr/local" "uv==$UV_VERSION"
  fi
fi

# --- 4. entrypoint -------------------------------------------------------------
ENTRYPOINT_SRC="$HERE/docker-entrypoint.sh"
[[ -f "$ENTRYPOINT_SRC" ]] || fail "$ENTRYPOINT_SRC is missing"
sh -n "$ENTRYPOINT_SRC" || fail "$ENTRYPOINT_SRC does not parse"
do_or_say "entrypoint: $BIN_DIR/plugind-entrypoint" \
  install -D -m 0755 "$ENTRYPOINT_SRC" "$BIN_DIR/plugind-entrypoint"

# --- 5. folders -----------------------------------------------------------------
for dir in "$PREFIX/app/storage" "$PREFIX/app/logs"; do
  if [[ -n "$CHECK" ]]; then
    at="$dir"
    while [[ ! -e "$at" ]]; do at="$(dirname "$at")"; done
    [[ -d "$at" && -w "$at" ]] || fail "$dir cannot be created ($at is not a writable folder)"
    say "would create $dir (0700)"
  else
    say "folder: $dir (0700)"
    mkdir -p "$dir"
    chmod 0700 "$dir"
  fi
done

# --- verify -----------------------------------------------------------------------
if [[ -n "$CHECK" ]]; then
  say "check passed; nothing was changed"
  exit 0
fi
uv_bin="$BIN_DIR/uv"
if [[ -n "$ROOT_INSTALL" ]]; then
  uv_bin="$(command -v uv || echo "$BIN_DIR/uv")"
  tini --version >/dev/null || fail "tini does not run"
fi
[[ -x "$uv_bin" ]] || fail "uv is not at $uv_bin"
[[ "$(uv_version_of "$uv_bin")" == "$UV_VERSION" ]] || fail "$uv_bin is not uv $UV_VERSION"
say "done: uv $UV_VERSION at $uv_bin, entrypoint at $BIN_DIR/plugind-entrypoint"
