"""A bare gRPC server answering GetBooleanEntitlement / GetMeteredEntitlement with a constant
message: the ceiling a gRPC library puts on the sidecar's checks.

    uv run python -m bench.grpc_bare PORT grpcio|grpclib

``grpcio`` is ``grpc.aio`` (C core) with the sidecar's generated protobuf classes (upb);
``grpclib`` is grpclib with the betterproto classes shipped in stigg-sidecar-sdk (what the SDK
itself uses). Both decode the request and encode the response on every call.
"""

from __future__ import annotations

import sys
from typing import Any


async def serve_grpcio(port: int) -> None:
    import grpc

    from sidecar.api.grpc import sidecar_v1_pb2 as pb

    boolean = pb.GetBooleanEntitlementResponse(has_access=True)
    boolean.entitlement.feature.id = "feature-bare"
    metered = pb.GetMeteredEntitlementResponse(has_access=True)
    metered.entitlement.feature.id = "feature-bare"
    metered.entitlement.usage_limit = 1000
    metered.entitlement.current_usage = 10

    async def get_boolean(request: Any, context: Any) -> Any:
        return boolean

    async def get_metered(request: Any, context: Any) -> Any:
        return metered

    handlers = {
        "GetBooleanEntitlement": grpc.unary_unary_rpc_method_handler(
            get_boolean,
            request_deserializer=pb.GetBooleanEntitlementRequest.FromString,
            response_serializer=pb.GetBooleanEntitlementResponse.SerializeToString,
        ),
        "GetMeteredEntitlement": grpc.unary_unary_rpc_method_handler(
            get_metered,
            request_deserializer=pb.GetMeteredEntitlementRequest.FromString,
            response_serializer=pb.GetMeteredEntitlementResponse.SerializeToString,
        ),
    }
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("stigg.sidecar.v1.SidecarService", handlers),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def serve_grpclib(port: int) -> None:
    from grpclib.server import Server
    from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as sdk

    feature = sdk.EntitlementFeature(id="feature-bare")
    boolean = sdk.GetBooleanEntitlementResponse(
        has_access=True, entitlement=sdk.BooleanEntitlement(feature=feature)
    )
    metered = sdk.GetMeteredEntitlementResponse(
        has_access=True,
        entitlement=sdk.MeteredEntitlement(feature=feature, usage_limit=1000, current_usage=10),
    )

    class Bare(sdk.SidecarServiceBase):
        async def get_boolean_entitlement(self, request: Any) -> Any:
            return boolean

        async def get_metered_entitlement(self, request: Any) -> Any:
            return metered

    server = Server([Bare()])
    await server.start("127.0.0.1", port)
    await server.wait_closed()


def main() -> None:
    port, library = int(sys.argv[1]), sys.argv[2]
    import uvloop

    serve = serve_grpcio if library == "grpcio" else serve_grpclib
    uvloop.run(serve(port))


if __name__ == "__main__":
    main()
