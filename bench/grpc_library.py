"""Which gRPC server library: the same bare unary handler (``bench/grpc_bare.py``) in grpcio's
grpc.aio and in grpclib + betterproto (what Stigg's Sidecar SDK uses), under the same load.

    uv run python -m bench.grpc_library [--seconds 8] [--rounds 2]

Server pinned to core 1, h2load (16 h2c connections) on core 0, GetBooleanEntitlement.
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from bench._util import free_port, grpc_frame, h2load_post, pinned, wait_port
from sidecar.api.grpc import sidecar_v1_pb2 as pb

REQUEST = pb.GetBooleanEntitlementRequest(customer_id="customer-demo", feature_id="feature-sso")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    body = grpc_frame(REQUEST.SerializeToString())
    print(f"{'library':10} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'CPU us/req':>10}")
    for _ in range(args.rounds):
        for library in ("grpcio", "grpclib"):
            port = free_port()
            server = subprocess.Popen(
                pinned(1, [sys.executable, "-m", "bench.grpc_bare", str(port), library])
            )
            try:
                wait_port(port, server)
                url = (
                    f"http://127.0.0.1:{port}/stigg.sidecar.v1.SidecarService/GetBooleanEntitlement"
                )
                h2load_post(url, body, seconds=2)
                r = h2load_post(url, body, seconds=args.seconds, server_pid=server.pid)
            finally:
                server.terminate()
                server.wait(timeout=30)
            print(
                f"{library:10} {r['rps']:8.0f} {r['p50_ms']:7.3f} {r['p99_ms']:7.3f}"
                f" {r['cpu_us']:10.1f}"
            )


if __name__ == "__main__":
    main()
