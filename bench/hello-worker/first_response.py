"""Time from process start to the first 200 response, for scripts/bench-workers.sh.

Starts COMMAND (everything after `--`) STARTS times. Each time, it sends GET / to
127.0.0.1:PORT every 0.5 ms until a response with status 200 arrives, records the time since
the process was spawned, then stops the process and waits for it to exit. Prints the times in
milliseconds as a JSON list. The port must be free before each start, so that no other server
can respond in place of the one being timed.
"""

import argparse
import http.client
import json
import socket
import subprocess
import sys
import time

POLL_SECONDS = 0.0005
TIMEOUT_SECONDS = 30.0


def port_is_free(port):
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def get_status(port):
    """Returns the status of GET /, or None while nothing listens or responds yet."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        response.read()
        return response.status
    except OSError:
        return None
    finally:
        connection.close()


def time_first_response(command, port, log):
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=log, stderr=log)
    try:
        while True:
            if get_status(port) == 200:
                return (time.perf_counter() - started) * 1000
            if process.poll() is not None:
                sys.exit(f"error: {command[0]} exited with {process.returncode} before its first response")
            if time.perf_counter() - started > TIMEOUT_SECONDS:
                sys.exit(f"error: {command[0]} sent no 200 response on port {port} within {TIMEOUT_SECONDS} s")
            time.sleep(POLL_SECONDS)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True, help="port the command listens on")
    parser.add_argument("--starts", type=int, default=10, help="number of process starts")
    parser.add_argument("--log", required=True, help="file that receives the command's output")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("missing the command after --")

    times = []
    with open(args.log, "ab") as log:
        for _ in range(args.starts):
            if not port_is_free(args.port):
                sys.exit(f"error: port {args.port} is in use before the start; stop what listens there")
            times.append(time_first_response(command, args.port, log))
    print(json.dumps(times))


if __name__ == "__main__":
    main()
