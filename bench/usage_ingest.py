"""Accepted reports per second over HTTP keep-alive, one report and 100 reports per request,
with each spool, against warm checks on the same sidecar process in the same run (the goal: one
report per request at >= 0.7 x the check's req/s). Load generator: wrk (HTTP/1.1 keep-alive,
Lua script for the POST body).

The first rows are the speed limit: a bare aiohttp server (``bare_server.py``, uvloop like the
sidecar's default) answering the same GET, and the same POST by parsing the body and answering
202 without storing anything.

    uv run python -m bench.usage_ingest [--seconds 10] [--connections 32] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._util import free_port, process
from bench.usage_common import SPOOLS, stack

SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [[%s]]
local non202 = 0
response = function(status, headers, body)
  if status ~= 202 then non202 = non202 + 1 end
end
done = function(summary, latency, requests)
  io.write(string.format("NON202 %%d\\n", non202))
  io.write(string.format("P50 %%.3f P99 %%.3f\\n", latency:percentile(50) / 1000,
    latency:percentile(99) / 1000))
end
"""


def body(count: int) -> str:
    usages = [
        {
            "customerId": "customer-demo",
            "featureId": "feature-api-calls",
            "value": 1,
            "resourceId": f"r-{n % 50}",
        }
        for n in range(count)
    ]
    return json.dumps(usages[0] if count == 1 else {"usages": usages})


# About the size of the sidecar's answer to one report (its id, key, status and ids).
ANSWER_SIZE = 200
CHECK = "/v1/entitlements?customerId=customer-demo&featureId=feature-api-calls"
CHECK_SCRIPT = SCRIPT.replace('wrk.method = "POST"', 'wrk.method = "GET"').replace(
    "status ~= 202", "status ~= 200"
)


def run(url: str, count: int, args: argparse.Namespace) -> dict[str, float]:
    """wrk POSTing ``count`` reports per request to ``url``; ``count`` 0: warm checks."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(CHECK_SCRIPT % "" if count == 0 else SCRIPT % body(count))
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{args.threads}",
                f"-c{args.connections}",
                f"-d{args.seconds}s",
                "--latency",
                "-s",
                script.name,
                url,
            ],
            capture_output=True,
            text=True,
            timeout=args.seconds + 60,
            check=True,
        ).stdout
    finally:
        Path(script.name).unlink()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    count = max(count, 1)
    non202 = int(re.search(r"NON202 (\d+)", out).group(1))  # type: ignore[union-attr]
    p50, p99 = (float(x) for x in re.search(r"P50 ([\d.]+) P99 ([\d.]+)", out).groups())  # type: ignore[union-attr]
    return {
        "requests_per_s": rps,
        "reports_per_s": rps * count,
        "non202": non202,
        "p50_ms": p50,
        "p99_ms": p99,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spool", choices=SPOOLS, action="append")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed")
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s, keep-alive")
    print(
        f"{'spool':<14} {'per request':>11} {'req/s':>9} {'reports/s':>10} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'non-2xx':>7} {'x check':>7}"
    )
    port = free_port()
    bare = [sys.executable, "-m", "bench.bare_server", str(port), str(ANSWER_SIZE), "uvloop"]
    with process(bare, f"http://127.0.0.1:{port}/openapi.json"):
        base = f"http://127.0.0.1:{port}"
        run(base + CHECK, 0, args)
        bare_check = run(base + CHECK, 0, args)
        bare_intake = run(f"{base}/v1/usage", 1, args)
    for count, figures in ((0, bare_check), (1, bare_intake)):
        rps = figures["requests_per_s"]
        print(
            f"{'bare aiohttp':<14} {count or 'check':>11} {rps:>9.0f} {'':>10} "
            f"{figures['p50_ms']:>7.2f} {figures['p99_ms']:>7.2f} {figures['non202']:>7} "
            f"{rps / bare_check['requests_per_s']:>7.2f}"
        )
    for spool in args.spool or SPOOLS:
        check_rps = 0.0
        for count in (0, 1, 100):
            with stack(spool) as (_, sidecar):
                if count == 0:
                    run(sidecar.base + CHECK, 0, args)  # warms the cache and the process
                    figures = run(sidecar.base + CHECK, 0, args)
                    check_rps = figures["requests_per_s"]
                else:
                    figures = run(f"{sidecar.base}/v1/usage", count, args)
            print(
                f"{spool:<14} {count or 'check':>11} {figures['requests_per_s']:>9.0f} "
                f"{figures['reports_per_s'] if count else 0:>10.0f} {figures['p50_ms']:>7.2f} "
                f"{figures['p99_ms']:>7.2f} {figures['non202']:>7} "
                f"{figures['requests_per_s'] / check_rps:>7.2f}"
            )


if __name__ == "__main__":
    main()
