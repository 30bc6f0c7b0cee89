#!/usr/bin/env bash
# Builds Kiln, installs the bundled models and starts a node on 127.0.0.1:8787 (or the address
# given with --listen; every argument is passed to `kiln serve`).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/install-build-deps.sh
cargo build --release --locked --bins
KILN_BIN="$root/target/release/kiln" scripts/install-models.sh
scripts/install-onnxruntime.sh

cat <<'TRY'

Kiln is starting. Try it from another terminal:

  curl -s http://127.0.0.1:8787/ai/run/@cf/meta/llama-2-7b-chat-int8 \
    -d '{"messages": [{"role": "user", "content": "What is the capital of France?"}]}'

TRY
exec "$root/target/release/kiln" serve --log-format pretty "$@"
