#!/usr/bin/env bash
# The demo behind `make run`: the mock ProConnect, the sample SR and Envoy with the filter, on
# loopback, started and stopped by `stack up` (stack/). Prints ready-to-paste curl commands;
# Ctrl-C stops everything.
#
# Ports can be changed: DEMO_PORT (Envoy, 10000), DEMO_ADMIN_PORT (9901), DEMO_SR_PORT (18081),
# DEMO_AS_PORT (18090); 0 lets the OS choose.
set -euo pipefail

CLIENT_ID="sr-demo"
DEMO_SUB="7396c91e-b9f2-4f9d-8547-5e9b3332725b"

if [ "${1:-}" = "--ready" ]; then
  # Run by `stack up` once everything is ready, with the ports in STACK_*: mint the demo's
  # tokens and print how to use them.
  mint() { # json spec -> token
    curl -fsS -H 'content-type: application/json' -d "$1" \
      "http://127.0.0.1:$STACK_AS_PORT/_mock/tokens" | sed -E 's/.*"token":"([^"]*)".*/\1/'
  }
  GOOD=$(mint "{\"sub\":\"$DEMO_SUB\"}")
  REVOKED=$(mint "{\"sub\":\"$DEMO_SUB\"}")
  # Revoked the way an FS would (RFC 7009), with the SR's credentials from the environment.
  curl -fsS -o /dev/null --data-urlencode "token=$REVOKED" --data-urlencode "client_id=$CLIENT_ID" \
    --data-urlencode "client_secret=$INTROSPECTION_CLIENT_SECRET" \
    "http://127.0.0.1:$STACK_AS_PORT/api/v2/token/revocation"
  PORT="$STACK_PORT"
  cat <<TXT

Demo running (logs in .run/):
  Envoy + filter   http://127.0.0.1:$PORT   (admin http://127.0.0.1:$STACK_ADMIN_PORT)
  sample SR        http://127.0.0.1:$STACK_SR_PORT  (only reachable through Envoy in a real deployment)
  mock ProConnect  http://127.0.0.1:$STACK_AS_PORT/api/v2   (client $CLIENT_ID)

A valid token for user $DEMO_SUB -> 200 and that user's locations:
  curl -i -H 'Authorization: Bearer $GOOD' http://127.0.0.1:$PORT/api/users/locations

No token -> 401 with WWW-Authenticate: Bearer realm="api":
  curl -i http://127.0.0.1:$PORT/api/users/locations

A revoked token -> 401 error="invalid_token":
  curl -i -H 'Authorization: Bearer $REVOKED' http://127.0.0.1:$PORT/api/users/locations

What the SR receives (the identity headers set by the filter):
  curl -s -H 'Authorization: Bearer $GOOD' http://127.0.0.1:$PORT/api/users/me

Mint another token:
  curl -s -H 'content-type: application/json' -d '{"sub":"any-user","scope":"openid"}' http://127.0.0.1:$STACK_AS_PORT/_mock/tokens

Press Ctrl-C to stop.
TXT
  exit 0
fi

: "${ENVOY:?}" "${WASM:?}" "${BIN_DIR:?}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# The client secret reaches the filter through Envoy's environment, not the configuration.
INTROSPECTION_CLIENT_SECRET="sr-demo-secret-$RANDOM$RANDOM"
export INTROSPECTION_CLIENT_SECRET
# "@authority" stands for the mock's address (stack up fills it in).
PLUGIN_CONFIG='{"cluster":"authorization_server","authority":"@authority","client_id":"'"$CLIENT_ID"'",
  "client_secret_env":"INTROSPECTION_CLIENT_SECRET",
  "claim_headers":{"client_id":"x-token-client-id","scope":"x-token-scope"}}'

exec "$BIN_DIR/stack" up --quiet --work-dir "$ROOT/.run" --bin-dir "$BIN_DIR" \
  --envoy "$ENVOY" --wasm "$WASM" --plugin-config "$PLUGIN_CONFIG" \
  --port "${DEMO_PORT:-10000}" --admin-port "${DEMO_ADMIN_PORT:-9901}" \
  --sr-port "${DEMO_SR_PORT:-18081}" --as-port "${DEMO_AS_PORT:-18090}" \
  --client "$CLIENT_ID:$INTROSPECTION_CLIENT_SECRET:none" \
  --concurrency 2 --log-level warn --component-log-level wasm:info \
  -- "$ROOT/scripts/run-demo.sh" --ready
