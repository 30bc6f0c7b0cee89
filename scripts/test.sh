#!/usr/bin/env bash
# Runs Kiln's whole test suite from a fresh checkout: installs the build tools, builds in
# release mode (llama.cpp inside it takes about 5 minutes on 2 cores the first time), installs
# the bundled models into .kiln-test/, and runs every unit and end-to-end test against them.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/install-build-deps.sh
cargo build --release --locked --bins

export KILN_TEST_MODELS_DIR="$root/.kiln-test/models"
KILN_BIN="$root/target/release/kiln" KILN_MODELS_DIR="$KILN_TEST_MODELS_DIR" \
  KILN_WHEEL_CACHE="$root/.kiln-test/wheels" scripts/install-models.sh

cargo test --release --locked --workspace
