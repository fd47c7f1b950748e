"""One face: the CLI reaches Punie's core only through `punie.api`, and every command follows one crash rule.

- An ast scan of ``punie.cli.*``: its imports of Punie are ``punie.api`` (and its submodules),
  ``punie.cli`` itself, ``punie.errors``, and the short allow-list below (with the reason of each).
- An unexpected exception in any command is exit code 3 with one line on stderr that says where
  the traceback went (planted in-process through click's CliRunner for every top-level command, and
  once through a real ``punie`` process).
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import punie
from punie.cli import COMMANDS, main
from punie.errors import ExitCode

CLI = Path(punie.__file__).parent / "cli"

#: Modules of Punie besides punie.api the CLI may import, and why. Keep it short.
ALLOWED = {
    "punie.errors": "error types and ExitCode: the crash rule and the messages at the CLI edge",
    "punie.envvars": "the variable names click reads options from (--config's PUNIE_CONFIG)",
    "punie.limits": "the defaults --help shows (--grace)",
    "punie.textsafe": "printable(): escaping what the CLI renders",
}
#: Whole modules of punie.cli that are exceptions, and why.
EXCEPTIONS = {
    "fastcomplete.py": "TAB completion: stdlib only, runs before click (or the api) is imported",
}


def punie_imports(text: str, filename: str = "<planted>") -> list[tuple[int, str]]:
    """``(line, module)`` of every import of a punie module in ``text`` (module level or inside functions)."""
    found = []
    for node in ast.walk(ast.parse(text, filename=filename)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "punie"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "punie":  # from punie import envvars
                found += [(node.lineno, f"punie.{alias.name}") for alias in node.names]
            elif node.module.split(".")[0] == "punie":
                found.append((node.lineno, node.module))
    return found


def allowed(module: str) -> bool:
    return (module in ("punie.api", "punie.cli") or module.startswith(("punie.api.", "punie.cli."))
            or module in ALLOWED)


def stray_imports(text: str, filename: str = "<planted>") -> list[str]:
    return [f"{filename}:{line}: {module}" for line, module in punie_imports(text, filename) if not allowed(module)]


def test_the_cli_imports_the_core_only_through_the_api() -> None:
    strays = []
    used: set[str] = set()
    for path in sorted(CLI.glob("*.py")):
        if path.name in EXCEPTIONS:
            continue
        text = path.read_text(encoding="utf-8")
        strays += stray_imports(text, path.name)
        used |= {module for _, module in punie_imports(text)}
    assert strays == [], "the CLI calls the core through punie.api: add the function there"
    assert set(ALLOWED) <= used, f"unused allowances: {set(ALLOWED) - used} (shorten the list)"
    assert len(ALLOWED) <= 4
    assert {p.name for p in CLI.glob("*.py")} >= set(EXCEPTIONS)


def test_the_import_scan_finds_planted_core_imports() -> None:
    planted = "\n".join([
        "from punie.config import load_profile",
        "import punie.launch.supervisor",
        "def f():\n    from punie.adapters.registry import adapters_root",
        "from punie import paths",
    ])
    assert sorted(s.split(": ")[1] for s in stray_imports(planted)) == [
        "punie.adapters.registry", "punie.config", "punie.launch.supervisor", "punie.paths"]
    fine = "\n".join(["from punie.api import check", "from punie.api.adapters import fuse", "import punie.api",
                      "from punie.errors import ExitCode", "from punie import envvars",
                      "from punie.cli._common import say", "import click"])
    assert stray_imports(fine) == []


def test_exit_codes_are_defined_once() -> None:
    import signal

    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 128 + signal.SIGINT]
    assert ExitCode.INTERRUPTED == 130


# --------------------------------------------------------------------------- the crash rule

GOOD = '[profiles.a]\nmodel = "m"\n'


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError("planted failure")


#: Top-level command -> (the api function its run calls, that is made to raise; its arguments).
PLANTS: dict[str, tuple[str, list[str]]] = {
    "check": ("punie.api.check", ["check", "a"]),
    "profiles": ("punie.api.profiles.list_profiles", ["profiles"]),
    "schema": ("punie.api.profiles.schema_text", ["schema"]),
    "up": ("punie.api.launch.up", ["up", "a", "--dry-run"]),
    "agent": ("punie.api.agent.parse_options", ["agent", "--base-url", "http://127.0.0.1:9/v1"]),
    "ask": ("punie.api.agent.load_target", ["ask", "hello"]),
    "serve": ("punie.api.launch.serve_model", ["serve", "--model", "m", "--dry-run"]),
    "models": ("punie.api.models.builtin_models", ["models", "list"]),
    "train": ("punie.api.training.train", ["train", "a", "--data", "d"]),
    "eval": ("punie.api.evaluate", ["eval", "a"]),
    "data": ("punie.api.training.data_stats", ["data", "stats", "d"]),
    "adapters": ("punie.api.adapters.adapter_listing", ["adapters", "list"]),
    "ide": ("punie.api.ide.project_config", ["ide", "zed"]),
    "completion": ("click.shell_completion.get_completion_class", ["completion", "bash"]),
}


def test_every_command_has_a_planted_crash() -> None:
    assert set(PLANTS) == set(COMMANDS)


@pytest.mark.parametrize("command", sorted(PLANTS))
def test_an_unexpected_exception_in_any_command_is_exit_3_and_one_line(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target, args = PLANTS[command]
    (tmp_path / "punie.toml").write_text(GOOD)
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the crash file lands here
    monkeypatch.setattr(target, _boom)
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), *args])
    assert result.exit_code == ExitCode.INTERNAL, (result.output, result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    match = re.fullmatch(r"punie: error: internal error: RuntimeError: planted failure "
                         r"\(a bug in Punie; the traceback is in (\S+)\)", lines[0])
    assert match, lines[0]
    crash = Path(match.group(1))
    assert crash.parent == tmp_path and "RuntimeError: planted failure" in crash.read_text()
    assert "Traceback" in crash.read_text() and (crash.stat().st_mode & 0o077) == 0


def test_punie_errors_keep_their_own_message_and_code(tmp_path: Path) -> None:
    (tmp_path / "punie.toml").write_text(GOOD)
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), "profiles", "show", "nosuch"])
    assert result.exit_code == ExitCode.USAGE and result.output.startswith("punie: error: ")
    assert "internal error" not in result.output


def test_an_error_group_of_one_punie_error_is_that_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from punie.errors import CheckFailed

    def grouped(*args: object, **kwargs: object) -> None:
        raise ExceptionGroup("task group", [CheckFailed("the adapter does not fit")])

    (tmp_path / "punie.toml").write_text(GOOD)
    monkeypatch.setattr("punie.api.launch.up", grouped)
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), "up", "a"])
    assert result.exit_code == ExitCode.PROBLEMS
    assert result.output.strip() == "punie: error: the adapter does not fit"


def test_ctrl_c_in_a_command_is_exit_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("punie.api.models.builtin_models", interrupted)
    result = CliRunner().invoke(main, ["models", "list"])
    assert result.exit_code == ExitCode.INTERRUPTED and "Traceback" not in result.output


def test_verbose_shows_the_traceback_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import logging
    import tempfile

    monkeypatch.setattr("punie.api.models.builtin_models", _boom)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the crash file lands here
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)  # what -vv sets (basicConfig does nothing where pytest has a handler)
    try:
        result = CliRunner().invoke(main, ["-vv", "models", "list"])
    finally:
        root.setLevel(level)
    assert result.exit_code == ExitCode.INTERNAL
    assert "Traceback" in result.output and "punie: error: internal error: RuntimeError" in result.output


SITECUSTOMIZE = '''
import punie.api.models

def boom():
    raise ValueError("planted in a real process")

punie.api.models.builtin_models = boom
'''


def test_a_real_punie_process_crashing_exits_3_with_one_line(tmp_path: Path) -> None:
    """The installed ``punie`` executable, with a bug planted by a sitecustomize on PYTHONPATH."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    script = Path(sys.executable).with_name("punie")
    argv = [str(script)] if script.is_file() else [sys.executable, "-m", "punie"]
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(tmp_path / "site")}
    proc = subprocess.run([*argv, "models", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("punie: error: internal error: ValueError: planted in a real"), \
        proc.stderr
    crash = Path(lines[0].rsplit("the traceback is in ", 1)[1].rstrip(")"))
    assert crash.parent == tmp_path and "ValueError: planted in a real process" in crash.read_text()
    assert proc.stdout == ""
