#!/usr/bin/env bash
# HTTP contract tests: schemathesis (PyPI) generates requests from /openapi.json and checks
# a live node's answers: every status code and body shape is documented, content types
# match, and nothing answers 5xx. Runs against target/debug/syncgate on a free loopback
# port with a temporary data dir and a known API key; bounded by CONTRACT_MAX_TIME
# (default 120 s of fuzzing, a few minutes in all).
set -euo pipefail
cd "$(dirname "$0")/../.."

SCHEMATHESIS_VERSION=4.32.5
VENV=target/contract/venv
BIN=target/debug/syncgate
MAX_TIME=${CONTRACT_MAX_TIME:-120}

if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "contract: installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
  python3 -m venv --clear "$VENV" # --clear: a venv moved or left by a deleted checkout does not run
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
if [ ! -x "$BIN" ]; then
  cargo build -q -p syncgate --bin syncgate
fi

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
DATA=$(mktemp -d)
API_KEY="contract-test-api-key-0123456789"
LOG="$DATA/syncgate.log"
SYNCGATE_LISTEN="127.0.0.1:$PORT" SYNCGATE_DATA_DIR="$DATA/data" SYNCGATE_API_KEY="$API_KEY" \
  SYNCGATE_JWT_SECRET="contract-test-jwt-secret-0123456789abcdef" SYNCGATE_LOG=warn \
  SYNCGATE_RATE_LIMITS__API_PER_USER=off "$BIN" serve >"$LOG" 2>&1 &
PID=$!
cleanup() {
  kill "$PID" 2>/dev/null || true
  wait "$PID" 2>/dev/null || true
  rm -rf "$DATA"
}
trap cleanup EXIT

for _ in $(seq 1 200); do
  curl -fsS "http://127.0.0.1:$PORT/ready" >/dev/null 2>&1 && break
  sleep 0.05
done

set +e
# From the temporary dir: schemathesis keeps a cache (.schemathesis/) in its working dir,
# which must not land in the repository or replay an old run's failures.
ST="$PWD/$VENV/bin/schemathesis"
(cd "$DATA" && "$ST" run "http://127.0.0.1:$PORT/openapi.json" \
  --url "http://127.0.0.1:$PORT" \
  -H "Authorization: Bearer $API_KEY" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --phases examples,fuzzing \
  --max-time "$MAX_TIME" \
  --request-timeout 10 \
  --workers 2 \
  --suppress-health-check all \
  --no-color) 2>&1 | tee "$DATA/schemathesis.out"
RC=${PIPESTATUS[0]}
set -e

if ! kill -0 "$PID" 2>/dev/null; then
  echo "contract: FAIL: the server died during the run" >&2
  tail -20 "$LOG" >&2
  exit 1
fi
if [ "$RC" -eq 0 ]; then
  echo "contract: PASS: schemathesis $SCHEMATHESIS_VERSION found no undocumented status, body shape or 5xx"
else
  echo "contract: FAIL: schemathesis exit code $RC (see the failures above)" >&2
  exit "$RC"
fi
