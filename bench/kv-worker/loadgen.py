#!/usr/bin/env python3
"""Send sequential HTTP requests over one keep-alive connection and print latency percentiles.

Each request is a GET of PATH with "i=<n>" appended, n spread over 0..KEYS-1. The run stops
after COUNT requests or SECONDS seconds, whichever comes first. The latency of a request is the
time from sending it to reading its whole body, so it includes HTTP parsing on both sides and
this client's own overhead. A response other than 200 counts as an error.

Prints one JSON object: requests, errors, seconds, requests_per_second, p50_us, p99_us.
"""

import argparse
import http.client
import json
import sys
import time


def percentile(sorted_values, quantile):
    index = round((len(sorted_values) - 1) * quantile)
    return sorted_values[index]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="port on 127.0.0.1")
    parser.add_argument("--path", required=True, help="request path, for example /get")
    parser.add_argument("--count", type=int, default=2000, help="maximum requests")
    parser.add_argument("--seconds", type=float, default=10.0, help="maximum run time in seconds")
    parser.add_argument("--keys", type=int, default=1000, help="number of distinct key indexes")
    parser.add_argument("--warmup", type=int, default=50, help="untimed requests sent first")
    args = parser.parse_args()

    connection = http.client.HTTPConnection("127.0.0.1", args.port, timeout=30)

    def send(index):
        connection.request("GET", f"{args.path}?i={index % args.keys}")
        response = connection.getresponse()
        body = response.read()
        return response.status, body

    for index in range(args.warmup):
        status, body = send(index)
        if status != 200:
            print(f"error: warm-up request {args.path} returned {status}: {body[:200]!r}",
                  file=sys.stderr)
            return 1

    latencies = []
    errors = 0
    started = time.perf_counter()
    deadline = started + args.seconds
    for index in range(args.count):
        sent = time.perf_counter()
        if sent > deadline:
            break
        status, _ = send(index * 7919)
        latencies.append(time.perf_counter() - sent)
        if status != 200:
            errors += 1
    elapsed = time.perf_counter() - started
    connection.close()

    latencies.sort()
    print(json.dumps({
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "requests_per_second": round(len(latencies) / elapsed, 1),
        "p50_us": round(percentile(latencies, 0.5) * 1e6, 1),
        "p99_us": round(percentile(latencies, 0.99) * 1e6, 1),
    }))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
