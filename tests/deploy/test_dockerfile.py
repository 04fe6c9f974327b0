"""The Dockerfile's shape: what an operator relies on without reading it."""

from __future__ import annotations

import re
import tomllib

import pytest

from tests.conftest import REPO
from tests.deploy.dockerfile import (
    Stage,
    exec_form,
    final_uv_sync,
    healthcheck,
    ignore_rules,
    is_ignored,
    stages,
)


@pytest.fixture(scope="module")
def build_and_runtime() -> tuple[Stage, Stage]:
    all_stages = stages()
    assert len(all_stages) >= 2, "the image is built in stages: build tools stay out of it"
    runtime = all_stages[-1]
    [build] = [s for s in all_stages if any(f"--from={s.name}" in c for c in runtime.all("COPY"))]
    return build, runtime


def test_multi_stage_with_python_311_slim(build_and_runtime: tuple[Stage, Stage]) -> None:
    build, runtime = build_and_runtime
    assert runtime.image == "python:3.11-slim"
    # The venv's interpreter symlink must resolve in the runtime image.
    assert build.image == runtime.image
    assert not [c for c in runtime.all("COPY") if "astral-sh/uv" in c], "no uv at runtime"


def test_installs_locked_runtime_dependencies_non_editable(
    build_and_runtime: tuple[Stage, Stage],
) -> None:
    build, runtime = build_and_runtime
    command = final_uv_sync(build)
    assert " ".join(command).startswith("uv sync --locked --no-dev")
    assert "--no-editable" in command
    venv = build.env()["UV_PROJECT_ENVIRONMENT"]
    assert build.env()["UV_PYTHON_DOWNLOADS"] == "never"
    assert any(c.split()[-2:] == [venv, venv] for c in runtime.all("COPY"))
    assert runtime.env()["PATH"].startswith(f"{venv}/bin:")


def test_runs_as_numeric_non_root_user(build_and_runtime: tuple[Stage, Stage]) -> None:
    _, runtime = build_and_runtime
    users = runtime.all("USER")
    assert users, "the runtime stage sets USER"
    match = re.fullmatch(r"(\d+)(?::(\d+))?", users[-1])
    assert match, f"USER must be numeric so runAsNonRoot can verify it: {users[-1]!r}"
    assert int(match.group(1)) != 0
    assert match.group(2) is None or int(match.group(2)) != 0
    # Everything after USER runs as that user; nothing may need root later.
    keywords = [i.keyword for i in runtime.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]
    # The data directory belongs to that user, for a root filesystem that is not read-only.
    data_dir = runtime.env()["SIDECAR_DATA_DIR"]
    assert any(f"chown {users[-1]}" in r and data_dir in r for r in runtime.all("RUN"))


def test_environment_ports_and_volumes(build_and_runtime: tuple[Stage, Stage]) -> None:
    _, runtime = build_and_runtime
    env = runtime.env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # read-only root filesystem
    exposed = {port for args in runtime.all("EXPOSE") for port in args.split()}
    assert {"8080", "8081", "9090"} <= exposed
    volumes = {v for args in runtime.all("VOLUME") for v in exec_form(args)}
    assert {env["SIDECAR_DATA_DIR"], "/tmp"} <= volumes


def test_entrypoint_is_the_console_script(build_and_runtime: tuple[Stage, Stage]) -> None:
    _, runtime = build_and_runtime
    [entrypoint] = runtime.all("ENTRYPOINT")
    command = exec_form(entrypoint)  # exec form: the sidecar is PID 1 and receives SIGTERM
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert command[0] in scripts


def test_healthcheck_probes_livez_with_python(build_and_runtime: tuple[Stage, Stage]) -> None:
    _, runtime = build_and_runtime
    options, command = healthcheck(runtime)
    assert command[:2] == ["python", "-c"]
    assert "/livez" in command[2]
    assert "SIDECAR_MANAGEMENT_PORT" in command[2]

    def seconds(text: str) -> float:
        return float(text.removesuffix("s"))

    assert seconds(options["timeout"]) < seconds(options["interval"])


def test_dockerignore_sends_only_what_the_build_needs() -> None:
    rules = ignore_rules()
    for needed in [
        "pyproject.toml",
        "uv.lock",
        "README.md",  # pyproject's readme: the wheel build reads it
        "config/catalog.yaml",  # force-included into the wheel for --local
        "sidecar/__init__.py",
        "sidecar/upstream/graphql/EntitlementsState.graphql",
        "sidecar/emulator/schema/stigg.graphql",
    ]:
        assert not is_ignored(needed, rules), needed
    for unwanted in [
        ".git/config",
        ".venv/bin/python",
        ".env",
        "tests/conftest.py",
        "helm/stigg-sidecar/Chart.yaml",
        "sidecar/__pycache__/app.cpython-311.pyc",
        "dist/stigg_sidecar-0.1.0-py3-none-any.whl",
    ]:
        assert is_ignored(unwanted, rules), unwanted
