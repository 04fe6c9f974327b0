"""Warm entitlement checks over HTTP keep-alive: the sidecar against a bare aiohttp handler.

    uv run python -m bench.check_http [--seconds 10]

For each event loop (asyncio, uvloop): wrk (1 thread, 16 connections) against a warm check on
a ``--local`` sidecar, then against ``bare_server.py`` answering a constant JSON body of the
same size; server and wrk pinned to different cores. Then p50/p99 at a fixed 2,000 req/s
(h2load, open loop) against the sidecar. Targets: ratio >= 0.9, p99 <= 1 ms at 2,000 req/s.
"""

from __future__ import annotations

import argparse
import sys

import httpx

from bench._util import SIDECAR_PIDS, free_port, h2load_fixed_rate, pinned, process, sidecar, wrk

CHECK = "/v1/entitlements?customerId=customer-demo&featureId=feature-api-calls"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    results = {}
    for loop in ("asyncio", "uvloop"):
        with sidecar(env={"SIDECAR_SERVER_EVENT_LOOP": loop}) as base:
            body = httpx.get(base + CHECK).content  # warms the cache
            assert b'"source":"upstream"' in body or b'"source":"cache"' in body, body
            size = len(httpx.get(base + CHECK).content)
            wrk(base + CHECK, seconds=2)  # warm-up run
            ours = wrk(base + CHECK, seconds=args.seconds, server_pid=SIDECAR_PIDS[base])
            fixed = h2load_fixed_rate(base + CHECK, rate=2000, seconds=args.seconds)
        port = free_port()
        bare_cmd = pinned(
            1, [sys.executable, "-m", "bench.bare_server", str(port), str(size), loop]
        )
        with process(bare_cmd, f"http://127.0.0.1:{port}/openapi.json") as bare_process:
            bare_url = f"http://127.0.0.1:{port}{CHECK}"
            wrk(bare_url, seconds=2)
            bare = wrk(bare_url, seconds=args.seconds, server_pid=bare_process.pid)
        results[loop] = (ours, bare, fixed, size)
    print(
        f"warm check, {args.seconds} s per run, body {size} bytes; CPU = server CPU time per"
        " request (not the CPU other processes take; a busier host still slows the sidecar's"
        " larger process more than the bare server)"
    )
    print(
        f"{'loop':8} {'sidecar req/s':>14} {'bare req/s':>11} {'ratio':>6} "
        f"{'p50 ms':>7} {'p99 ms':>7} | {'CPU us/req':>10} {'bare':>6} {'ratio':>6} "
        f"| at 2000 req/s: {'p50 ms':>7} {'p99 ms':>7}"
    )
    for loop, (ours, bare, fixed, _) in results.items():
        print(
            f"{loop:8} {ours['rps']:14.0f} {bare['rps']:11.0f} {ours['rps'] / bare['rps']:6.2f} "
            f"{ours['p50_ms']:7.3f} {ours['p99_ms']:7.3f} | {ours['cpu_us']:10.1f} "
            f"{bare['cpu_us']:6.1f} {bare['cpu_us'] / ours['cpu_us']:6.2f} | {'':14} "
            f"{fixed['p50_ms']:7.3f} {fixed['p99_ms']:7.3f}"
        )


if __name__ == "__main__":
    main()
