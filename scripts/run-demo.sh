#!/usr/bin/env bash
# The demo behind `make run`: the mock ProConnect, the sample SR and Envoy with the filter, on
# loopback. Prints ready-to-paste curl commands; Ctrl-C stops everything.
#
# Ports can be changed: DEMO_PORT (Envoy, 10000), DEMO_ADMIN_PORT (9901), DEMO_SR_PORT (18081),
# DEMO_AS_PORT (18090).
set -euo pipefail

: "${ENVOY:?}" "${WASM:?}" "${BIN_DIR:?}"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
RUN="$ROOT/.run"
mkdir -p "$RUN"
PORT="${DEMO_PORT:-10000}"
ADMIN_PORT="${DEMO_ADMIN_PORT:-9901}"
SR_PORT="${DEMO_SR_PORT:-18081}"
AS_PORT="${DEMO_AS_PORT:-18090}"
CLIENT_ID="sr-demo"
CLIENT_SECRET="sr-demo-secret-$RANDOM$RANDOM"
DEMO_SUB="7396c91e-b9f2-4f9d-8547-5e9b3332725b"

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "Stopping..."
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

wait_http() { # url, what
  for _ in $(seq 1 150); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.2
  done
  echo "$2 did not become ready ($1); see the logs in $RUN" >&2
  exit 1
}

"$BIN_DIR/mock-as" --listen "127.0.0.1:$AS_PORT" --client "$CLIENT_ID:$CLIENT_SECRET:none" \
  >"$RUN/mock-as.log" 2>&1 &
pids+=($!)
"$BIN_DIR/sample-sr" --listen "127.0.0.1:$SR_PORT" >"$RUN/sample-sr.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$AS_PORT/api/v2/.well-known/openid-configuration" "mock-as"
wait_http "http://127.0.0.1:$SR_PORT/healthz" "sample-sr"

PLUGIN_CONFIG=$(cat <<JSON
{"cluster":"authorization_server","authority":"127.0.0.1:$AS_PORT","client_id":"$CLIENT_ID","client_secret_env":"INTROSPECTION_CLIENT_SECRET","claim_headers":{"client_id":"x-token-client-id","scope":"x-token-scope"}}
JSON
)
sed -e "s|\${ADMIN_PORT}|$ADMIN_PORT|g" -e "s|\${LISTEN_PORT}|$PORT|g" \
    -e "s|\${SR_PORT}|$SR_PORT|g" -e "s|\${AS_PORT}|$AS_PORT|g" \
    -e "s|\${WASM_PATH}|$WASM|g" -e "s|\${PLUGIN_CONFIG}|$PLUGIN_CONFIG|g" \
    "$ROOT/envoy/envoy.yaml.in" >"$RUN/envoy.yaml"
# The client secret reaches the filter through Envoy's environment, not the config file.
# shellcheck disable=SC2086
INTROSPECTION_CLIENT_SECRET="$CLIENT_SECRET" $ENVOY -c "$RUN/envoy.yaml" --concurrency 2 --disable-hot-restart \
  --log-level warn --component-log-level wasm:info >"$RUN/envoy.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/ready" "envoy"

mint() { # json spec -> token
  curl -fsS -H 'content-type: application/json' -d "$1" "http://127.0.0.1:$AS_PORT/_mock/tokens" | sed -E 's/.*"token":"([^"]*)".*/\1/'
}
GOOD=$(mint "{\"sub\":\"$DEMO_SUB\"}")
REVOKED=$(mint "{\"sub\":\"$DEMO_SUB\"}")
curl -fsS -o /dev/null -d "token=$REVOKED&client_id=$CLIENT_ID&client_secret=$CLIENT_SECRET" \
  "http://127.0.0.1:$AS_PORT/api/v2/token/revocation"

cat <<TXT

Demo running (logs in .run/):
  Envoy + filter   http://127.0.0.1:$PORT   (admin http://127.0.0.1:$ADMIN_PORT)
  sample SR        http://127.0.0.1:$SR_PORT  (only reachable through Envoy in a real deployment)
  mock ProConnect  http://127.0.0.1:$AS_PORT/api/v2   (client $CLIENT_ID)

A valid token for user $DEMO_SUB -> 200 and that user's locations:
  curl -i -H 'Authorization: Bearer $GOOD' http://127.0.0.1:$PORT/api/users/locations

No token -> 401 with WWW-Authenticate: Bearer realm="api":
  curl -i http://127.0.0.1:$PORT/api/users/locations

A revoked token -> 401 error="invalid_token":
  curl -i -H 'Authorization: Bearer $REVOKED' http://127.0.0.1:$PORT/api/users/locations

What the SR receives (the identity headers set by the filter):
  curl -s -H 'Authorization: Bearer $GOOD' http://127.0.0.1:$PORT/api/users/me

Mint another token:
  curl -s -H 'content-type: application/json' -d '{"sub":"any-user","scope":"openid"}' http://127.0.0.1:$AS_PORT/_mock/tokens

Press Ctrl-C to stop.
TXT
wait -n
echo "A demo process exited; see the logs in $RUN" >&2
