"""CPU to read one usage request body into validated reports, in-process (no HTTP, no spool):
the parse-and-validate share of ``bench.usage_ingest``, steady enough to compare on a busy
machine.

    uv run python -m bench.usage_parse [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import orjson

from sidecar.usage.model import parse_usage_request

REPORT = {"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1}


def body(count: int) -> bytes:
    if count == 1:
        return orjson.dumps({**REPORT, "idempotencyKey": "key-0"})
    return orjson.dumps(
        {"usages": [{**REPORT, "idempotencyKey": f"key-{i}"} for i in range(count)]}
    )


def cpu_per_request(data: bytes, requests: int) -> float:
    """Seconds of process CPU per request body parsed."""
    started = time.process_time()
    for _ in range(requests):
        parse_usage_request(data, max_reports=1000)
    return (time.process_time() - started) / requests


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print("reports/request  CPU us/request (min, max of rounds)  us/report")
    for count in (1, 100):
        data = body(count)
        runs = [cpu_per_request(data, 20_000 // count) * 1e6 for _ in range(args.rounds)]
        print(f"{count:15d}  {min(runs):10.1f} {max(runs):10.1f}  {min(runs) / count:18.2f}")


if __name__ == "__main__":
    main()
