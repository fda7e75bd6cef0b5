#!/usr/bin/env bash
# Runs every test: unit and integration tests (cargo), including the client-SDK compatibility
# tests and the browser tests of the web pages, which need the npm packages pinned in
# tests/compat and tests/browser (installed here when missing). The browser tests also need
# Debian's chromium (/usr/lib/chromium/chromium; .ci/run installs it).
set -euo pipefail
cd "$(dirname "$0")"
for dir in tests/compat tests/browser; do
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund)
  fi
done
cargo test --all-targets "$@"
