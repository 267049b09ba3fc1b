#!/usr/bin/env bash
# The project's one test command.
#
#  1. prepares the Python tools (scripts/setup-python.sh) and checks infra/
#     (infra/check.sh: cfn-lint, shell syntax, the templates against moto);
#  2. runs `cargo test --workspace` on the embedded SQLite default;
#  3. starts PostgreSQL (scripts/postgres.sh) and runs the suites that open
#     the store again against it;
#  4. starts `plugind serve` on a free loopback port with a temporary storage
#     root and runs the Python tests (pytest tests/python) against it;
#  5. runs the MCP conformance suite (tests/conformance/run.sh).
# Everything it starts is stopped on exit.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"

say() { printf '\n==> %s\n' "$*"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/plugind-test.XXXXXX")"
# As root the daemon runs each plugin as a uid of its own, which must be able
# to walk down to the plugin folders (mktemp makes the folder 0700).
chmod 0711 "$WORK"
DAEMON_PID=""
POSTGRES_STARTED=""

cleanup() {
  local status=$?
  if [[ -n "$DAEMON_PID" ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
    kill "$DAEMON_PID" 2>/dev/null || true
    # Give it a moment to stop its plugin children, then insist.
    for _ in $(seq 1 50); do
      kill -0 "$DAEMON_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$DAEMON_PID" 2>/dev/null || true
    wait "$DAEMON_PID" 2>/dev/null || true
  fi
  if [[ -n "$POSTGRES_STARTED" ]]; then
    scripts/postgres.sh stop >/dev/null 2>&1 || true
  fi
  rm -rf "$WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "Python tools"
ENV_FILE="$(scripts/setup-python.sh --print-env-file)"
# shellcheck source=/dev/null
source "$ENV_FILE"
# The reference daemon's names for the interpreter and uv used by local plugins.
export PYTHON_INTERPRETER_PATH="${PYTHON_INTERPRETER_PATH:-$PYTHON312}"
export UV_PATH

say "infra checks"
infra/check.sh


say "plugin-runner (the Lambda bootstrap the serverless tests package)"
cargo build -p plugin-runner
export PLUGIN_RUNNER_BIN="$CARGO_TARGET_DIR/debug/plugin-runner"

say "cargo test --workspace (embedded SQLite)"
unset PLUGIND_TEST_POSTGRES_URL
cargo test --workspace --no-fail-fast

# The suites that open the store run again on a real PostgreSQL server, and
# the replica suites (three `plugind serve` over one database, local and
# serverless) run there only.
say "PostgreSQL"
POSTGRES_URL="$(scripts/postgres.sh start | tail -n 1)"
POSTGRES_STARTED=1
say "store and API suites on PostgreSQL"
PLUGIND_TEST_POSTGRES_URL="$POSTGRES_URL" cargo test --no-fail-fast \
  --test store --test endpoint_store --test api_management --test api_bundle --test dispatch_invoke \
  --test replicas --test replicas_serverless

say "plugind serve"
# Built on its own: `cargo test` may not build the binary (no integration test
# needs it) or builds it with dev-dependency features.
cargo build --bin plugind
PLUGIND_BIN="$CARGO_TARGET_DIR/debug/plugind"
PORT="$("$TOOLS_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
SERVER_KEY="test-key-$RANDOM$RANDOM"
DEBUG_PORT="$("$TOOLS_PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
mkdir -p "$WORK/storage"
(
  # The daemon under test uses its embedded defaults, whatever the caller's shell has set.
  unset DB_TYPE DB_HOST DATABASE_URL PLUGIN_STORAGE_TYPE
  export SERVER_HOST=127.0.0.1 SERVER_PORT="$PORT" SERVER_KEY
  # The debug listener stays on loopback, on a port of its own.
  export PLUGIN_REMOTE_INSTALLING_HOST=127.0.0.1 PLUGIN_REMOTE_INSTALLING_PORT="$DEBUG_PORT"
  # Nothing listens there: the tests make no backwards calls.
  export DIFY_INNER_API_URL="http://127.0.0.1:9" DIFY_INNER_API_KEY="inner-test-key"
  export PLUGIN_STORAGE_LOCAL_ROOT="$WORK/storage" PLATFORM=local
  # The fixtures are unsigned, as a plugin author's own packages are.
  export FORCE_VERIFYING_SIGNATURE=false
  exec "$PLUGIND_BIN" serve
) >"$WORK/plugind.log" 2>&1 &
DAEMON_PID=$!

URL="http://127.0.0.1:$PORT"
healthy=""
for _ in $(seq 1 300); do
  if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
    break
  fi
  if "$TOOLS_PYTHON" -c 'import sys, httpx; sys.exit(0 if httpx.get(sys.argv[1], timeout=1).status_code == 200 else 1)' "$URL/health/check" 2>/dev/null; then
    healthy=1
    break
  fi
  sleep 0.2
done
if [[ -z "$healthy" ]]; then
  echo "plugind serve did not answer $URL/health/check; its output:" >&2
  cat "$WORK/plugind.log" >&2 || true
  exit 1
fi
echo "plugind is serving at $URL"

say "pytest tests/python"
set +e
PLUGIND_URL="$URL" PLUGIND_KEY="$SERVER_KEY" PLUGIND_BIN="$PLUGIND_BIN" \
  "$TOOLS_PYTHON" -m pytest tests/python -q -p no:cacheprovider
status=$?
set -e
if [[ $status -ne 0 ]]; then
  if [[ $status -eq 5 ]]; then
    echo "pytest collected no tests" >&2
  fi
  echo "--- plugind output (last 200 lines) ---" >&2
  tail -n 200 "$WORK/plugind.log" >&2 || true
  exit "$status"
fi

say "MCP conformance suite"
PLUGIND_BIN="$PLUGIND_BIN" tests/conformance/run.sh
