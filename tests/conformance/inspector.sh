#!/usr/bin/env bash
# Drives a plugind MCP server with the MCP Inspector CLI
# (@modelcontextprotocol/inspector, `--cli`) over Streamable HTTP with a
# bearer token, and checks its JSON output: tools/list, tools/call with and
# without --tool-arg, logging/setLevel, in the handshake and per-request
# protocol eras, and a wrong token refused.
#
# Usage: inspector.sh NODE INSPECTOR_DIR MCP_URL TOKEN PYTHON
# (tests/conformance/run.sh calls it against the conformance_tool fixture's
# "every tool" server.)
set -euo pipefail

NODE="$1" INSPECTOR="$2/clients/launcher/build/index.js" URL="$3" TOKEN="$4" PYTHON="$5"
OUT="$(mktemp -d "${TMPDIR:-/tmp}/plugind-inspector.XXXXXX")"
trap 'rm -rf "$OUT"' EXIT

inspect() {
  local name="$1"
  shift
  # HOME under $OUT: the CLI keeps its state there, not in the caller's.
  HOME="$OUT" "$NODE" "$INSPECTOR" --cli "$URL" --transport http \
    --header "Authorization: Bearer $TOKEN" "$@" >"$OUT/$name.json" 2>"$OUT/$name.err" || {
    echo "inspector $name failed:" >&2
    cat "$OUT/$name.err" "$OUT/$name.json" >&2
    return 1
  }
}

for era in legacy auto; do
  inspect "list-$era" --protocol-era "$era" --method tools/list
  inspect "call-$era" --protocol-era "$era" --method tools/call --tool-name conformance__simple_text
  inspect "args-$era" --protocol-era "$era" --method tools/call --tool-name conformance__repeat \
    --tool-arg text=ab times=3
done
inspect level --protocol-era legacy --method logging/setLevel --log-level warning
set +e
TOKEN="not-a-token" inspect refused --method tools/list 2>/dev/null
refused=$?
set -e

"$PYTHON" - "$OUT" "$refused" <<'PY'
import json
import pathlib
import sys

out = pathlib.Path(sys.argv[1])
refused = int(sys.argv[2])


def load(name: str):
  return json.loads((out / f"{name}.json").read_text())


for era in ("legacy", "auto"):
  tools = {t["name"]: t for t in load(f"list-{era}")["tools"]}
  assert "conformance__simple_text" in tools, (era, sorted(tools))
  schema = tools["conformance__repeat"]["inputSchema"]
  assert schema["required"] == ["text"], (era, schema)
  assert schema["properties"]["times"]["type"] == "number", (era, schema)

  call = load(f"call-{era}")
  assert call["content"] == [
      {"type": "text", "text": "This is a simple text response for testing."}
  ], (era, call)
  assert not call.get("isError"), (era, call)

  args = load(f"args-{era}")
  assert args["structuredContent"] == {"text": "ababab", "times": 3}, (era, args)

assert load("level") == {}, load("level")
assert refused != 0, "a wrong token was accepted"
print("inspector: tools/list, tools/call (with --tool-arg) and logging/setLevel checked in both eras")
PY
