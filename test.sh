#!/usr/bin/env bash
# Runs every test: unit and integration tests (cargo), including the client-SDK compatibility
# tests, which need the npm packages pinned in tests/compat and the PyPI packages pinned in
# tests/compat/requirements.txt (installed in tests/compat/.venv), the browser tests of the web
# pages, which need the npm packages pinned in tests/browser and Debian's chromium
# (/usr/lib/chromium/chromium), the multi-node tests, which need redis-server and
# redis-sentinel, the deployment
# test, which needs Debian's nginx (/usr/sbin/nginx), and the lossy-link test, which needs
# iproute2 and nftables (and root, or sudo without a password, for a network namespace).
#
# On a fresh Debian machine it installs what is missing first: the system packages through
# apt-get (as root, or with sudo when that needs no password), then the pinned npm and PyPI
# packages. Where it cannot, it stops before any test with one message naming what to install:
# no test is skipped, and none fails halfway for want of a program.
#
# With SWITCHBOARD_FUZZ_SECONDS=<n>, each cargo-fuzz target in fuzz/ then runs for n seconds
# (needs the nightly toolchain; cargo-fuzz is installed if missing; the first build takes about
# ten minutes, hence opt-in here and on in CI). Whether fuzzing ran, and why not, is always
# printed.
set -euo pipefail
cd "$(dirname "$0")"
fuzz_seconds="${SWITCHBOARD_FUZZ_SECONDS:-0}"
if ! [[ "$fuzz_seconds" =~ ^[0-9]+$ ]]; then
  echo "test.sh: SWITCHBOARD_FUZZ_SECONDS must be a number of seconds, not '$fuzz_seconds'" >&2
  exit 2
fi
if ! command -v cargo >/dev/null; then
  echo "test.sh: cargo is missing: install a Rust toolchain (https://rustup.rs), then run ./test.sh again" >&2
  exit 2
fi

# The Debian packages the tests need, each with the file or command that shows it is there.
# SWITCHBOARD_CHROMIUM and SWITCHBOARD_NGINX point the tests at other binaries instead.
need_apt=()
command -v node >/dev/null && command -v npm >/dev/null || need_apt+=(nodejs npm)
command -v redis-server >/dev/null || need_apt+=(redis-server)
# The Sentinel failover test runs three redis-sentinels (redis-cli comes with redis-tools).
command -v redis-sentinel >/dev/null || need_apt+=(redis-sentinel)
command -v redis-cli >/dev/null || need_apt+=(redis-tools)
# The browser test pastes the front page's curl command into a shell.
command -v curl >/dev/null || need_apt+=(curl)
# The lossy-link test makes a network namespace (iproute2) and drops packets in it (nftables).
command -v ip >/dev/null || [ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need_apt+=(iproute2)
command -v nft >/dev/null || [ -x /usr/sbin/nft ] || need_apt+=(nftables)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
if [ -z "${SWITCHBOARD_CHROMIUM:-}" ]; then
  [ -x /usr/lib/chromium/chromium ] || need_apt+=(chromium)
  # The pages' text needs real fonts, or chromium renders empty boxes in the screenshots.
  [ -d /usr/share/fonts/truetype/liberation ] || need_apt+=(fonts-liberation)
fi
[ -n "${SWITCHBOARD_NGINX:-}" ] || [ -x /usr/sbin/nginx ] || need_apt+=(nginx)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    as_root=()
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    as_root=(sudo)
  else
    as_root=(none)
  fi
  if [ "${as_root[*]}" = none ] || ! command -v apt-get >/dev/null; then
    echo "test.sh: missing system packages: ${need_apt[*]}." >&2
    echo "test.sh: install them (on Debian: sudo apt-get install --no-install-recommends ${need_apt[*]}), then run ./test.sh again" >&2
    exit 2
  fi
  echo "test.sh: installing ${need_apt[*]}"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${need_apt[@]}"
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
# Every test binary runs even when one fails, so one run reports every failure.
cargo test --workspace --all-targets --no-fail-fast "$@"

# Bounded fuzzing: new inputs go to a temporary directory, the committed seeds are only read.
# cargo-fuzz is installed when fuzzing is asked for and the nightly toolchain is there.
if [ "$fuzz_seconds" != 0 ] && cargo +nightly --version >/dev/null 2>&1 \
  && ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "test.sh: installing cargo-fuzz for the fuzzing step"
  cargo install --locked cargo-fuzz || echo "test.sh: cargo install cargo-fuzz failed"
fi
if [ "$fuzz_seconds" = 0 ]; then
  echo "test.sh: fuzzing skipped: SWITCHBOARD_FUZZ_SECONDS is unset or 0 (SWITCHBOARD_FUZZ_SECONDS=60 runs each target for 60 s, as CI does)"
elif ! cargo +nightly --version >/dev/null 2>&1; then
  echo "test.sh: fuzzing skipped: no nightly toolchain (rustup toolchain install nightly)"
elif ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "test.sh: fuzzing skipped: cargo-fuzz could not be installed"
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
