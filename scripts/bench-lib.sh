# Helpers shared by the benchmark scripts that compare Kiln with workerd. Source it after
# setting `root`; it sets `work` (a temporary folder removed at exit) and `pids` (processes
# stopped at exit).

# Exits with an error naming the first command in the arguments that is not installed.
require_tools() {
  for tool in "$@"; do
    if ! command -v "$tool" >/dev/null; then
      echo "error: $tool not found; see the prerequisites at the top of $0" >&2
      exit 1
    fi
  done
}

# Installs and checks the pinned workerd unless it is already there (scripts/install-workerd.sh),
# and sets `workerd` (its binary) and `workerd_version`.
install_workerd() {
  workerd=$("$root/scripts/install-workerd.sh")
  workerd_version=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["version"])' \
    "$(dirname "$workerd")/../package.json")
}

# Prints COUNT distinct free loopback ports, one a line.
free_ports() {
  python3 -c '
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in sockets))
' "$1"
}

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
