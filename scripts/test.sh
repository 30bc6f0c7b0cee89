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
# ONNX Runtime for the ONNX models; Kiln and the tests find it through ORT_DYLIB_PATH.
ORT_DYLIB_PATH=$(KILN_ONNXRUNTIME_DIR="$root/.kiln-test/lib" \
  KILN_WHEEL_CACHE="$root/.kiln-test/wheels" scripts/install-onnxruntime.sh | tail -n 1)
export ORT_DYLIB_PATH
KILN_BIN="$root/target/release/kiln" KILN_MODELS_DIR="$KILN_TEST_MODELS_DIR" \
  KILN_WHEEL_CACHE="$root/.kiln-test/wheels" scripts/install-models.sh

# The official OpenAI SDK, pinned with hashes, for the OpenAI-compatibility tests. The venv is
# rebuilt only when the requirements file changes.
venv="$root/.kiln-test/openai-venv"
requirements="$root/tests/openai/requirements.txt"
if ! cmp -s "$requirements" "$venv/requirements.txt" 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --require-hashes --no-deps -r "$requirements"
  cp "$requirements" "$venv/requirements.txt"
fi
export KILN_TEST_OPENAI_PYTHON="$venv/bin/python"

# npm packages that the test workers import (zod), pinned by their package-lock.json files.
scripts/install-test-npm.sh

# llama.cpp's OpenMP threads spin while they wait for work. Several test nodes share 2 cores,
# so spinning threads starve each other; passive waiting keeps the suite's run time stable.
export OMP_WAIT_POLICY=PASSIVE

cargo test --release --locked --workspace
