#!/usr/bin/env bash
# Runs every test: unit and integration tests (cargo), including the client-SDK compatibility
# tests, which need the npm packages pinned in tests/compat and the PyPI packages pinned in
# tests/compat/requirements.txt (installed in tests/compat/.venv), and the browser tests of the web
# pages, which need the npm packages pinned in tests/browser and Debian's chromium
# (/usr/lib/chromium/chromium; .ci/run installs it). Missing npm packages are installed here.
# With SWITCHBOARD_FUZZ_SECONDS=<n>, each cargo-fuzz target in fuzz/ then runs for n seconds
# (needs a nightly toolchain and cargo-fuzz; the first build takes about ten minutes, hence
# opt-in). Whether fuzzing ran, and why not, is always printed.
set -euo pipefail
cd "$(dirname "$0")"
fuzz_seconds="${SWITCHBOARD_FUZZ_SECONDS:-0}"
if ! [[ "$fuzz_seconds" =~ ^[0-9]+$ ]]; then
  echo "test.sh: SWITCHBOARD_FUZZ_SECONDS must be a number of seconds, not '$fuzz_seconds'" >&2
  exit 2
fi
for dir in tests/compat tests/browser; do
  if [ -f "$dir/package-lock.json" ] && [ ! -d "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund)
  fi
done
# The list includes the FastAPI example backend's pins (examples/fastapi-backend/requirements.txt).
if [ -f tests/compat/requirements.txt ]; then
  [ -x tests/compat/.venv/bin/python ] || python3 -m venv tests/compat/.venv
  # A no-op when the pinned versions are already there.
  tests/compat/.venv/bin/pip install --quiet --disable-pip-version-check -r tests/compat/requirements.txt
fi
cargo test --workspace --all-targets "$@"

# Bounded fuzzing: new inputs go to a temporary directory, the committed seeds are only read.
if [ "$fuzz_seconds" = 0 ]; then
  echo "test.sh: fuzzing skipped: SWITCHBOARD_FUZZ_SECONDS is unset or 0 (30 runs each target for 30 s)"
elif ! cargo +nightly --version >/dev/null 2>&1; then
  echo "test.sh: fuzzing skipped: no nightly toolchain (rustup toolchain install nightly)"
elif ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "test.sh: fuzzing skipped: cargo-fuzz is not installed (cargo install cargo-fuzz)"
else
  fuzz_corpus="$(mktemp -d)"
  trap 'rm -rf "$fuzz_corpus"' EXIT
  for target in $(cargo +nightly fuzz list); do
    echo "test.sh: fuzzing $target for $fuzz_seconds s"
    mkdir -p "$fuzz_corpus/$target"
    cargo +nightly fuzz run "$target" "$fuzz_corpus/$target" "fuzz/corpus/$target" -- \
      -max_total_time="$fuzz_seconds"
  done
fi
