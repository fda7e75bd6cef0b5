#!/usr/bin/env bash
# Refreshes web/vendor/ from the centrifuge SDK pinned in package.json + package-lock.json.
#
# The server embeds vendor/centrifuge.js (the SDK's prebuilt browser bundle) in its binary, so a
# fresh clone builds with no npm step; only this script needs npm. To move to another version:
#   npm install --save-exact centrifuge@X.Y.Z && ./update-vendor.sh
# then rebuild, run the browser tests (tests/browser) and commit package*.json and vendor/.
set -euo pipefail
cd "$(dirname "$0")"
npm ci --no-audit --no-fund
mkdir -p vendor
cp node_modules/centrifuge/dist/centrifuge.js vendor/centrifuge.js
cp node_modules/centrifuge/LICENSE vendor/centrifuge.LICENSE
node -p "require('./node_modules/centrifuge/package.json').version" > vendor/centrifuge.VERSION
echo "vendored centrifuge $(cat vendor/centrifuge.VERSION)"
