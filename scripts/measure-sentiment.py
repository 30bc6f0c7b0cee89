#!/usr/bin/env python3
"""Measure the accuracy of a running node's sentiment classifier on labelled sentences.

Each line of the data file is {"text": ..., "label": "POSITIVE" | "NEGATIVE"}. The script
sends each text to POST {url}/ai/run/{model}, takes the label with the highest score and
prints the accuracy overall and per label, and the misclassified sentences.

Usage: scripts/measure-sentiment.py [--url http://127.0.0.1:8787]
           [--model @cf/huggingface/distilbert-sst-2-int8] [--data tests/data/sentiment_200.jsonl]
Needs only the Python standard library.
"""

import argparse
import json
import sys
import urllib.request
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def classify(url: str, model: str, text: str) -> str:
    request = urllib.request.Request(
        f"{url}/ai/run/{model}",
        data=json.dumps({"text": text}).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        labels = json.load(response)
    return max(labels, key=lambda label: label["score"])["label"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8787", help="base URL of the node")
    parser.add_argument("--model", default="@cf/huggingface/distilbert-sst-2-int8")
    parser.add_argument("--data", default=ROOT / "tests/data/sentiment_200.jsonl", type=Path)
    args = parser.parse_args()

    cases = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()]
    totals, correct = Counter(), Counter()
    for case in cases:
        predicted = classify(args.url.rstrip("/"), args.model, case["text"])
        totals[case["label"]] += 1
        if predicted == case["label"]:
            correct[case["label"]] += 1
        else:
            print(f"wrong ({predicted}): {case['text']}")
    accuracy = sum(correct.values()) / len(cases)
    print(f"accuracy: {sum(correct.values())}/{len(cases)} = {accuracy:.1%}")
    for label in sorted(totals):
        print(f"  {label}: {correct[label]}/{totals[label]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
