"""Where the server's CPU goes, per request: py-spy samples a ``--local`` sidecar under wrk
answering warm checks, or (``--usage``) accepting one usage report per request.

    uv run python -m bench.profile_requests [--usage] [--seconds 10] [--loop asyncio|uvloop]
        [--redis-url redis://127.0.0.1:6379/0]  # Redis for the cache and usage spool

Needs ``py-spy`` on PATH (``uv tool install py-spy``; sampling another process needs ptrace
rights: root, or ``kernel.yama.ptrace_scope=0``). Prints the share of samples by package
(own time, the innermost frame) and the functions with the most own time, with the server's
CPU microseconds per request from ``/proc`` for scale.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import httpx

from bench._util import SIDECAR_PIDS, emulator, sidecar, stat_cpu_seconds, wrk

CHECK = "/v1/entitlements?customerId=customer-demo&featureId=feature-api-calls"
USAGE = '{"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1}'


def package_of(frame: str) -> str:
    """``function (path/to/module.py:line)`` -> what it belongs to."""
    path = "/" + frame.rpartition("(")[2]
    for name in ("sidecar", "aiohttp", "multidict", "yarl", "asyncio", "uvloop", "pydantic"):
        if f"/{name}/" in path:
            return name
    return "python/other"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds so far of each thread of ``pid`` (the event loop's thread id is ``pid``)."""
    seconds: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):  # a thread that ended meanwhile
            seconds[int(task.name)] = stat_cpu_seconds(task / "stat")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--loop", default="asyncio", choices=("asyncio", "uvloop"))
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--usage", action="store_true", help="POST /v1/usage, 1 report each")
    parser.add_argument("--redis-url", help="a loopback Redis for the cache and the spool")
    args = parser.parse_args()
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: uv tool install py-spy")
    env = {"SIDECAR_SERVER_EVENT_LOOP": args.loop}
    if args.redis_url:
        env["SIDECAR_REDIS_URL"] = args.redis_url
    with (
        # Usage is delivered in the background: to an emulator of its own, so its work on the
        # deliveries is not counted as the sidecar's (with --local it shares the process).
        emulator() if args.usage else contextlib.nullcontext() as stigg,
        sidecar(stigg, env=env) as base,
        tempfile.TemporaryDirectory() as temp,
    ):
        httpx.get(base + CHECK).raise_for_status()
        target = base + ("/v1/usage" if args.usage else CHECK)
        script = Path(temp) / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            "wrk.body = [[" + USAGE + "]]\n"
        )
        load_args = {"script": script} if args.usage else {}
        wrk(target, seconds=2, **load_args)  # warm-up
        out = Path(temp) / "stacks.txt"
        record = [spy, "record", "--pid", str(SIDECAR_PIDS[base]), "--format", "raw"]
        record += ["--rate", "500", "--duration", str(args.seconds), "--output", str(out)]
        recorder = subprocess.Popen(record, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        figures: dict[str, float] = {}
        pid = SIDECAR_PIDS[base]
        threads_before = thread_cpu(pid)
        load = threading.Thread(
            target=lambda: figures.update(
                wrk(target, seconds=args.seconds, server_pid=pid, **load_args)
            )
        )
        load.start()
        load.join()
        threads_after = thread_cpu(pid)
        _, error = recorder.communicate(timeout=args.seconds + 60)
        if recorder.returncode != 0 or not out.exists():
            raise SystemExit(f"py-spy failed: {error.decode(errors='replace')[-500:]}")
        own: collections.Counter[str] = collections.Counter()
        packages: collections.Counter[str] = collections.Counter()
        total = others = 0
        for line in out.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack:
                continue
            count = int(count_text)
            if "sidecar/__main__.py" not in stack:
                others += count  # another thread (the spool's writer, a thread pool)
                continue
            leaf = stack.split(";")[-1]
            own[leaf] += count
            packages[package_of(leaf)] += count
            total += count
    cpu_us = figures["cpu_us"]
    what = "one usage report per request" if args.usage else "warm check"
    print(
        f"{what} on {args.loop}: {figures['rps']:.0f} req/s, {cpu_us:.1f} us CPU/request,"
        f" {total} samples (event loop thread, own time of the innermost frame)"
    )
    requests = figures["rps"] * args.seconds
    loop_us = (threads_after.get(pid, 0.0) - threads_before.get(pid, 0.0)) / requests * 1e6
    others_us = (sum(threads_after.values()) - sum(threads_before.values())) / requests * 1e6
    print(
        f"CPU per request by thread (/proc): event loop {loop_us:.1f} us,"
        f" the others (spool writer, thread pools) {others_us - loop_us:.1f} us"
    )
    # The loop thread's CPU per request split by its samples (the other threads sample mostly
    # as waiting in a queue, and a sample cannot tell the time a thread waits for the GIL).
    per_sample = loop_us / total
    print(f"{'share':>6} {'~us/req':>8}  package (the event loop's thread)")
    for name, count in packages.most_common():
        print(f"{count / total:6.1%} {count * per_sample:8.1f}  {name}")
    print(f"{'':6} {'':8}  (other threads: {others} samples)")
    print(f"\n{'share':>6} {'~us/req':>8}  function (own time)")
    for frame, count in own.most_common(args.top):
        print(f"{count / total:6.1%} {count * per_sample:8.1f}  {frame[:110]}")


if __name__ == "__main__":
    main()
