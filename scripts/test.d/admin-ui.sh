#!/usr/bin/env bash
# The admin web UI in headless Chromium (Debian's chromium driven by playwright-core, no browser
# download) against the real target/debug/syncgate: sign-in, every page with live figures,
# Disconnect (4009), the queue page, the publish console, CSRF from another origin.
# Screenshots of each page are written under target/admin-screenshots/ (paths printed).
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi

if ! command -v npm >/dev/null 2>&1; then
  echo "node/npm not found: installing them from Debian's packages" >&2
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm >/dev/null
fi
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
BIN="$TARGET/debug/syncgate"
if [ ! -x "$BIN" ]; then
  cargo build -p syncgate --bin syncgate
fi
export SYNCGATE_BIN="$BIN"
export SCREENSHOT_DIR="$TARGET/admin-screenshots"
source scripts/lib/ensure-chromium.sh

cd crates/syncgate/tests/admin-ui
npm ci --no-audit --no-fund --loglevel=error
timeout 300 node --test --test-concurrency=1 admin-ui.test.mjs
