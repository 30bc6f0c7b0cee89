#!/usr/bin/env bash
# Installs the npm packages of the end-to-end test workers (crates/kiln/tests/workers/*) from
# their package-lock.json files with `npm ci`, so every run gets the same pinned versions.
# Needs Node.js's npm only here: Kiln itself runs workers without Node.js.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v npm >/dev/null; then
  echo "error: npm is missing; install Node.js's npm (apt-get install npm) to set up the test workers" >&2
  exit 1
fi

for lock in "$root"/crates/kiln/tests/workers/*/package-lock.json; do
  dir=$(dirname "$lock")
  echo "installing npm packages in ${dir#"$root"/}"
  (cd "$dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
done
