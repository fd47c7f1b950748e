"""Real mlx_lm children of `punie eval`, `punie train` and `punie up` (tiny offline model):
a SIGKILLed command leaves no process, and stop-then-start reuses the port at once (TIME_WAIT)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from punie.net import descendants, socket_inodes
from tests.support.launch_helpers import alive, reap, start_punie_up, wait_for
from tests.support.ports import free_port, time_wait_on

pytestmark = [pytest.mark.slow, pytest.mark.mlx]
pytest.importorskip("mlx_lm")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _listening_inodes() -> set[int]:
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":
                found.add(int(fields[9]))
    return found


def _kill_mid_run(argv: list[str], cwd: Path, running) -> None:
    """Start ``argv``, wait until ``running(tree)`` holds, SIGKILL it, and require every process
    of its tree (the guard's watchdogs included) to be gone."""
    proc = subprocess.Popen(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    tree: list[int] = []
    try:
        def ready() -> bool:
            tree[:] = [p for p in descendants(proc.pid) if p != proc.pid]
            return proc.poll() is not None or running(tree)

        assert wait_for(ready, 120, interval=0.1)
        assert proc.poll() is None, "the command ended before it could be killed"
        tree[:] = [p for p in descendants(proc.pid) if p != proc.pid]
        assert tree
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert wait_for(lambda: not any(alive(p) for p in tree), 60), [(p, _cmdline(p)) for p in tree if alive(p)]
    finally:
        reap(proc)


@pytest.mark.timeout(180)
def test_sigkilled_punie_train_leaves_no_process(tmp_path: Path, tiny_model: Path, tiny_dataset: Path) -> None:
    config = tmp_path / "punie.toml"
    config.write_text(f'[profiles.demo]\nmodel = "{tiny_model}"\n')
    argv = [sys.executable, "-m", "punie", "--config", str(config), "train", "demo", "--data", str(tiny_dataset),
            "--iters", "100000", "--rank", "4", "--max-seq-length", "64", "--val-batches", "1"]

    def training(tree: list[int]) -> bool:
        # mlx_lm writes adapter_config.json into the staging folder just before it trains.
        staged = list((tmp_path / "adapters").glob(".*staging*/adapter_config.json"))
        return bool(staged) and any("lora" in _cmdline(p) for p in tree)

    _kill_mid_run(argv, tmp_path, training)


@pytest.mark.timeout(180)
def test_sigkilled_punie_eval_leaves_no_process(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    config = tmp_path / "punie.toml"
    config.write_text(f'[profiles.demo]\nmodel = "{tiny_model}"\nadapter = "{tiny_adapter}"\n'
                      "server.ready_timeout = 60\n")
    argv = [sys.executable, "-m", "punie", "--config", str(config), "eval", "demo"]

    def serving(tree: list[int]) -> bool:
        listening = _listening_inodes()
        return any("mlx_lm" in _cmdline(p) and socket_inodes(p) & listening for p in tree)

    _kill_mid_run(argv, tmp_path, serving)


@pytest.mark.timeout(180)
def test_stop_then_start_reuses_the_port_at_once(tmp_path: Path, tiny_model: Path) -> None:
    port = free_port()
    config = tmp_path / "punie.toml"
    config.write_text(f'[profiles.tiny]\nmodel = "{tiny_model}"\n[profiles.tiny.server]\n'
                      f"port = {port}\nready_timeout = 60\nmax_tokens = 4\n")
    for run in range(2):
        proc, lines, ready = start_punie_up(config, "tiny", tmp_path)
        try:
            assert ready.wait(90), "".join(lines)
            assert proc.poll() is None and any("server ready on" in x for x in lines), "".join(lines)
            if run == 0:
                _server_closes_a_connection_first(port)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=120) == 0, "".join(lines)
        finally:
            reap(proc)
        if run == 0:
            # The server closed a connection first: its side of it stays in TIME_WAIT, which the
            # old check (bind without SO_REUSEADDR) refused for ~60 s.
            assert time_wait_on(port), "no TIME_WAIT left: the test would not test the restart"


def _server_closes_a_connection_first(port: int) -> None:
    """An HTTP/1.0 request: the server answers and closes first, so its socket ends in TIME_WAIT
    (whether the readiness probe's connections did depends on timing)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while conn.recv(65536):  # until the server's FIN
            pass


def test_an_eval_server_that_does_not_load_is_a_launch_failed_naming_the_profile(tmp_path: Path) -> None:
    from punie.config.models import Profile, ResolvedProfile, ServerOptions
    from punie.errors import LaunchFailed
    from punie.training.evaluate import serve

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "qwen2"}')  # no weights
    res = ResolvedProfile(name="x", config_path=str(tmp_path / "punie.toml"),
                          profile=Profile(model=str(broken), server=ServerOptions(ready_timeout=60)))
    with pytest.raises(LaunchFailed) as info, serve(res, log_dir=tmp_path / "logs"):
        pass
    assert info.value.where == "profiles.x" and "No safetensors" in info.value.render()
