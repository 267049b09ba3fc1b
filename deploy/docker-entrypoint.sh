#!/bin/sh
# Entrypoint of plugind's container image. It takes the environment Dify's
# docker-compose gives its `plugin_daemon` service unchanged: plugind reads
# the same variable names, and the few the reference daemon spells
# differently are translated here before plugind starts:
#
#   S3_ENDPOINT                  -> AWS_ENDPOINT_URL      (S3-compatible servers)
#   AWS_ACCESS_KEY               -> AWS_ACCESS_KEY_ID
#   AWS_SECRET_KEY               -> AWS_SECRET_ACCESS_KEY
#   PLUGIN_STDIO_MAX_BUFFER_SIZE -> PLUGIN_RUNTIME_MAX_BUFFER_SIZE (when set to
#                                   other than its default, as the reference
#                                   falls back to the legacy name)
#
# A name already set under plugind's spelling wins; empty values count as
# unset (Dify passes many as `${VAR:-}`). Arguments are plugind's (default:
# `serve`), e.g. `docker compose run plugin_daemon doctor`.
#
# tini runs this as its child (the image's ENTRYPOINT): the Python plugin SDK
# exits when its parent process is PID 1, so plugind must not be PID 1.
set -eu

# map FROM TO: export TO=$FROM when FROM is non-empty and TO is empty.
map() {
  eval "from_value=\${$1:-}"
  eval "to_value=\${$2:-}"
  if [ -n "$from_value" ] && [ -z "$to_value" ]; then
    export "$2=$from_value"
  fi
}

map S3_ENDPOINT AWS_ENDPOINT_URL
map AWS_ACCESS_KEY AWS_ACCESS_KEY_ID
map AWS_SECRET_KEY AWS_SECRET_ACCESS_KEY

if [ "${PLUGIN_STDIO_MAX_BUFFER_SIZE:-5242880}" != 5242880 ]; then
  map PLUGIN_STDIO_MAX_BUFFER_SIZE PLUGIN_RUNTIME_MAX_BUFFER_SIZE
fi

PLUGIND_BIN="${PLUGIND_BIN:-/usr/local/bin/plugind}"
if [ "$#" -eq 0 ]; then
  set -- serve
fi
exec "$PLUGIND_BIN" "$@"
