#!/usr/bin/env bash
# Installs the workerd binary that the benchmarks compare Kiln against, and prints its path on
# stdout. The version comes from the npm lockfile in bench/workerd-pin. The script checks the
# lockfile's SHA-512 of the linux-x64 binary package against the one written below. It also
# checks the downloaded tarball, because npm ci skips an optional package whose tarball fails
# the integrity check instead of failing. When that version is already installed, the script
# only prints the path.
#
# Used by scripts/bench-kv.sh and scripts/bench-workers.sh:
#   workerd=$("$root/scripts/install-workerd.sh")
# The npm version is in "$(dirname "$workerd")/../package.json", because `workerd --version`
# prints the release date instead.
#
# Prerequisites: node and npm (the registry through npm's own client), python3.
#
# Environment: WORKERD_PREFIX (install folder, default .bench/workerd at the repository root).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
pin_dir=$root/bench/workerd-pin
workerd_prefix=${WORKERD_PREFIX:-$root/.bench/workerd}
workerd_version=1.20261123.1
# SHA-512 of the linux-x64 binary package's tarball, as the lockfile records it.
workerd_integrity="sha512-hQs6svgH3YxdgKw7K0IVZ/gmeW49/z4UEHcxpsQHEa6Y2ZabUQef7YCI/BVcaCoHHp8p3cE/cziU3qh9ALIICw=="

for tool in npm python3; do
  if ! command -v "$tool" >/dev/null; then
    echo "error: $tool not found; see the prerequisites at the top of $0" >&2
    exit 1
  fi
done

locked_integrity=$(python3 -c '
import json, sys
lock = json.load(open(sys.argv[1]))
print(lock["packages"]["node_modules/@cloudflare/workerd-linux-64"]["integrity"])
' "$pin_dir/package-lock.json")
if [[ "$locked_integrity" != "$workerd_integrity" ]]; then
  echo "error: $pin_dir/package-lock.json records $locked_integrity for" \
    "@cloudflare/workerd-linux-64, expected $workerd_integrity" >&2
  exit 1
fi

workerd=$workerd_prefix/node_modules/@cloudflare/workerd-linux-64/bin/workerd
installed_version=$(python3 -c '
import json, sys
try:
    print(json.load(open(sys.argv[1]))["version"])
except FileNotFoundError:
    print("none")
' "$workerd_prefix/node_modules/@cloudflare/workerd-linux-64/package.json")
if [[ "$installed_version" == "$workerd_version" && -x "$workerd" ]]; then
  echo "$workerd"
  exit 0
fi

echo "installing workerd $workerd_version into $workerd_prefix" >&2
rm -rf "$workerd_prefix"
mkdir -p "$workerd_prefix"
cp "$pin_dir/package.json" "$pin_dir/package-lock.json" "$workerd_prefix/"
# The binary comes from the platform package, so the wrapper's postinstall is not needed.
npm ci --prefix "$workerd_prefix" --ignore-scripts --no-audit --no-fund >&2
if [[ ! -x "$workerd" ]]; then
  echo "error: npm ci did not install $workerd; npm skips the optional" \
    "@cloudflare/workerd-linux-64 when its tarball fails the lockfile's integrity check" >&2
  exit 1
fi
# npm pack takes the tarball from npm's cache, which npm ci has just filled.
mkdir -p "$workerd_prefix/tarball"
npm pack "@cloudflare/workerd-linux-64@$workerd_version" \
  --pack-destination "$workerd_prefix/tarball" --silent >/dev/null
tarball_integrity=$(python3 -c '
import base64, glob, hashlib, sys
(path,) = glob.glob(sys.argv[1] + "/*.tgz")
digest = hashlib.sha512(open(path, "rb").read()).digest()
print("sha512-" + base64.b64encode(digest).decode())
' "$workerd_prefix/tarball")
if [[ "$tarball_integrity" != "$workerd_integrity" ]]; then
  rm -rf "$workerd_prefix"
  echo "error: the @cloudflare/workerd-linux-64 $workerd_version tarball has" \
    "$tarball_integrity, expected $workerd_integrity; removed $workerd_prefix" >&2
  exit 1
fi
echo "workerd tarball matches $workerd_integrity" >&2
echo "$workerd"
