"""The code passes the linter and the formatter configured in pyproject.toml (ruff check: pyflakes and
pycodestyle; ruff format: the layout). `ruff format .` fixes the second."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def ruff() -> list[str]:
    """The command that runs ruff: the module when it is installed in this Python, else a `ruff` binary on
    PATH; skips the test when there is neither."""
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode == 0:
        return [sys.executable, "-m", "ruff"]
    binary = shutil.which("ruff")
    if binary is None:
        pytest.skip("ruff is in the [test] extra: pip install -e '.[test]'")
    return [binary]


def test_ruff_finds_nothing():
    run = subprocess.run(
        [*ruff(), "check", "--output-format", "concise", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]


def test_ruff_format_changes_nothing():
    run = subprocess.run(
        [*ruff(), "format", "--check", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert run.returncode == 0, "run `ruff format .`:\n" + run.stdout[-4000:] + run.stderr[-2000:]
