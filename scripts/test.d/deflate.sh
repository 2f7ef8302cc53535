#!/usr/bin/env bash
# permessage-deflate against real, independent clients: Node `ws`, Python `websockets` and
# Chromium (all offer the extension by default). Each checks that the extension was negotiated, a
# large published message arrives intact (compressed on the wire), a compressed client
# message is understood, and a compressed message that inflates past
# limits.max_frame_bytes closes with 1009. Runs against target/debug/syncgate on a free
# loopback port and stops it at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT="$PWD"
HERE="$ROOT/scripts/test.d/deflate"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"

cargo build -q -p syncgate --bin syncgate
BIN="$TARGET/debug/syncgate"

# Clients, installed when missing.
source scripts/lib/ensure-chromium.sh
if [ ! -d "$HERE/node_modules/ws" ] || [ ! -d "$HERE/node_modules/playwright-core" ]; then
  (cd "$HERE" && npm ci --silent --no-audit --no-fund)
fi
VENV="$HERE/.venv"
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import websockets" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r "$HERE/requirements.txt"
fi

PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
DATA="$(mktemp -d)"
export SYNCGATE_LISTEN="127.0.0.1:$PORT" SYNCGATE_DATA_DIR="$DATA" SYNCGATE_LOG=warn
export SYNCGATE_JWT_SECRET="deflate-suite-secret-0123456789abcdef" SYNCGATE_API_KEY="deflate-suite-key-0123"
export SYNCGATE_RATE_LIMITS__WS_CONNECT_PER_USER=off
"$BIN" serve >"$DATA/server.log" 2>&1 &
SERVER=$!
trap 'kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break
  sleep 0.1
done

export SG_BASE="http://127.0.0.1:$PORT" SG_API_KEY="$SYNCGATE_API_KEY"
export SG_TOKEN_NODE="$("$BIN" token --user deflate-node)"
export SG_TOKEN_PY="$("$BIN" token --user deflate-py)"
export SG_TOKEN_BROWSER="$("$BIN" token --user deflate-browser)"
node "$HERE/ws_client.mjs"
"$VENV/bin/python" "$HERE/websockets_client.py"
node "$HERE/chromium.mjs"
echo "deflate: Node ws, Python websockets and Chromium passed" >&2
