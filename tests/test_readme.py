"""The README's figures come from commands in the repo: check they still agree."""

from pathlib import Path

import tpn
from tpn.zoo import zoo_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_zoo_table_is_what_python_m_tpn_prints():
    assert zoo_table(tpn.list_models()) in README.read_text()


def test_readme_quick_start_has_the_two_commands_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_cmd = 'pip install torch==2.13.0 -e ".[test]" && python -m pytest -q'
    assert test_cmd in text
    assert 'pip install torch==2.13.0 -e ".[test]"' in ci and "python -m pytest -q" in ci
