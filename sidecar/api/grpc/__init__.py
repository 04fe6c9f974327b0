"""The gRPC API: Stigg Sidecar's ``stigg.sidecar.v1.SidecarService`` over the same services as
REST, so apps written against Stigg's official Sidecar SDKs move here unchanged."""
