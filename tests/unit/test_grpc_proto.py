"""The committed protobuf code matches the .proto, and the .proto matches Stigg's SDK."""

from __future__ import annotations

from pathlib import Path

import betterproto
from stigg_sidecar_sdk.generated.stigg.sidecar import v1 as sdk

from sidecar.api.grpc import generate
from sidecar.api.grpc import sidecar_v1_pb2 as pb
from sidecar.api.grpc.service import RPCS


def test_generated_code_is_what_protoc_makes_of_the_proto(tmp_path: Path) -> None:
    generate.generate(tmp_path)
    for name in generate.GENERATED:
        committed = (generate.HERE / name).read_text()
        assert committed == (tmp_path / name).read_text(), (
            f"{name} is out of date: run 'uv run python -m sidecar.api.grpc.generate'"
        )


def test_the_service_has_the_twelve_rpcs_of_the_contract() -> None:
    methods = pb.DESCRIPTOR.services_by_name["SidecarService"].methods_by_name
    assert set(methods) == set(RPCS)
    assert len(RPCS) == 12
    for name, (_, request, response) in RPCS.items():
        assert methods[name].input_type.full_name == request.DESCRIPTOR.full_name
        assert methods[name].output_type.full_name == response.DESCRIPTOR.full_name


def test_every_message_field_matches_the_sdk_stubs() -> None:
    """Number, name and wire type of every field, as the SDK's betterproto classes see them."""
    assert len(pb.DESCRIPTOR.message_types_by_name) == 48
    for name, descriptor in pb.DESCRIPTOR.message_types_by_name.items():
        stub = getattr(sdk, name)
        meta = {
            m.number: (field, m.proto_type)
            for field, m in stub()._betterproto.meta_by_field_name.items()
        }
        ours = {f.number: f.name for f in descriptor.fields}
        assert {number: field for number, (field, _) in meta.items()} == ours, name
        for field in descriptor.fields:
            kinds = {betterproto.TYPE_MESSAGE, betterproto.TYPE_MAP}
            if meta[field.number][1] in kinds:
                assert field.type == field.TYPE_MESSAGE, f"{name}.{field.name}"


def test_enum_values_match_the_sdk() -> None:
    for name, descriptor in pb.DESCRIPTOR.enum_types_by_name.items():
        stub = getattr(sdk, name)
        assert {v.name: v.number for v in descriptor.values} == {m.name: m.value for m in stub}
