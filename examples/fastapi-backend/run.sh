#!/usr/bin/env bash
# Starts the FastAPI example backend on http://127.0.0.1:3000, in its own virtual environment
# (.venv here, made and filled with the pinned requirements.txt on the first run), and prints the
# command that starts Switchboard beside it. The defaults of the two secrets are for a laptop:
# set SWITCHBOARD_API_KEY and WEBHOOK_SECRET to your own values anywhere else.
set -euo pipefail
cd "$(dirname "$0")"
export SWITCHBOARD_URL="${SWITCHBOARD_URL:-http://127.0.0.1:8000}"
export SWITCHBOARD_API_KEY="${SWITCHBOARD_API_KEY:-dev-api-key}"
export WEBHOOK_SECRET="${WEBHOOK_SECRET:-dev-webhook-secret}"
[ -x .venv/bin/python ] || python3 -m venv .venv
# A no-op when the pinned versions are already there.
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
backend=http://127.0.0.1:3000
cat <<COMMAND
Start Switchboard beside the backend, from the repository root, in another terminal:

  cargo run --release -- serve --config examples/fastapi-backend/switchboard.toml \\
    --proxy-connect-endpoint $backend/switchboard/connect \\
    --proxy-rpc-endpoint $backend/switchboard/rpc \\
    --proxy-subscribe-endpoint $backend/switchboard/subscribe \\
    --proxy-http-headers Cookie \\
    --webhook-endpoint $backend/switchboard/events \\
    --webhook-secret '$WEBHOOK_SECRET' \\
    --api-key '$SWITCHBOARD_API_KEY'

COMMAND
exec .venv/bin/python -m uvicorn app:app --host 127.0.0.1 --port 3000
