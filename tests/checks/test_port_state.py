"""A busy port is state, not configuration (issue 25, item 7).

`punie check` and `punie up --dry-run` warn (exit 0; `check --strict` exits 1), naming who
listens: Punie's own `punie up` of the same profile with its pid (found through /proc: the
listener's ancestors' command lines), or another process's pid. Only `punie up` refuses.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from punie.checks.server import is_punie_up
from tests.support.launch_helpers import run_punie
from tests.support.ports import free_port

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds listeners through /proc")


@pytest.mark.parametrize("argv,profile,env,expected", [
    (["/venv/bin/python", "/venv/bin/punie", "up", "demo"], "demo", None, True),
    (["/venv/bin/punie", "up", "demo", "--no-check"], "demo", None, True),
    (["python", "-m", "punie", "--config", "x.toml", "up", "demo"], "demo", None, True),
    (["python", "-m", "punie", "up", "--group", "a,demo"], "demo", None, True),
    (["python", "-m", "punie", "up", "--group=demo"], "demo", None, True),
    (["punie", "up"], "demo", "demo", True),  # the profile from PUNIE_PROFILE
    (["punie", "up"], "demo", "other", False),
    (["punie", "up", "other"], "demo", "demo", False),
    (["punie", "check", "demo"], "demo", None, False),
    (["python", "-m", "mlx_lm.server", "--port", "8080"], "demo", None, False),
    (["python", "-m", "punie", "up", "--set", "demo", "x"], "demo", None, False),  # --set's value, not a name
    ([], "demo", None, False),
])
def test_is_punie_up(argv: list[str], profile: str, env: str | None, expected: bool) -> None:
    assert is_punie_up(argv, profile, env) is expected


FAKE_UP = textwrap.dedent("""\
    import os, socket, subprocess, sys, time
    port = int(os.environ["FAKE_PORT"])
    if os.environ.get("FAKE_CHILD"):  # the server: a child of `punie up`, holding the listening socket
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port)); s.listen()
        print("listening", flush=True)
        time.sleep(300)
    child = subprocess.Popen([sys.executable, __file__, "server"], env={**os.environ, "FAKE_CHILD": "1"},
                             stdout=sys.stdout)
    child.wait()
""")


def _fake_up(tmp_path: Path, port: int, profile: str) -> subprocess.Popen[str]:
    """A process spelled like the `punie` console script running `up PROFILE`, whose child listens."""
    script = tmp_path / "bin" / "punie"
    script.parent.mkdir(exist_ok=True)
    script.write_text(FAKE_UP)
    proc = subprocess.Popen([sys.executable, str(script), "up", profile], env={**os.environ, "FAKE_PORT": str(port)},
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    os.killpg(proc.pid, 9)
    proc.wait(timeout=120)


def _config(tmp_path: Path, model: Path, port: int) -> Path:
    config = tmp_path / "punie.toml"
    config.write_text(f'[profiles.demo]\nmodel = "{model}"\nserver.port = {port}\n\n'
                      f'[profiles.other]\nmodel = "{model}"\nserver.port = {port}\n')
    return config


@linux
@pytest.mark.slow
def test_punies_own_up_on_the_port_is_named_with_its_pid_and_only_a_warning(tmp_path: Path,
                                                                           tiny_model: Path) -> None:
    port = free_port()
    config = _config(tmp_path, tiny_model, port)
    up = _fake_up(tmp_path, port, "demo")
    try:
        check = run_punie(config, "check", "--format", "json")
        strict = run_punie(config, "check", "demo", "--strict", "--format", "json")
        dry = run_punie(config, "up", "demo", "--dry-run")
    finally:
        _stop(up)
    assert check.returncode == 0, check.stdout + check.stderr
    by_profile = {p["name"]: p["problems"] for p in json.loads(check.stdout)["profiles"]}
    (mine,) = [p for p in by_profile["demo"] if p["code"] == "port"]
    assert mine["severity"] == "warning"
    assert f"Punie's own `punie up demo` already runs this profile (pid {up.pid}; the server is pid" in mine["message"]
    (theirs,) = [p for p in by_profile["other"] if p["code"] == "port"]
    assert "Punie's own" not in theirs["message"] and "listens there" in theirs["message"]
    assert strict.returncode == 1
    assert [p["severity"] for p in json.loads(strict.stdout)["profiles"][0]["problems"] if p["code"] == "port"] \
        == ["error"]
    assert dry.returncode == 0, dry.stderr
    assert f"pid {up.pid}" in dry.stderr and "already in use" in dry.stderr


@linux
@pytest.mark.slow
def test_only_up_refuses_a_busy_port(tmp_path: Path, tiny_model: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = _config(tmp_path, tiny_model, port)
        check = run_punie(config, "check", "demo")
        up = run_punie(config, "up", "demo")
    assert check.returncode == 0 and "already in use" in check.stdout and f"pid {os.getpid()}" in check.stdout
    assert up.returncode == 1 and f"port {port} on 127.0.0.1 is already in use" in up.stderr
