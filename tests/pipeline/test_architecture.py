"""pipeline/'s rooms and the way their imports run: clips -> format -> io, shard -> format -> io.

Every module is parsed (not imported), function-local imports included, and
each import of another pipeline module is checked against what its room may
use. The modules every room shares (clip spec, errors, splits, the loader's
vocabularies, display geometry, frame-folder names, CLI helpers) import only each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIPELINE = ROOT / "pipeline"
SHARED = {"clip", "errors", "splits", "options", "cli", "display", "frames"}
ROOMS = ("io", "format", "clips", "shard")
MAY_USE = {  # room -> the rooms it may import besides itself and the shared modules
    "io": set(),
    "format": {"io"},
    "clips": {"format", "io"},
    "shard": {"format", "io"},
    "shared": set(),
}


def room_of(module: str) -> str | None:
    """'pipeline.format.tar' -> 'format'; 'pipeline.errors' -> 'shared'; the package and its commands -> None."""
    parts = module.split(".")
    if parts[0] != "pipeline" or len(parts) < 2:
        return None
    if parts[1] in ROOMS:
        return parts[1]
    return "shared" if parts[1] in SHARED else None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def pipeline_imports(source: str) -> list[tuple[int, str]]:
    """(line, module) for every import of a pipeline module, `from pipeline import x` naming pipeline.x."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "pipeline"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "pipeline":
                continue
            for alias in node.names:  # `from pipeline.io import storage` imports the module pipeline.io.storage
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / Path(*sub.split("."))).with_suffix(".py").is_file()
                found.append((node.lineno, sub if is_module else node.module))
    return found


def violations(module: str, source: str) -> list[str]:
    mine = room_of(module)
    if mine is None:
        return []
    allowed = {mine, "shared"} | MAY_USE[mine]
    problems = []
    for line, target in pipeline_imports(source):
        theirs = room_of(target)
        if theirs is None:
            problems.append(f"line {line}: {target} (the package or a command, which import every room)")
        elif theirs not in allowed:
            problems.append(f"line {line}: {target} ({mine} may not use {theirs})")
    return problems


MODULES = sorted(PIPELINE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(PIPELINE).as_posix())
def test_imports_run_one_way(path):
    module = module_name(path)
    assert violations(module, path.read_text(encoding="utf-8")) == []


def test_every_module_has_a_room():
    loose = [m for m in map(module_name, MODULES) if room_of(m) is None]
    assert loose == ["pipeline", "pipeline.synth", "pipeline.verify"]


@pytest.mark.parametrize(
    "module, source, problem",
    [
        ("pipeline.format.tar", "from pipeline.clips.host import HostClips", "format may not use clips"),
        ("pipeline.io.storage", "from pipeline.format import members", "io may not use format"),
        ("pipeline.clips.loader", "def f():\n    from pipeline.shard.ffmpeg import find_ffmpeg", "clips may not"),
        ("pipeline.shard.core", "from pipeline import storage", "the package"),
        ("pipeline.errors", "import pipeline.io.storage", "shared may not use io"),
    ],
)
def test_the_check_catches_an_import_against_the_grain(module, source, problem):
    (found,) = violations(module, source)
    assert problem in found


def test_the_check_allows_the_grain():
    source = "from pipeline.io import storage\nfrom pipeline.format.members import split_name\nimport pipeline.errors"
    assert violations("pipeline.clips.host", source) == []
