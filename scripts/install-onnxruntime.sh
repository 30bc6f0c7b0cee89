#!/usr/bin/env bash
# Installs the ONNX Runtime shared library that Kiln loads at run time for ONNX models and
# encoders. Kiln's build never downloads ONNX Runtime: this script fetches the pinned
# `onnxruntime` wheel from PyPI with `pip download --no-deps`, checks its SHA-256, and copies
# only libonnxruntime.so out of it. A library that is already in place is kept.
#
# Environment:
#   KILN_ONNXRUNTIME_DIR  where libonnxruntime.so goes (default: $KILN_HOME/lib, KILN_HOME
#                         defaults to ~/.local/share/kiln); Kiln looks there by default
#   KILN_WHEEL_CACHE      folder for downloaded wheels (default: ~/.cache/kiln/wheels)
#
# Prints the library's path on the last line of its output.
set -euo pipefail

version=1.23.2
# The CPython 3.11 build for x86-64 Linux; every Python build of one release carries the same
# libonnxruntime.so, so the Python version only selects which wheel file pip fetches.
wheel_name="onnxruntime-${version}-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
wheel_sha256=da44b99206e77734c5819aa2142c69e64f3b46edc3bd314f6a45a932defc0b3e
member="onnxruntime/capi/libonnxruntime.so.${version}"
library_sha256=718c3fb0785d5ea06061b92c32ce4ad35be1bd4c71ae6192efe06f1ab21f0f8a

if [[ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]]; then
  echo "error: this script installs ONNX Runtime for x86-64 Linux only; on $(uname -s)-$(uname -m)," \
    "install libonnxruntime ${version} or newer yourself and set onnx.runtime_library in kiln.toml" >&2
  exit 1
fi

dest=${KILN_ONNXRUNTIME_DIR:-${KILN_HOME:-$HOME/.local/share/kiln}/lib}
cache=${KILN_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/wheels}
library="$dest/libonnxruntime.so"
mkdir -p "$dest" "$cache"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$library" && "$(sha256_of "$library")" == "$library_sha256" ]]; then
  echo "ONNX Runtime $version: already installed"
  echo "$library"
  exit 0
fi

wheel="$cache/$wheel_name"
if [[ ! -f "$wheel" || "$(sha256_of "$wheel")" != "$wheel_sha256" ]]; then
  echo "downloading onnxruntime==$version from PyPI" >&2
  rm -f "$wheel"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --dest "$cache" "onnxruntime==$version" >&2
fi
actual=$(sha256_of "$wheel")
if [[ "$actual" != "$wheel_sha256" ]]; then
  echo "error: SHA-256 mismatch for $wheel: expected $wheel_sha256, got $actual" >&2
  exit 1
fi

python3 - "$wheel" "$member" "$library.tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, target = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(target, "wb") as sink:
    shutil.copyfileobj(source, sink)
PY
actual=$(sha256_of "$library.tmp")
if [[ "$actual" != "$library_sha256" ]]; then
  rm -f "$library.tmp"
  echo "error: SHA-256 mismatch for $member: expected $library_sha256, got $actual" >&2
  exit 1
fi
mv "$library.tmp" "$library"
echo "ONNX Runtime $version installed"
echo "$library"
