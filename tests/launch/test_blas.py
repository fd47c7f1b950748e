"""The fast BLAS for mlx children (punie.launch.blas): found, preloaded into the child only, proven mapped.

The search, the settings (PUNIE_BLAS, server.blas) and the environment are checked directly; then
real `punie up` sessions on the tiny model: with OpenBLAS installed the started mlx_lm.server has
it mapped (read from /proc/PID/maps by the agent, a sibling process, not by Punie), and with the
search pointed at an empty directory Punie still serves and says once, in one line, what to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from punie import envvars
from punie.launch import blas
from punie.launch.blas import BlasChoice, find_blas, mapped_blas, mlx_child_env, preload_env
from tests.support import tiny
from tests.support.ports import free_port

#: PUNIE_REQUIRE_OPENBLAS=1 (set by .ci/run) turns a missing OpenBLAS into a failure instead of a skip.
REQUIRE_OPENBLAS = os.environ.get("PUNIE_REQUIRE_OPENBLAS") == "1"
SYSTEM_BLAS = blas.search() if sys.platform == "linux" else None


def _need_openblas() -> str:
    if SYSTEM_BLAS is None:
        if REQUIRE_OPENBLAS:
            pytest.fail("PUNIE_REQUIRE_OPENBLAS=1 but no OpenBLAS is installed (apt-get install libopenblas0-pthread)")
        pytest.skip("no OpenBLAS installed (apt-get install libopenblas0-pthread)")
    return SYSTEM_BLAS


def _fake_lib(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x7fELF")
    return path


def test_search_prefers_the_threaded_debian_openblas(tmp_path: Path) -> None:
    serial = _fake_lib(tmp_path, "x86_64-linux-gnu/libopenblas.so.0")
    threaded = _fake_lib(tmp_path, "x86_64-linux-gnu/openblas-pthread/libblas.so.3")
    assert blas.search([str(tmp_path)]) == str(threaded)
    threaded.unlink()
    assert blas.search([str(tmp_path)]) == str(serial)


def test_fedora_layout_is_found(tmp_path: Path) -> None:
    _fake_lib(tmp_path, "libopenblas.so.0")
    threaded = _fake_lib(tmp_path, "libopenblasp.so.0")
    assert find_blas(str(tmp_path), {}, platform="linux").path == str(threaded)


def test_settings_off_file_directory_and_env_precedence(tmp_path: Path) -> None:
    lib = _fake_lib(tmp_path / "lib", "libopenblas.so.0")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert find_blas("off", {}, platform="linux") == BlasChoice(None, "server.blas", "off by server.blas")
    assert find_blas(str(lib), {}, platform="linux").path == str(lib)
    # PUNIE_BLAS wins over the profile's server.blas
    choice = find_blas(str(lib), {envvars.BLAS: str(empty)}, platform="linux")
    assert choice.path is None and choice.hint and choice.source == envvars.BLAS
    assert find_blas(str(empty), {envvars.BLAS: "OFF"}, platform="linux").hint is False
    missing = find_blas(str(tmp_path / "nope.so"), {}, platform="linux")
    assert missing.path is None and "does not exist" in (missing.reason or "") and missing.hint


def test_macos_is_left_alone(tmp_path: Path) -> None:
    lib = _fake_lib(tmp_path, "libopenblas.so.0")
    choice = find_blas(str(lib), {}, platform="darwin")
    assert choice.path is None and not choice.hint and "Metal" in (choice.reason or "")
    assert preload_env(choice, {"LD_PRELOAD": "/a.so"}) == {}


def test_preload_is_prepended_to_an_existing_one_without_duplicates(tmp_path: Path) -> None:
    choice = BlasChoice("/x/libblas.so.3", "search")
    assert preload_env(choice, {}) == {"LD_PRELOAD": "/x/libblas.so.3"}
    assert preload_env(choice, {"LD_PRELOAD": "/a.so /x/libblas.so.3:/b.so"}) == {
        "LD_PRELOAD": "/x/libblas.so.3:/a.so:/b.so"}


def test_the_hint_is_given_once_per_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(blas, "_told", set())
    choice = find_blas(str(tmp_path), {}, platform="linux")
    first = blas.hint_once(choice)
    assert first is not None and "apt-get install libopenblas0-pthread" in first and "\n" not in first
    assert "dnf install openblas" in first
    assert blas.hint_once(choice) is None


def test_every_mlx_child_environment_gets_the_preload(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """train, the canary and the server all go through mlx_child_env (one function)."""
    from punie.launch.stamp import _child_env
    from punie.training.train import train_env

    lib = _fake_lib(tmp_path, "libopenblas.so.0")
    monkeypatch.setenv(envvars.BLAS, str(lib))
    monkeypatch.setattr(blas, "applies", lambda platform=None: None)
    for env in (mlx_child_env(), train_env(), _child_env()):
        assert env["LD_PRELOAD"].split(":")[0] == str(lib)
    assert "LD_PRELOAD" not in os.environ or str(lib) not in os.environ["LD_PRELOAD"]  # never Punie itself
    assert "LD_PRELOAD" not in train_env({envvars.BLAS: "off"})  # the old path, on request


def test_the_dry_run_plan_names_the_blas(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from punie.config import load_profile
    from punie.launch import prepare

    lib = _fake_lib(tmp_path / "lib", "libopenblas.so.0")
    monkeypatch.setattr(blas, "applies", lambda platform=None: None)
    (tmp_path / "punie.toml").write_text(f"[profiles.t]\nmodel = {json.dumps(str(tiny_model))}\n"
                                         f"[profiles.t.server]\nblas = {json.dumps(str(lib))}\n")
    plan = prepare(load_profile("t", config=tmp_path / "punie.toml"), check=False, provision=False)
    assert plan.backend.blas == str(lib) and plan.server_env["LD_PRELOAD"] == str(lib)
    assert f"blas:    {lib} (preloaded)" in plan.render_text()
    assert plan.agent_env.get("LD_PRELOAD") is None  # the agent does not run mlx
    monkeypatch.setenv(envvars.BLAS, "off")
    plan = prepare(load_profile("t", config=tmp_path / "punie.toml"), check=False, provision=False)
    assert plan.backend.blas is None and "LD_PRELOAD" not in plan.server_env
    assert "blas:    bundled (off by PUNIE_BLAS)" in plan.render_text()


#: The agent of the sessions below: finds the server (a sibling: mlx_lm on our port) in /proc and
#: writes the BLAS libraries it mapped, so the check does not rely on Punie's own report.
SIBLING_MAPS = r"""
import json, os, sys
port, out = sys.argv[1], sys.argv[2]
for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
        argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\0')
    except OSError:
        continue
    if b'mlx_lm' in argv and port.encode() in argv:
        maps = open(f'/proc/{pid}/maps').read().splitlines()
        libs = sorted({l.split()[-1] for l in maps if 'blas' in l.rsplit('/', 1)[-1].lower()})
        json.dump({'pid': int(pid), 'libs': libs}, open(out, 'w'))
"""


def _tiny_project(root: Path, model: Path) -> Path:
    (root / "punie.toml").write_text(f"[profiles.tiny]\nmodel = {json.dumps(str(model))}\n"
                                     "[profiles.tiny.server]\nready_timeout = 90\n")
    return root / "punie.toml"


def _up(config: Path, out: Path, port: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    agent = json.dumps([sys.executable, "-c", SIBLING_MAPS, str(port), str(out)])
    # `punie up` itself (cli/up.py -> punie.api.launch.up -> punie.launch.supervisor.run_up), with this agent
    code = ("import json, sys; import punie.launch.supervisor as L; run = L.run_up; agent = json.loads(sys.argv[1]); "
            "L.run_up = lambda *a, **k: run(*a, **{**k, 'agent_argv': agent}); "
            "from punie.cli import main; sys.argv = ['punie', *sys.argv[2:]]; main()")
    return subprocess.run(
        [sys.executable, "-c", code, agent, "--config", str(config), "up", "tiny", "--no-check", "--format", "json",
         "--set", f"server.port={port}"],
        capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL, env=env)


@pytest.mark.slow
@pytest.mark.mlx
def test_punie_up_server_maps_the_fast_blas(tmp_path: Path, tiny_model: Path) -> None:
    """A server started by `punie up` on Linux has OpenBLAS mapped (/proc/PID/maps); the status says so."""
    pytest.importorskip("mlx_lm")
    lib = _need_openblas()
    out, port = tmp_path / "maps.json", free_port()
    proc = _up(_tiny_project(tmp_path, tiny_model), out, port, tiny.mlx_env())
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(out.read_text())
    real = os.path.realpath(lib)
    assert real in {os.path.realpath(p) for p in seen["libs"]}, seen
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status["blas"]["active"] is True and status["blas"]["preloaded"] == lib
    assert f"BLAS: {lib} (mapped by the server)" in proc.stderr
    assert "LD_PRELOAD" not in os.environ or lib not in os.environ["LD_PRELOAD"]
    assert lib not in mapped_blas(os.getpid())  # Punie's own process: never preloaded


@pytest.mark.slow
@pytest.mark.mlx
def test_punie_up_without_a_fast_blas_serves_and_says_what_to_install(tmp_path: Path, tiny_model: Path) -> None:
    pytest.importorskip("mlx_lm")
    empty = tmp_path / "no-blas-here"
    empty.mkdir()
    out, port = tmp_path / "maps.json", free_port()
    proc = _up(_tiny_project(tmp_path, tiny_model), out, port, tiny.mlx_env({envvars.BLAS: str(empty)}))
    assert proc.returncode == 0, proc.stderr  # served, the agent ran
    hints = [line for line in proc.stderr.splitlines() if "apt-get install libopenblas0-pthread" in line]
    assert len(hints) == 1, proc.stderr
    assert f"no OpenBLAS in {empty}" in hints[0] and "dnf install openblas" in hints[0]
    seen = json.loads(out.read_text())
    assert not any("openblas" in p for p in seen["libs"]), seen
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status["exit_code"] == 0 and status["blas"]["active"] is False and status["blas"]["preloaded"] is None
