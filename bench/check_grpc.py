"""Warm entitlement checks and usage reports over gRPC (Stigg Sidecar's API) and over REST.

    uv run python -m bench.check_grpc [--seconds 10]

One ``--local`` sidecar pinned to core 1, h2load on core 0 (16 h2c connections for gRPC, 16
HTTP/1.1 keep-alive connections for REST, one request in flight on each):
- warm GetBooleanEntitlement and GetMeteredEntitlement, then ``bench/grpc_bare.py`` (the same
  library, grpc.aio, answering a constant message) in the same run: goal >= 0.8 of it;
- the same two checks over REST (``GET /v1/entitlements``);
- ReportUsage accepted/s through gRPC and ``POST /v1/usage`` through REST (each report gets
  its own minted idempotency key and is spooled durably before the answer).
Every answer is checked once before its run, and the sidecar's accepted-usage counter must
grow by exactly the number of reports h2load saw answered.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import grpc
import httpx

from bench._util import (
    SIDECAR_PIDS,
    free_port,
    grpc_frame,
    h2load_post,
    pinned,
    sidecar,
    wait_port,
    wrk,
)
from sidecar.api.grpc import sidecar_v1_pb2 as pb

SERVICE = "/stigg.sidecar.v1.SidecarService/"
BOOLEAN = pb.GetBooleanEntitlementRequest(customer_id="customer-demo", feature_id="feature-sso")
METERED = pb.GetMeteredEntitlementRequest(
    customer_id="customer-demo", feature_id="feature-api-calls"
)
USAGE = pb.ReportUsageRequest(customer_id="customer-demo", feature_id="feature-api-calls", value=1)
REST_CHECKS = {
    rpc: f"/v1/entitlements?customerId=customer-demo&featureId={feature}"
    for rpc, feature in (
        ("GetBooleanEntitlement", "feature-sso"),
        ("GetMeteredEntitlement", "feature-api-calls"),
    )
}
REST_USAGE = b'{"customerId": "customer-demo", "featureId": "feature-api-calls", "value": 1}'
JSON_HEADERS = ("content-type: application/json",)
CONNECTIONS = 16


def call(port: int, rpc: str, request: Any, response: Any) -> Any:
    """One call through grpcio's client: the answer h2load's runs will get."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.unary_unary(
            SERVICE + rpc,
            request_serializer=type(request).SerializeToString,
            response_deserializer=response.FromString,
        )
        return method(request, timeout=10)


def accepted(base: str) -> int:
    return int(httpx.get(base + "/v1/usage/stats").json()["usage"]["accepted"])


def counted(base: str, run: Callable[[], dict[str, float]]) -> dict[str, float]:
    """``run``, checking that every report it saw answered was accepted by the sidecar (plus
    at most one per connection: those in flight when h2load stopped, answered to no one)."""
    before = accepted(base)
    result = run()
    extra = accepted(base) - before - result["requests"]
    assert 0 <= extra <= CONNECTIONS, (extra, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    seconds = args.seconds
    grpc_port = free_port()
    url = f"http://127.0.0.1:{grpc_port}{SERVICE}"
    env = {"SIDECAR_GRPC_ENABLED": "true", "SIDECAR_GRPC_PORT": str(grpc_port)}
    checks: dict[str, dict[str, dict[str, float]]] = {}
    with sidecar(env=env) as base:
        pid = SIDECAR_PIDS[base]
        boolean = call(
            grpc_port, "GetBooleanEntitlement", BOOLEAN, pb.GetBooleanEntitlementResponse
        )
        assert boolean.has_access, boolean
        assert not boolean.is_fallback, boolean
        metered = call(
            grpc_port, "GetMeteredEntitlement", METERED, pb.GetMeteredEntitlementResponse
        )
        assert metered.entitlement.usage_limit == 100000, metered
        for rpc, request in (
            ("GetBooleanEntitlement", BOOLEAN),
            ("GetMeteredEntitlement", METERED),
        ):
            body = grpc_frame(request.SerializeToString())
            h2load_post(url + rpc, body, seconds=2)  # warm-up
            checks[rpc] = {"grpc": h2load_post(url + rpc, body, seconds=seconds, server_pid=pid)}
            rest = base + REST_CHECKS[rpc]
            assert httpx.get(rest).json()["hasAccess"] is True
            wrk(rest, seconds=2)
            checks[rpc]["rest"] = wrk(rest, seconds=seconds, server_pid=pid)
        answer = call(grpc_port, "ReportUsage", USAGE, pb.ReportUsageResponse)
        assert answer.measurement_id.startswith("sidecar-"), answer
        usage_body = grpc_frame(USAGE.SerializeToString())
        usage = {
            "grpc": counted(
                base,
                lambda: h2load_post(
                    url + "ReportUsage", usage_body, seconds=seconds, server_pid=pid
                ),
            ),
            "rest": counted(
                base,
                lambda: h2load_post(
                    base + "/v1/usage",
                    REST_USAGE,
                    headers=JSON_HEADERS,
                    h1=True,
                    seconds=seconds,
                    server_pid=pid,
                ),
            ),
        }
    bare_port = free_port()
    bare = subprocess.Popen(
        pinned(1, [sys.executable, "-m", "bench.grpc_bare", str(bare_port), "grpcio"])
    )
    try:
        wait_port(bare_port, bare)
        bare_url = f"http://127.0.0.1:{bare_port}{SERVICE}"
        for rpc, request in (
            ("GetBooleanEntitlement", BOOLEAN),
            ("GetMeteredEntitlement", METERED),
        ):
            body = grpc_frame(request.SerializeToString())
            h2load_post(bare_url + rpc, body, seconds=2)
            checks[rpc]["bare"] = h2load_post(
                bare_url + rpc, body, seconds=seconds, server_pid=bare.pid
            )
    finally:
        bare.terminate()
        bare.wait(timeout=30)

    print(
        f"warm checks, {seconds} s per run, 16 connections; server on core 1, load on core 0;"
        " CPU = server CPU time per request"
    )
    header = f"{'':22} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us':>7}"
    print(f"{header}   gRPC/bare req/s  CPU")
    for rpc, runs in checks.items():
        for name in ("grpc", "bare", "rest"):
            r = runs[name]
            line = (
                f"{rpc[3:-11] + ' ' + name:22} {r['rps']:8.0f} {r['p50_ms']:7.3f} "
                f"{r['p99_ms']:7.3f} {r['cpu_us']:7.1f}"
            )
            if name == "grpc":
                bare_run = runs["bare"]
                line += (
                    f"   {r['rps'] / bare_run['rps']:15.2f} {bare_run['cpu_us'] / r['cpu_us']:4.2f}"
                )
            print(line)
    print("ReportUsage, accepted (durably spooled) reports per second")
    for name, r in usage.items():
        print(
            f"{'usage ' + name:22} {r['rps']:8.0f} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f}"
            f" {r['cpu_us']:7.1f}"
        )


if __name__ == "__main__":
    main()
