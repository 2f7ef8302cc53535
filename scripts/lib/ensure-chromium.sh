#!/usr/bin/env bash
# Sourced by test scripts that drive a real browser: makes sure Debian's chromium is installed
# (no browser download: playwright-core is pointed at this binary) and exports CHROMIUM_PATH.
if ! command -v chromium >/dev/null 2>&1; then
  echo "chromium not found: installing it from Debian's packages" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
CHROMIUM_PATH="$(command -v chromium)"
export CHROMIUM_PATH
