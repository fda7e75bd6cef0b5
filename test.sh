#!/usr/bin/env bash
# Runs every test: unit and integration tests (cargo), including the client-SDK compatibility
# tests, which need the npm packages pinned in tests/compat and the PyPI packages pinned in
# tests/compat/requirements.txt (installed in tests/compat/.venv), and the browser tests of the web
# pages, which need the npm packages pinned in tests/browser and Debian's chromium
# (/usr/lib/chromium/chromium; .ci/run installs it). Missing npm packages are installed here.
set -euo pipefail
cd "$(dirname "$0")"
for dir in tests/compat tests/browser; do
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund)
  fi
done
if [ -f tests/compat/requirements.txt ]; then
  [ -x tests/compat/.venv/bin/python ] || python3 -m venv tests/compat/.venv
  # A no-op when the pinned versions are already there.
  tests/compat/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
fi
cargo test --workspace --all-targets "$@"
