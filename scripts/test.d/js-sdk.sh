#!/usr/bin/env bash
# The JavaScript SDK (clients/js) and the multi-device example: npm ci, build (prints the
# browser bundle's gzip size), the Node tests (node --test) and the headless-Chromium tests,
# all against the real target/debug/syncgate.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

if ! command -v npm >/dev/null 2>&1; then
  echo "node/npm not found: installing them from Debian's packages" >&2
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/syncgate"
if [ ! -x "$BIN" ]; then
  cargo build -p syncgate --bin syncgate
fi
export JS_SDK_SYNCGATE_BIN="$BIN"
source scripts/lib/ensure-chromium.sh

cd clients/js
npm ci --no-audit --no-fund --loglevel=error
npm run build
node --test --test-concurrency=1 --test-timeout=90000 test/*.test.mjs
