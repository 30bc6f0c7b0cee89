#!/usr/bin/env bash
# Measures a hello-world worker (bench/hello-worker/index.js, one 13-byte text response) in Kiln
# and in workerd, side by side in one run on this machine:
#
#   kiln      `kiln dev bench/hello-worker` on 127.0.0.1 (release build, `log_format = "json"`
#             to a file, the default `[workers]` settings, so a pool of up to min(cores, 4)
#             isolates)
#   workerd   workerd as scripts/install-workerd.sh installs it (pinned in bench/workerd-pin),
#             serving the same index.js from a capnp config on 127.0.0.1
#             (bench/hello-worker/workerd.capnp.in)
#
# What it measures:
#   throughput      `wrk -t1 -cC -dDURATION --latency` against each server for every connection
#                   count C in CONNECTIONS: requests/s and the p50 and p99 latency that wrk
#                   reports. wrk runs on the same cores as the server it loads.
#   process start   spawn of the server process to its first 200 response, polled every 0.5 ms
#                   by bench/hello-worker/first_response.py, PROCESS_STARTS times per round
#   isolate start   Kiln only, in process: a new worker with one isolate, from `Worker::start` to
#                   the response of its first request, by the kiln-runtime bench binary
#                   (crates/kiln-runtime/benches/worker_start.rs). Its first start compiles the
#                   modules; the p50 and p99 are over later starts, which load cached bytecode.
#   memory          resident set size per idle isolate, (RSS with ISOLATES - RSS with 1) /
#                   (ISOLATES - 1), after one request to each: for workerd, one process with
#                   ISOLATES services on as many sockets; for Kiln, ISOLATES workers of one
#                   isolate each in the bench binary
#
# Every round runs each throughput case and the process starts once, in the same order. The
# script prints the mean and sample standard deviation over ROUNDS rounds as Markdown, and the
# load average before and after, because other processes on the machine slow every case.
#
# The kiln-runtime bench binary is built with `cargo bench --no-run` when no built one is found
# under CARGO_TARGET_DIR/release/deps.
#
# Prerequisites: the release binary (`cargo build --release -p kiln`), wrk (Debian:
# `sudo apt-get install wrk`), node and npm, python3, curl, cargo.
#
# Environment: KILN_BIN (default target/release/kiln), ROUNDS (3, at least 2), CONNECTIONS
# ("1 10 50"), DURATION (wrk's run per case in seconds, 10), PROCESS_STARTS (10 per round),
# STARTS (isolate starts in the bench binary, 200), ISOLATES (50, at least 2), CARGO_TARGET_DIR
# (default target), WORKERD_PREFIX (where scripts/install-workerd.sh installs workerd, default
# .bench/workerd).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kiln=${KILN_BIN:-$root/target/release/kiln}
rounds=${ROUNDS:-3}
connections=${CONNECTIONS:-1 10 50}
duration=${DURATION:-10}
process_starts=${PROCESS_STARTS:-10}
starts=${STARTS:-200}
isolates=${ISOLATES:-50}
target_dir=${CARGO_TARGET_DIR:-$root/target}
if ((rounds < 2)); then
  echo "error: ROUNDS=$rounds is invalid: the spread needs at least 2 rounds" >&2
  exit 1
fi
if ((isolates < 2)); then
  echo "error: ISOLATES=$isolates is invalid: the memory figure needs at least 2" >&2
  exit 1
fi

bench_dir=$root/bench/hello-worker

source "$root/scripts/bench-lib.sh"
require_tools "$kiln" npm python3 curl cargo
if ! command -v wrk >/dev/null; then
  echo "error: wrk not found; install it with: sudo apt-get install wrk" >&2
  exit 1
fi

install_workerd


# Writes a workerd config with one hello-world service per port into FOLDER/config.capnp.
write_workerd_config() {
  local folder=$1
  shift
  mkdir -p "$folder"
  cp "$bench_dir/index.js" "$folder/"
  python3 - "$bench_dir/workerd.capnp.in" "$folder/config.capnp" "$@" <<'EOF'
import sys
template, output, ports = sys.argv[1], sys.argv[2], sys.argv[3:]
services = ", ".join(f'(name = "hello{i}", worker = .helloWorker)' for i in range(len(ports)))
sockets = ", ".join(
    f'(name = "http{i}", address = "127.0.0.1:{port}", http = (), service = "hello{i}")'
    for i, port in enumerate(ports)
)
text = open(template).read().replace("@SERVICES@", services).replace("@SOCKETS@", sockets)
open(output, "w").write(text)
EOF
}

# Waits until GET / on PORT returns 200.
wait_ok() {
  local port=$1 name=$2
  for _ in $(seq 200); do
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/") == 200 ]]; then
      return 0
    fi
    sleep 0.05
  done
  echo "error: $name did not respond with 200 on 127.0.0.1:$port within 10 s; its log:" >&2
  cat "$work/$name.log" >&2
  exit 1
}

# Prints the resident set size of PID in KiB.
rss_kib() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

printf 'log_format = "json"\n' >"$work/kiln.toml"
kiln_command=("$kiln" dev "$bench_dir" --data-dir "$work/kiln-data" --config "$work/kiln.toml")

# The isolate bench binary: the newest built one, else build it.
find_bench() {
  find "$target_dir/release/deps" -maxdepth 1 -type f -executable -name 'worker_start-*' \
    -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n 1 | cut -d' ' -f2-
}
crate_bench=$(find_bench)
if [[ -z "$crate_bench" ]]; then
  echo "building the kiln-runtime bench binary" >&2
  cargo bench --manifest-path "$root/Cargo.toml" -p kiln-runtime --bench worker_start \
    --no-run >&2
  crate_bench=$(find_bench)
fi

results=$work/results.tsv
: >"$results"

mapfile -t ports < <(free_ports 3)
kiln_port=${ports[0]}
workerd_port=${ports[1]}
start_port=${ports[2]}

run_wrk() {
  local system=$1 port=$2 clients=$3
  wrk -t1 -c"$clients" -d"${duration}s" --latency "http://127.0.0.1:$port/" >"$work/wrk.out"
  python3 - "$system" "$clients" "$work/wrk.out" >>"$results" <<'EOF'
import re, sys
system, clients, path = sys.argv[1], sys.argv[2], sys.argv[3]
text = open(path).read()
scale = {"us": 1, "ms": 1000, "s": 1000000}
def latency(percent):
    match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not match:
        sys.exit(f"error: no {percent}% latency in the wrk output:\n{text}")
    return float(match.group(1)) * scale[match.group(2)]
rate = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.M)
if not rate:
    sys.exit(f"error: no Requests/sec in the wrk output:\n{text}")
if "Non-2xx or 3xx responses" in text:
    sys.exit(f"error: {system} answered requests with an error status:\n{text}")
socket_errors = re.search(r"^\s*Socket errors: (.*)$", text, re.M)
if socket_errors:
    print(f"warning: wrk against {system} with {clients} connections: socket errors: "
          f"{socket_errors.group(1)}", file=sys.stderr)
print(f"{system}\t{clients} connections requests/s\t{rate.group(1)}")
print(f"{system}\t{clients} connections p50 µs\t{latency(50)}")
print(f"{system}\t{clients} connections p99 µs\t{latency(99)}")
EOF
}

run_process_starts() {
  local system=$1
  shift
  python3 "$bench_dir/first_response.py" --port "$start_port" --starts "$process_starts" \
    --log "$work/$system-starts.log" -- "$@" >"$work/starts.json"
  python3 - "$system" "$work/starts.json" >>"$results" <<'EOF'
import json, sys
system, path = sys.argv[1], sys.argv[2]
for value in json.load(open(path)):
    print(f"{system}\tprocess start to first response ms\t{value}")
EOF
}

write_workerd_config "$work/workerd" "$workerd_port"
write_workerd_config "$work/workerd-start" "$start_port"

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
for round in $(seq "$rounds"); do
  echo "round $round of $rounds" >&2
  "${kiln_command[@]}" --listen "127.0.0.1:$kiln_port" >"$work/kiln.log" 2>&1 &
  pids+=($!)
  "$workerd" serve "$work/workerd/config.capnp" >"$work/workerd.log" 2>&1 &
  pids+=($!)
  wait_ok "$kiln_port" kiln
  wait_ok "$workerd_port" workerd
  for clients in $connections; do
    run_wrk kiln "$kiln_port" "$clients"
    run_wrk workerd "$workerd_port" "$clients"
  done
  for pid in "${pids[@]}"; do
    kill "$pid"
    wait "$pid" 2>/dev/null || true
  done
  pids=()

  run_process_starts kiln "${kiln_command[@]}" --listen "127.0.0.1:$start_port"
  run_process_starts workerd "$workerd" serve "$work/workerd-start/config.capnp"
done

# Memory per idle isolate in workerd: one process with 1 service, then one with ISOLATES.
mapfile -t memory_ports < <(free_ports "$isolates")
workerd_rss=()
for count in 1 "$isolates"; do
  write_workerd_config "$work/workerd-$count" "${memory_ports[@]:0:$count}"
  "$workerd" serve "$work/workerd-$count/config.capnp" >"$work/workerd-memory.log" 2>&1 &
  memory_pid=$!
  pids+=("$memory_pid")
  for port in "${memory_ports[@]:0:$count}"; do
    wait_ok "$port" workerd-memory
  done
  workerd_rss+=("$(rss_kib "$memory_pid")")
  kill "$memory_pid"
  wait "$memory_pid" 2>/dev/null || true
  pids=()
done
python3 -c '
import sys
one, many, count = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(f"workerd\tmemory per idle isolate KiB\t{(many - one) / (count - 1)}")
print(f"workerd\tRSS with 1 isolate KiB\t{one}")
print(f"workerd\tRSS with {count} isolates KiB\t{many}")
' "${workerd_rss[0]}" "${workerd_rss[1]}" "$isolates" >>"$results"

# Kiln's in-process figures.
STARTS=$starts ISOLATES=$isolates WORKER_DIR=$bench_dir "$crate_bench" --tsv >"$work/crate.tsv"
awk -F'\t' '{ print "kiln\t" $1 "\t" $2 }' "$work/crate.tsv" >>"$results"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "Kiln $("$kiln" --version | cut -d' ' -f2), workerd $workerd_version, $rounds rounds," \
  "wrk -t1 for ${duration} s per case, $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo |
    cut -d: -f2 | sed 's/^ //')"
echo
python3 - "$results" "$connections" "$isolates" <<'EOF'
import math
import statistics
import sys
from collections import defaultdict

values = defaultdict(list)
for line in open(sys.argv[1]):
    system, metric, value = line.rstrip("\n").split("\t")
    values[(system, metric)].append(float(value))
connections = sys.argv[2].split()
isolates = sys.argv[3]


def mean(system, metric):
    return statistics.mean(values[(system, metric)])


def cell(system, metric):
    samples = values.get((system, metric))
    if not samples:
        return "-"
    spread = statistics.stdev(samples) if len(samples) > 1 else 0.0
    return f"{statistics.mean(samples):,.1f} ± {spread:,.1f}"


def percentile(samples, fraction):
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = min(max(math.ceil(fraction * len(ordered)), 1), len(ordered))
    return ordered[rank - 1]


print("Throughput and latency under wrk (mean ± standard deviation over the rounds):")
print()
print("| metric | Kiln | workerd | Kiln / workerd |")
print("| --- | --- | --- | --- |")
for clients in connections:
    for name in ("requests/s", "p50 µs", "p99 µs"):
        metric = f"{clients} connections {name}"
        ratio = mean("kiln", metric) / mean("workerd", metric)
        print(f"| {metric} | {cell('kiln', metric)} | {cell('workerd', metric)} | {ratio:.2f} |")

print()
print("Process start to first response, over every start of every round (ms):")
print()
print("| runtime | starts | mean ± sd | p50 | p99 |")
print("| --- | --- | --- | --- | --- |")
metric = "process start to first response ms"
for system in ("kiln", "workerd"):
    samples = values[(system, metric)]
    print(
        f"| {system} | {len(samples)} | {cell(system, metric)} | "
        f"{percentile(samples, 0.5):.1f} | {percentile(samples, 0.99):.1f} |"
    )

print()
samples = int(mean("kiln", "cold_start_samples"))
print(f"Kiln isolate start to first response, in process (µs): first start {mean('kiln', 'cold_start_first_us'):,.0f}"
      f" (compiles the modules), then over {samples} starts with the bytecode cache warm:"
      f" p50 {mean('kiln', 'cold_start_p50_us'):,.0f}, p99 {mean('kiln', 'cold_start_p99_us'):,.0f}")
print()
print(f"Memory per idle isolate, (RSS with {isolates} - RSS with 1) / {int(isolates) - 1}, after one request each:")
print()
print("| runtime | KiB per isolate |")
print("| --- | --- |")
print(f"| Kiln (in-process workers) | {mean('kiln', 'memory_per_isolate_kib'):,.0f} |")
print(f"| workerd (services in one process) | {mean('workerd', 'memory per idle isolate KiB'):,.0f} |")
print()
print(f"workerd RSS: {mean('workerd', 'RSS with 1 isolate KiB'):,.0f} KiB with 1 service,"
      f" {mean('workerd', f'RSS with {isolates} isolates KiB'):,.0f} KiB with {isolates}")
EOF
echo
echo "Load average (1, 5, 15 min) at start: $load_start, at end: $load_end"
