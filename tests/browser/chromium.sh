#!/usr/bin/env bash
# Prints the path of a Chromium for headless page tests, installing the
# Debian `chromium` package first when none is on PATH (needs root/apt).
set -euo pipefail

for name in chromium chromium-browser; do
  if path="$(command -v "$name" 2>/dev/null)"; then
    printf '%s\n' "$path"
    exit 0
  fi
done
printf 'chromium.sh: installing the chromium package\n' >&2
SUDO=""
[[ "$(id -u)" -eq 0 ]] || SUDO="sudo"
$SUDO apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >&2
command -v chromium
