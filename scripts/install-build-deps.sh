#!/usr/bin/env bash
# Installs what building Kiln needs beyond a Rust toolchain: cmake and clang/libclang, which
# llama-cpp-sys-2 uses to compile llama.cpp and generate its bindings, redis-server, which the
# kiln-kv tests start on a free local port, and promtool (Debian's prometheus package), which
# checks the node's /metrics output in the tests. Uses Debian's apt, which checks package
# signatures; does nothing when the tools are already there.
set -euo pipefail

missing=()
command -v cmake >/dev/null || missing+=(cmake)
command -v clang >/dev/null || missing+=(clang)
ls /usr/lib/llvm-*/lib/libclang*.so* >/dev/null 2>&1 || missing+=(libclang-dev)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v promtool >/dev/null || missing+=(prometheus)

if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "error: missing ${missing[*]}; install them with: sudo apt-get install ${missing[*]}" >&2
  exit 1
fi
echo "installing ${missing[*]} from Debian"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
