#!/usr/bin/env bash
# System packages the test suite needs beyond the Python venv.
#
#   chromium  headless browser for tests/integration/test_status_page.py (the status page loads, its plots
#             render, and the console stays free of errors). Debian's package, driven over the DevTools protocol.
#
# Idempotent and quick when everything is present: apt is only touched if a package is missing. Needs root (or
# sudo) to install; without either it says what to install and fails, rather than letting the tests skip quietly.
set -euo pipefail

need=()
command -v chromium >/dev/null 2>&1 || need+=(chromium)

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "install-test-deps: missing ${need[*]}; run as root or install them: apt-get install ${need[*]}" >&2
  exit 1
fi

echo "install-test-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
command -v chromium >/dev/null
