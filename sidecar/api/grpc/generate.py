"""Regenerate ``sidecar_v1_pb2.py`` and its ``.pyi`` from ``sidecar_v1.proto``.

    uv run python -m sidecar.api.grpc.generate

Needs the dev dependency grpcio-tools; the generated files are committed, and
tests/unit/test_grpc_proto.py fails when they drift from the ``.proto``.
"""

from __future__ import annotations

import sys
import tempfile
from importlib import resources
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "sidecar_v1.proto"
GENERATED = ("sidecar_v1_pb2.py", "sidecar_v1_pb2.pyi")


def generate(out_dir: Path) -> None:
    """Run protoc (from grpcio-tools) on the ``.proto`` into ``out_dir``."""
    from grpc_tools import protoc  # type: ignore[import-untyped]

    includes = str(resources.files("grpc_tools") / "_proto")
    code = protoc.main(
        [
            "protoc",
            f"-I{HERE}",
            f"-I{includes}",
            f"--python_out={out_dir}",
            f"--pyi_out={out_dir}",
            str(HERE / PROTO),
        ]
    )
    if code != 0:
        raise RuntimeError(f"protoc failed with exit code {code}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp))
        for name in GENERATED:
            (HERE / name).write_bytes((Path(tmp) / name).read_bytes())
    print(f"wrote {', '.join(GENERATED)}", file=sys.stderr)


if __name__ == "__main__":
    main()
