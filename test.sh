#!/usr/bin/env bash
# Runs every test: unit and integration tests (cargo), including the client-SDK compatibility
# tests, which need the npm packages pinned in tests/compat (installed here when missing) and the
# PyPI packages pinned in tests/compat/requirements.txt (installed in tests/compat/.venv).
set -euo pipefail
cd "$(dirname "$0")"
if [ -f tests/compat/package-lock.json ] && [ ! -d tests/compat/node_modules ]; then
  (cd tests/compat && npm ci --no-audit --no-fund)
fi
if [ -f tests/compat/requirements.txt ]; then
  [ -x tests/compat/.venv/bin/python ] || python3 -m venv tests/compat/.venv
  # A no-op when the pinned versions are already there.
  tests/compat/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
fi
cargo test --all-targets "$@"
