"""The ``mlx`` marker is put by the rule of tests/support/markers.py (tests/conftest.py), not by hand:
checked on source written here, and on the real suite's collection (what `-m "not mlx"` keeps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import markers

REPO = Path(__file__).resolve().parents[2]


def _reaches(tmp_path: Path, source: str, name: str) -> bool:
    path = tmp_path / "test_sample.py"
    path.write_text(textwrap.dedent(source))
    markers._parsed.cache_clear()
    markers._facts.cache_clear()
    return markers._reaches(str(path), name, set())


@pytest.mark.parametrize(("source", "uses"), [
    # mlx imported in the test, or through a name the module imported at its top
    ("def test_x():\n    import mlx.core as mx\n    mx.array([1])\n", True),
    ("import mlx.core as mx\ndef test_x():\n    mx.array([1])\n", True),
    ("from mlx_lm import load\ndef test_x():\n    load('m')\n", True),
    ("from punie.adapters.canary_mlx import stamp\ndef test_x():\n    stamp()\n", True),
    # a helper of the module, or one of tests/support reached through its own source
    ("from tests.support import tiny\ndef _m(p):\n    return tiny.build_tiny_model(p)\ndef test_x(tmp_path):\n"
     "    _m(tmp_path)\n", True),
    ("from tests.support.tiny import train_tiny_adapter\ndef test_x():\n    train_tiny_adapter\n", True),
    ("from tests.support.corpus import build_corpus\ndef test_x(tmp_path):\n    build_corpus(tmp_path)\n", True),
    # a synthetic adapter (numpy), a plan asserting an argv, a message naming mlx_lm: no mlx runs
    ("from tests.support.corpus import lora_adapter\ndef test_x(tmp_path):\n    lora_adapter(tmp_path)\n", False),
    ("def test_x():\n    assert ['-m', 'mlx_lm', 'server'][1] == 'mlx_lm'\n", False),
    ("from tests.support.ports import free_port\ndef test_x():\n    free_port()\n", False),
])
def test_the_rule_follows_names_into_helpers_and_support(tmp_path: Path, source: str, uses: bool) -> None:
    assert _reaches(tmp_path, source, "test_x") is uses


def test_a_module_importing_mlx_at_its_top_is_mlx_throughout(tmp_path: Path) -> None:
    top = tmp_path / "top.py"
    top.write_text("import mlx.core as mx\n\ndef test_plain():\n    assert 1\n")
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def test_plain():\n    import mlx.core\n")
    assert markers.module_imports_mlx(str(top)) and not markers.module_imports_mlx(str(lazy))


_COLLECTOR = """
import json, os

def pytest_collection_finish(session):
    marks = {item.nodeid: sorted(m.name for m in item.iter_markers()) for item in session.items}
    with open(os.environ["MARKS_OUT"], "w") as fh:
        json.dump(marks, fh)
"""


@pytest.mark.slow
def test_the_suite_is_marked_by_the_rule_at_collection(tmp_path: Path) -> None:
    """On real modules: tests that build a tiny model through a fixture (tests/conftest.py), through a
    module's own fixture or helper, or in a module importing mlx at its top carry ``mlx`` without a
    mark in their source; tests of the same modules that use no mlx do not."""
    (tmp_path / "marks_collector.py").write_text(_COLLECTOR)
    out = tmp_path / "marks.json"
    modules = ["tests/checks/test_port_state.py", "tests/training/test_dataset.py", "tests/weights/test_gguf_import.py",
               "tests/weights/test_safetensors.py", "tests/launch/test_plan.py"]
    env = {**os.environ, "MARKS_OUT": str(out), "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "marks_collector",
                           "-p", "no:randomly", "-p", "no:cacheprovider", *modules], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    marks = json.loads(out.read_text())
    mlx = {node for node, names in marks.items() if "mlx" in names}
    # fixtures of tests/conftest.py that build a tiny model with mlx
    assert "tests/checks/test_port_state.py::test_only_up_refuses_a_busy_port" in mlx
    assert "tests/weights/test_safetensors.py::test_reads_a_real_mlx_file" in mlx
    # mlx imported by a helper of the module the test calls
    assert any(node.startswith("tests/weights/test_gguf_import.py::test_import_matches_hf_layout_reference")
               for node in mlx)
    # no mlx: plans asserting an mlx_lm argv, a message naming mlx_lm, a header round trip
    assert "tests/launch/test_plan.py::test_server_argv_maps_every_option_to_mlx_lm_flags" not in mlx
    assert "tests/training/test_dataset.py::test_missing_valid_split_says_mlx_needs_it" not in mlx
    assert "tests/training/test_dataset.py::test_mlx_lm_renders_the_shipped_rows_with_their_tools" not in mlx
    assert "tests/weights/test_gguf_import.py::test_import_rejects_missing_file" not in mlx
    assert "tests/weights/test_safetensors.py::test_write_then_read_round_trips" not in mlx
    # and the rule agrees with the collection for every item of these modules
    assert len(marks) > 30 and 0 < len(mlx) < len(marks)
