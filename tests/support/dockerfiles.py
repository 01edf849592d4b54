"""A service's Dockerfile as the tests read it: what its image installs (extras), copies and sets (ENV, WORKDIR).

Used by the image checks (tests/unit/deploy/test_dockerfiles.py) and the overlay start test, which rebuilds each
image's /app and venv from it (tests/integration/deploy/test_overlay_start.py)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Image:
    service: str
    extras: tuple[str, ...]
    editable: bool
    copies: tuple[tuple[tuple[str, ...], str], ...]  # (sources, destination) of the build stage's COPY lines
    env: tuple[tuple[str, str], ...]  # the final stage's ENV
    workdir: str


def dockerfile_lines(path: Path) -> list[str]:
    """Instructions with their continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        if not pending and raw.lstrip().startswith("#"):
            continue
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        lines.append((pending + raw).strip())
        pending = ""
    return [line for line in lines if line]


def parse_dockerfile(service: str) -> Image:
    lines = dockerfile_lines(REPO / "services" / service / "Dockerfile")
    args: dict[str, str] = {}
    stages: list[list[str]] = []
    for line in lines:
        instruction, _, rest = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "ARG" and "=" in rest:
            name, _, default = rest.strip().partition("=")
            args[name] = default
        elif instruction == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append(line)
    assert len(stages) == 2, f"{service}: expected a build stage and a runtime stage"
    build_stage, runtime_stage = stages

    def expand(text: str) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)

    copies = []
    installs = []
    for line in build_stage:
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "COPY":
            words = shlex.split(rest)
            assert not any(w.startswith("--") for w in words), f"{service}: COPY options not handled: {line}"
            copies.append((tuple(words[:-1]), words[-1]))
        elif instruction.upper() == "RUN" and "pip install" in line:
            installs.append(expand(line))
    (install,) = installs
    match = re.search(r"""pip install\b.*?(-e\s+)?["']?\.\[([^\]]*)\]""", install)
    assert match, f"{service}: no `pip install .[extras]` in {install!r}"
    env: list[tuple[str, str]] = []
    workdir = "/"
    for line in runtime_stage:
        instruction, _, rest = line.partition(" ")
        if instruction.upper() == "ENV":
            for word in shlex.split(rest, posix=True):
                name, sep, value = word.partition("=")
                assert sep, f"{service}: ENV without = is not handled: {line}"
                env.append((name, value))
        elif instruction.upper() == "WORKDIR":
            workdir = rest.strip()
    extras = tuple(e.strip() for e in match.group(2).split(",") if e.strip())
    return Image(service, extras, bool(match.group(1)), tuple(copies), tuple(env), workdir)
