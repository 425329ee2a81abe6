"""`export/` uses only the public APIs of `tpn` and `pipeline`, and `tpn/` only `pipeline`'s: the names
their `__init__.py` export.

Every export module is parsed (not imported) and each import of, or
attribute taken from, `tpn` or `pipeline` is checked against the package's
`__all__`, so reaching into a submodule fails here instead of silently
coupling export to internals. `tpn.cli` and `pipeline.cli` (the shared
command-line flags) are public modules.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline
import tpn

ROOT = Path(__file__).resolve().parents[2]
EXPORT_FILES = sorted((ROOT / "export").glob("*.py"))
TPN_FILES = sorted((ROOT / "tpn").glob("*.py"))
PUBLIC = {"tpn": set(tpn.__all__), "pipeline": set(pipeline.__all__)}
PUBLIC_MODULES = {"tpn.cli", "pipeline.cli"}  # the shared command-line flags, imported by name


def private_uses(source: str, public: dict[str, set[str]] = PUBLIC) -> list[str]:
    """'line N: what' for every use of a package in `public` beyond its public names."""
    found = []
    bound: dict[str, str] = {}  # local name -> package, for `import tpn` / `import tpn as t`
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                root = alias.name.split(".")[0]
                if root not in public:
                    continue
                if alias.name != root and alias.name not in PUBLIC_MODULES:
                    found.append(f"line {node.lineno}: import {alias.name} (a submodule)")
                bound[alias.asname or root] = root
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            root = node.module.split(".")[0]
            if root not in public:
                continue
            if node.module in PUBLIC_MODULES:
                continue
            if node.module != root:
                found.append(f"line {node.lineno}: from {node.module} import ... (a submodule)")
                continue
            found += [
                f"line {node.lineno}: from {root} import {a.name} (not in {root}.__all__)"
                for a in node.names
                if a.name not in public[root]
            ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound:
            root = bound[node.value.id]
            if node.attr not in public[root]:
                found.append(f"line {node.lineno}: {node.value.id}.{node.attr} (not in {root}.__all__)")
    return found


@pytest.mark.parametrize("path", EXPORT_FILES, ids=lambda p: p.name)
def test_export_uses_only_public_names_of_tpn_and_pipeline(path):
    assert private_uses(path.read_text(encoding="utf-8")) == [], f"{path.name} reaches past the public API"


@pytest.mark.parametrize("path", TPN_FILES, ids=lambda p: p.name)
def test_tpn_uses_only_public_names_of_pipeline(path):
    assert private_uses(path.read_text(encoding="utf-8"), {"pipeline": PUBLIC["pipeline"]}) == [], (
        f"{path.name} reaches past pipeline's public API"
    )


@pytest.mark.parametrize(
    "source, problem",
    [
        ("from tpn.metrics import accuracy", "from tpn.metrics import"),
        ("import pipeline.format.tar", "import pipeline.format.tar"),
        ("from pipeline import wds", "from pipeline import wds"),
        ("from pipeline import sampling as s", "from pipeline import sampling"),
        ("import tpn\ndef f():\n    return tpn.checkpoint.read_checkpoint", "tpn.checkpoint"),
        ("import tpn as t\nx = t.metrics", "t.metrics"),
        ("def f():\n    from tpn.checkpoint import read_checkpoint", "from tpn.checkpoint import"),
    ],
)
def test_the_check_catches_private_uses(source, problem):
    found = private_uses(source)
    assert len(found) == 1 and problem in found[0]


def test_the_check_allows_public_names():
    ok = (
        "import tpn\nfrom pipeline import ClipSpec, sha256_file\nfrom export.errors import ExportError\n"
        "from tpn.cli import add_checkpoint_arg\nx = tpn.get_config"
    )
    assert private_uses(ok) == []


@pytest.mark.parametrize("package", ["tpn", "pipeline"])
def test_every_public_name_exists(package):
    module = {"tpn": tpn, "pipeline": pipeline}[package]
    missing = [name for name in module.__all__ if not hasattr(module, name)]
    assert missing == []


def test_pipeline_imports_neither_dali_nor_tpn():
    code = "import sys, pipeline; print(sorted(m for m in sys.modules if m.split('.')[0] in ('tpn', 'nvidia')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_no_library_function_is_named_like_a_test():
    """pytest collects any imported function whose name starts with `test`: none of the packages' is."""
    found = []
    for package in ("pipeline", "tpn", "export", "benchmarks"):
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found += [
                f"{path.relative_to(ROOT)}: {node.name}"
                for node in tree.body
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower().startswith("test")
            ]
    assert found == []
