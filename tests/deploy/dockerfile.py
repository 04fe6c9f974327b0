"""A small reader for the project's Dockerfile and .dockerignore, so tests can check the image's
shape and run its steps (the final ``uv sync``, the ENTRYPOINT, the HEALTHCHECK) without Docker."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Instruction:
    keyword: str
    args: str


@dataclass
class Stage:
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [i.args for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """The stage's ENV, in the ``ENV k=v k2=v2`` form this Dockerfile uses."""
        values: dict[str, str] = {}
        for args in self.all("ENV"):
            for token in shlex.split(args):
                key, sep, value = token.partition("=")
                assert sep, f"ENV without '=' is not supported by this reader: {args!r}"
                values[key] = value
        return values


def instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped."""
    result: list[Instruction] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = (pending + stripped).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        result.append(Instruction(keyword.upper(), " ".join(args.split())))
    assert not pending, "Dockerfile ends inside a continued line"
    return result


def stages(path: Path = DOCKERFILE) -> list[Stage]:
    result: list[Stage] = []
    for instruction in instructions(path.read_text()):
        if instruction.keyword == "FROM":
            match = re.fullmatch(
                r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", instruction.args, re.I
            )
            assert match, instruction.args
            result.append(Stage(image=match.group(1), name=match.group(2)))
        else:
            assert result, f"{instruction.keyword} before the first FROM"
            result[-1].instructions.append(instruction)
    return result


def run_command(args: str) -> list[str]:
    """A shell-form RUN without its BuildKit ``--mount``/``--network`` flags."""
    tokens = shlex.split(args)
    while tokens and tokens[0].startswith("--"):
        tokens.pop(0)
    return tokens


def final_uv_sync(build: Stage) -> list[str]:
    """The last ``uv sync`` of the build stage: the one that installs the sidecar."""
    syncs = [run_command(a) for a in build.all("RUN") if run_command(a)[:2] == ["uv", "sync"]]
    assert syncs, "no `uv sync` RUN in the build stage"
    return syncs[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args!r}"
    assert all(isinstance(item, str) for item in value)
    return value


def healthcheck(runtime: Stage) -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's options and its exec-form command."""
    [args] = runtime.all("HEALTHCHECK")
    options: dict[str, str] = {}
    while args.startswith("--"):
        option, _, args = args.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
    keyword, _, command = args.partition(" ")
    assert keyword.upper() == "CMD", args
    return options, exec_form(command)


def _pattern(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern (Go filepath.Match plus ``**``) as a regex over relative paths."""
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out)


Rule = tuple[bool, str, re.Pattern[str]]


def ignore_rules(path: Path = DOCKERIGNORE) -> list[Rule]:
    rules = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = (line[1:] if negate else line).strip("/")
        rules.append((negate, pattern, _pattern(pattern)))
    return rules


def is_ignored(relative: str, rules: list[Rule]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, _, regex in rules:
        if any(regex.fullmatch(candidate) for candidate in candidates):
            ignored = not negate
    return ignored


def build_context(destination: Path, source: Path = REPO) -> list[str]:
    """Copy what ``docker build`` would send as context; the copied relative paths."""
    rules = ignore_rules()
    copied = []
    for directory, dirs, files in os.walk(source):
        base = Path(directory).relative_to(source).as_posix()
        base = "" if base == "." else base + "/"
        # Skip ignored trees that no "!" pattern reaches into (.git, .venv, caches).
        dirs[:] = sorted(
            d
            for d in dirs
            if not is_ignored(base + d, rules)
            or any(neg and pattern.startswith(base + d + "/") for neg, pattern, _ in rules)
        )
        for name in sorted(files):
            relative = base + name
            if is_ignored(relative, rules):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / relative, target)
            copied.append(relative)
    return copied
