#!/usr/bin/env python3
"""Load client for OpenAI-compatible chat servers, used by scripts/bench-llama-server.sh.

Runs `--streams` client threads against `POST /v1/chat/completions` with `stream: true`. Each
thread sends `--requests` requests one after another, taking questions from a fixed list in turn
and numbering them.
Prints one JSON line: aggregate completion tokens per second over the whole run, and time to
first token (TTFT) percentiles. Uses only the standard library.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

SYSTEM_PROMPT = "You are a helpful assistant. Answer in full sentences."

# Open-ended questions, so that the model tends to use the whole `max_tokens`.
QUESTIONS = [
    "Explain how a refrigerator keeps food cold.",
    "Describe the water cycle in detail.",
    "Write a short story about a lighthouse keeper.",
    "Explain why the sky is blue.",
    "Describe how bread is made, step by step.",
    "Write a letter to a friend about a trip to the mountains.",
    "Explain how a bicycle stays upright.",
    "Describe a busy market in the morning.",
    "Explain how plants turn sunlight into food.",
    "Write a short story about a lost cat finding its way home.",
    "Describe the life of a honey bee.",
    "Explain how a train moves along its tracks.",
    "Describe a walk through a forest in autumn.",
    "Explain how a computer stores a photo.",
    "Write a short story about a robot learning to paint.",
    "Describe how a river changes from its source to the sea.",
]


def run_request(url, model, question, max_tokens, seed):
    """Sends one streaming chat request. Returns (TTFT in seconds, completion tokens)."""
    parsed = urlparse(url)
    body = json.dumps(
        {
            "model": model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": question},
            ],
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": seed,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )

    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=600)
    started = time.perf_counter()
    connection.request(
        "POST", "/v1/chat/completions", body, {"Content-Type": "application/json"}
    )
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"{url} returned HTTP {response.status}: {response.read()[:300]!r}")

    first_token = None
    completion_tokens = None
    chunks = 0
    for raw in response:
        line = raw.decode("utf-8").strip()
        if not line.startswith("data:"):
            continue
        payload = line[len("data:"):].strip()
        if payload == "[DONE]":
            break
        event = json.loads(payload)
        for choice in event.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                chunks += 1
                if first_token is None:
                    first_token = time.perf_counter() - started
        usage = event.get("usage")
        if usage:
            completion_tokens = usage["completion_tokens"]
    connection.close()

    if first_token is None:
        raise RuntimeError(f"{url} streamed no text for {question!r}")
    # A server without usage in the stream sends about one content chunk per token.
    return first_token, completion_tokens if completion_tokens is not None else chunks


def percentile(values, fraction):
    ordered = sorted(values)
    index = min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))
    return ordered[index]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--model", required=True, help="model name sent in each request")
    parser.add_argument("--streams", type=int, required=True, help="concurrent client threads")
    parser.add_argument("--requests", type=int, default=2, help="requests per thread")
    parser.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request")
    parser.add_argument("--seed", type=int, default=1, help="seed of each request")
    args = parser.parse_args()

    results = []
    errors = []
    lock = threading.Lock()

    def worker(thread_index):
        for round_index in range(args.requests):
            number = thread_index + round_index * args.streams
            # The number keeps every request's prompt distinct, so no server finds a whole
            # earlier prompt in a cache. Only the system prompt is shared.
            question = f"Question {number}: {QUESTIONS[number % len(QUESTIONS)]}"
            try:
                result = run_request(args.url, args.model, question, args.max_tokens, args.seed)
            except Exception as error:  # reported after the run, with the others
                with lock:
                    errors.append(str(error))
                return
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.streams)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        print(f"error: {len(errors)} requests failed, first: {errors[0]}", file=sys.stderr)
        sys.exit(1)

    ttfts = [ttft for ttft, _ in results]
    tokens = sum(count for _, count in results)
    print(
        json.dumps(
            {
                "streams": args.streams,
                "requests": len(results),
                "completion_tokens": tokens,
                "seconds": round(elapsed, 3),
                "tokens_per_second": round(tokens / elapsed, 2),
                "ttft_median_ms": round(statistics.median(ttfts) * 1000, 1),
                "ttft_p90_ms": round(percentile(ttfts, 0.9) * 1000, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
