#!/usr/bin/env bash
# Runs every test: unit and integration tests (cargo), including the client-SDK compatibility
# tests, which need the npm packages pinned in tests/compat (installed here when missing).
set -euo pipefail
cd "$(dirname "$0")"
if [ -f tests/compat/package-lock.json ] && [ ! -d tests/compat/node_modules ]; then
  (cd tests/compat && npm ci --no-audit --no-fund)
fi
cargo test --all-targets "$@"
