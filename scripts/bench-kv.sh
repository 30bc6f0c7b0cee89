#!/usr/bin/env bash
# Measures KV get and put as timed from a worker, through Kiln and through workerd, next to
# redis-benchmark, in one run on this machine. The worker is bench/kv-worker/index.js, served
# unchanged by every runtime with 100-byte values under KEYS keys (default 1000):
#
#   kiln embedded   `kiln dev` on 127.0.0.1 with `[kv] backend = "embedded"` (kv.redb in a
#                   temporary data folder)
#   kiln redis      `kiln dev` with `[kv] backend = "redis"` on the redis-server below
#   workerd         workerd as scripts/install-workerd.sh installs it (pinned in
#                   bench/workerd-pin), with the KV binding served by an in-memory store worker
#                   (bench/kv-worker/workerd)
#   workerd disk    the same workerd process, with the KV binding served by a store in a
#                   Durable Object whose SQLite file is in a temporary folder
#   redis-benchmark `redis-benchmark -t get,set -d 100` against the same redis-server, with 50
#                   clients (its default) and with 1 client
#
# The redis-server is started by this script on a free loopback port, without persistence.
#
# For each runtime the script measures:
#   loop            one request whose worker awaits LOOP_GETS gets (or LOOP_PUTS puts) in
#                   sequence; ops/s is the count over the request's time seen by the client
#   per request     sequential requests that each do one get (or one put), sent over one
#                   keep-alive connection by bench/kv-worker/loadgen.py, at most REQUESTS
#                   requests or MAX_SECONDS seconds; p50 and p99 include HTTP and the client,
#                   and "noop" requests, which make no KV call, show that part alone
#
# Every round runs each case once in the same order. The script prints the mean and sample
# standard deviation over ROUNDS rounds as Markdown, and the load average before and after,
# because other processes on the machine slow every case.
#
# The crate-level benchmark (crates/kiln-kv/benches/kv_latency.rs) runs only when its binary is
# already built under target/release/deps; this script never compiles it.
#
# Prerequisites: the release binary, redis-server and redis-benchmark
# (scripts/install-build-deps.sh), node and npm, python3.
#
# Environment: KILN_BIN (default target/release/kiln), ROUNDS (5, at least 2), KEYS (1000),
# LOOP_GETS (5000), LOOP_PUTS (1000), REQUESTS (2000), MAX_SECONDS (10), REDIS_REQUESTS (100000),
# CARGO_TARGET_DIR (where to look for the crate's bench binary, default target), WORKERD_PREFIX
# (where scripts/install-workerd.sh installs workerd, default .bench/workerd).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kiln=${KILN_BIN:-$root/target/release/kiln}
rounds=${ROUNDS:-5}
keys=${KEYS:-1000}
loop_gets=${LOOP_GETS:-5000}
loop_puts=${LOOP_PUTS:-1000}
requests=${REQUESTS:-2000}
max_seconds=${MAX_SECONDS:-10}
redis_requests=${REDIS_REQUESTS:-100000}
if ((rounds < 2)); then
  echo "error: ROUNDS=$rounds is invalid: the spread needs at least 2 rounds" >&2
  exit 1
fi

bench_dir=$root/bench/kv-worker

source "$root/scripts/bench-lib.sh"
require_tools "$kiln" redis-server redis-cli redis-benchmark npm python3 curl

install_workerd


# Waits until GET /get?i=0 on PORT gets any HTTP response (404 is expected before /fill).
wait_http() {
  local port=$1 name=$2
  for _ in $(seq 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$port/get?i=0"; then
      return 0
    fi
    sleep 0.1
  done
  echo "error: $name did not respond on 127.0.0.1:$port within 10 s; its log:" >&2
  cat "$work/$name.log" >&2
  exit 1
}

redis_port=$(free_ports 1)
redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no \
  --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do
  redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
  sleep 0.1
done
if ! redis-cli -p "$redis_port" ping >/dev/null 2>&1; then
  echo "error: redis-server did not start on port $redis_port; its log:" >&2
  cat "$work/redis.log" >&2
  exit 1
fi

start_kiln() {
  local name=$1 port=$2 config=$3
  mkdir -p "$work/$name-data"
  "$kiln" dev "$bench_dir" --listen "127.0.0.1:$port" --data-dir "$work/$name-data" \
    --config "$config" >"$work/$name.log" 2>&1 &
  pids+=($!)
  wait_http "$port" "$name"
}

printf 'log_format = "json"\n[kv]\nbackend = "embedded"\n' >"$work/embedded.toml"
printf 'log_format = "json"\n[kv]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:%s/0"\n' \
  "$redis_port" >"$work/redis.toml"
embedded_port=$(free_ports 1)
start_kiln kiln-embedded "$embedded_port" "$work/embedded.toml"
redis_kiln_port=$(free_ports 1)
start_kiln kiln-redis "$redis_kiln_port" "$work/redis.toml"

# workerd resolves `embed` paths against the config file, so the config and the three modules go
# into one folder.
workerd_port=$(free_ports 1)
workerd_disk_port=$(free_ports 1)
mkdir -p "$work/workerd" "$work/workerd-disk-data"
cp "$bench_dir/index.js" "$bench_dir/workerd/kv-store.js" "$bench_dir/workerd/kv-store-disk.js" \
  "$work/workerd/"
sed -e "s/@PORT@/$workerd_port/" -e "s/@DISK_PORT@/$workerd_disk_port/" \
  -e "s#@DISK_DIR@#$work/workerd-disk-data#" \
  "$bench_dir/workerd/config.capnp.in" >"$work/workerd/config.capnp"
"$workerd" serve "$work/workerd/config.capnp" >"$work/workerd.log" 2>&1 &
pids+=($!)
wait_http "$workerd_port" workerd
wait_http "$workerd_disk_port" workerd

declare -A ports=(
  [kiln-embedded]=$embedded_port
  [kiln-redis]=$redis_kiln_port
  [workerd]=$workerd_port
  [workerd-disk]=$workerd_disk_port
)
systems=(kiln-embedded kiln-redis workerd workerd-disk)

for system in "${systems[@]}"; do
  status=$(curl -s -o "$work/fill.out" -w '%{http_code}' -X POST \
    "http://127.0.0.1:${ports[$system]}/fill?count=$keys")
  if [[ "$status" != 200 ]]; then
    echo "error: /fill on $system returned $status: $(cat "$work/fill.out")" >&2
    exit 1
  fi
done

results=$work/results.tsv
: >"$results"

# Appends "system<TAB>metric<TAB>value" lines for one loop request.
run_loop() {
  local system=$1 op=$2 count=$3 port=${ports[$1]}
  local seconds
  seconds=$(curl -s -o "$work/loop.out" -w '%{time_total}' \
    "http://127.0.0.1:$port/loop?op=$op&n=$count&keys=$keys")
  if ! grep -q "\"n\":$count" "$work/loop.out"; then
    echo "error: /loop?op=$op on $system failed: $(cat "$work/loop.out")" >&2
    exit 1
  fi
  python3 -c '
import sys
system, op, count, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
print(f"{system}\tloop {op} ops/s\t{count / seconds:.1f}")
' "$system" "$op" "$count" "$seconds" >>"$results"
}

run_requests() {
  local system=$1 op=$2 port=${ports[$1]}
  python3 "$bench_dir/loadgen.py" --port "$port" --path "/$op" --count "$requests" \
    --seconds "$max_seconds" --keys "$keys" >"$work/load.json"
  python3 -c '
import json, sys
system, op, path = sys.argv[1], sys.argv[2], sys.argv[3]
result = json.load(open(path))
for field in ("p50_us", "p99_us", "requests_per_second"):
    print(f"{system}\trequest {op} {field}\t{result[field]}")
' "$system" "$op" "$work/load.json" >>"$results"
}

run_redis_benchmark() {
  local clients=$1
  redis-benchmark -h 127.0.0.1 -p "$redis_port" -t get,set -d 100 -n "$redis_requests" \
    -c "$clients" --csv >"$work/redis-benchmark.csv"
  python3 -c '
import csv, sys
clients, path = sys.argv[1], sys.argv[2]
names = {"SET": "put", "GET": "get"}
for row in csv.DictReader(open(path)):
    op = names[row["test"]]
    system = f"redis-benchmark -c {clients}"
    rps = float(row["rps"])
    p50_us = float(row["p50_latency_ms"]) * 1000
    p99_us = float(row["p99_latency_ms"]) * 1000
    print(f"{system}\tloop {op} ops/s\t{rps:.1f}")
    print(f"{system}\trequest {op} p50_us\t{p50_us:.1f}")
    print(f"{system}\trequest {op} p99_us\t{p99_us:.1f}")
' "$clients" "$work/redis-benchmark.csv" >>"$results"
}

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  for system in "${systems[@]}"; do
    run_loop "$system" get "$loop_gets"
    run_loop "$system" put "$loop_puts"
    run_requests "$system" get
    run_requests "$system" put
    run_requests "$system" noop
  done
  run_redis_benchmark 50
  run_redis_benchmark 1
done
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

# The crate's in-process latency, only from a bench binary that is already built.
target_dir=${CARGO_TARGET_DIR:-$root/target}
crate_bench=$(find "$target_dir/release/deps" -maxdepth 1 -type f -executable \
  -name 'kv_latency-*' 2>/dev/null | head -n 1 || true)

echo
echo "Kiln $("$kiln" --version | cut -d' ' -f2), workerd $workerd_version," \
  "$(redis-server --version | cut -d' ' -f3), $rounds rounds, $keys keys of 100 bytes"
echo
python3 - "$results" <<'EOF'
import statistics
import sys
from collections import defaultdict

values = defaultdict(list)
for line in open(sys.argv[1]):
    system, metric, value = line.rstrip("\n").split("\t")
    values[(system, metric)].append(float(value))

systems = ["kiln-embedded", "kiln-redis", "workerd", "workerd-disk"]
metrics = [
    "loop get ops/s",
    "loop put ops/s",
    "request get p50_us",
    "request get p99_us",
    "request put p50_us",
    "request put p99_us",
    "request noop p50_us",
    "request noop p99_us",
    "request get requests_per_second",
    "request put requests_per_second",
]


def cell(system, metric):
    samples = values.get((system, metric))
    if not samples:
        return "-"
    mean = statistics.mean(samples)
    spread = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return f"{mean:.1f} ± {spread:.1f}"


print("| metric | " + " | ".join(systems) + " |")
print("| --- " * (len(systems) + 1) + "|")
for metric in metrics:
    print(f"| {metric} | " + " | ".join(cell(system, metric) for system in systems) + " |")

print()
print("Ratios of the means (for latency, below 1 means Kiln is faster):")
print()
pairs = [
    ("kiln-embedded", "workerd-disk"),
    ("kiln-embedded", "workerd"),
    ("kiln-redis", "workerd"),
]
print("| metric | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
print("| --- " * (len(pairs) + 1) + "|")
for metric in metrics:
    ratios = []
    for system, base in pairs:
        mean = statistics.mean(values[(system, metric)])
        ratios.append(f"{mean / statistics.mean(values[(base, metric)]):.2f}")
    print(f"| {metric} | " + " | ".join(ratios) + " |")

print()
print("redis-benchmark, requests/s and latency in µs as it reports them:")
print()
redis_systems = ["redis-benchmark -c 50", "redis-benchmark -c 1"]
print("| metric | " + " | ".join(redis_systems) + " |")
print("| --- " * (len(redis_systems) + 1) + "|")
for op in ("get", "put"):
    for metric in (f"loop {op} ops/s", f"request {op} p50_us", f"request {op} p99_us"):
        label = metric.replace("loop ", "").replace("request ", "").replace("put", "set")
        print(f"| {label} | " + " | ".join(cell(system, metric) for system in redis_systems) + " |")
EOF
echo
echo "Load average (1, 5, 15 min) at start: $load_start, at end: $load_end"
if [[ -n "$crate_bench" ]]; then
  echo
  echo "In-process latency ($crate_bench):"
  "$crate_bench" --bench
else
  echo "In-process latency: skipped, no kv_latency bench binary under $target_dir/release/deps"
fi
