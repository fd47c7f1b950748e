"""The platform mechanisms (issue 25, item 9): one table picks native (/proc, subreaper, pdeathsig)
or portable (psutil, polling, watchdog) for each job; CI on Linux runs both by forcing the portable
one, the way macOS users get it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest

from punie import mechanisms
from punie.errors import LaunchFailed
from punie.launch import run_plan
from punie.launch.guard import guard_mode
from punie.launch.readiness import owner_problem, served_ids_problem
from punie.net import owns_listener
from tests.support.launch_helpers import fake_plan, pids, wait_for
from tests.support.ports import free_port

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the native mechanisms are Linux's")


@pytest.fixture(params=["native", "portable"])
def way(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PUNIE_MECHANISMS", request.param)
    return str(request.param)


@linux
def test_one_table_chooses_every_job_and_the_environment_forces_it(monkeypatch: pytest.MonkeyPatch) -> None:
    assert {job: mechanisms.mechanism(job) for job in mechanisms.JOBS} == dict.fromkeys(mechanisms.JOBS, "native")
    monkeypatch.setenv("PUNIE_MECHANISMS", "portable")
    assert {job: mechanisms.mechanism(job) for job in mechanisms.JOBS} == dict.fromkeys(mechanisms.JOBS, "portable")
    assert guard_mode() == "watchdog"
    monkeypatch.setenv("PUNIE_MECHANISMS", "descendants=portable, port-owner=native, nonsense=portable")
    assert mechanisms.mechanism("descendants") == "portable" and mechanisms.mechanism("port-owner") == "native"
    assert guard_mode() == "pdeathsig"
    monkeypatch.setenv("PUNIE_GUARD_MODE", "watchdog")  # the guard's own switch still wins for the guard
    assert guard_mode() == "watchdog"
    with pytest.raises(ValueError):
        mechanisms.mechanism("teleport")


def test_forcing_native_where_the_kernel_lacks_it_still_gives_portable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_MECHANISMS", "native")
    monkeypatch.setattr(mechanisms.sys, "platform", "darwin")
    assert {job: mechanisms.mechanism(job) for job in mechanisms.JOBS} == dict.fromkeys(mechanisms.JOBS, "portable")


LISTENER = """
import socket, sys, time, os
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
if ':' in sys.argv[1]:
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen()
print('listening', flush=True)
time.sleep(600)
"""


def _listen(host: str, port: int, *, via_shell: bool = False) -> subprocess.Popen[str]:
    argv = [sys.executable, "-c", LISTENER, host, str(port)]
    if via_shell:  # the listener is a grandchild: the tree, not the pid, owns the socket
        argv = ["sh", "-c", 'exec "$@" & wait', "sh", *argv]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.kill()
    proc.wait()


def test_the_owner_of_a_listening_port_is_told_on_both_paths(way: str) -> None:
    port = free_port()
    ours = _listen("127.0.0.1", port, via_shell=True)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        assert owns_listener(ours.pid, port, "127.0.0.1") is True
        assert owner_problem(ours.pid, "127.0.0.1", port) is None
        assert owns_listener(bystander.pid, port, "127.0.0.1") is False  # a server that does not hold the port
        problem = owner_problem(bystander.pid, "127.0.0.1", port)
        assert problem and f"pid {bystander.pid}" in problem
        assert owns_listener(ours.pid, free_port(), "127.0.0.1") is False  # nothing listens there
    finally:
        _stop(ours)
        _stop(bystander)


def test_a_second_listener_on_the_port_is_not_ours(way: str) -> None:
    """Ours listens on 127.0.0.1, another process on the wildcard of the same port (v6): not only ours."""
    port = free_port()
    ours = _listen("127.0.0.1", port)
    try:
        other = _listen("::", port)
    except AssertionError:
        _stop(ours)
        pytest.skip("cannot listen on :: here")
    try:
        assert owns_listener(ours.pid, port, "127.0.0.1") is False
    finally:
        _stop(ours)
        _stop(other)


class _Models(BaseHTTPRequestHandler):
    body: object = None

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        data = json.dumps(self.server.body).encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.mark.parametrize(("body", "foreign"), [
    ({"object": "list", "data": [{"id": "/models/other"}]}, True),
    ({"object": "list", "data": [{"id": "/models/ours"}, {"id": "x"}]}, False),
    ({"object": "list", "data": []}, False),  # says nothing either way (mlx_lm without a hub cache)
    ({"status": "ok"}, False),
    ("not a dict", False),
])
def test_the_servers_own_model_list_is_the_second_witness(body: object, foreign: bool) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    server.body = body  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        problem = anyio.run(served_ids_problem, url, ("/models/ours",))
        assert (problem is not None) == foreign, problem
        if foreign:
            assert "/models/ours" in problem and "/models/other" in problem
    finally:
        server.shutdown()
        server.server_close()


def test_a_foreign_server_taking_the_port_is_refused_on_both_paths(tmp_path: Path, way: str) -> None:
    foreign_pid = tmp_path / "foreign.pid"
    plan = fake_plan(tmp_path, server_args=["--mode", "foreign", "--foreign-pidfile", str(foreign_pid)],
                     agent_args=["--exit-after", "0.1"])
    try:
        with pytest.raises(LaunchFailed) as caught:
            run_plan(plan, sink=lambda line: None, grace=1.0, probe_interval=0.02)
        assert caught.value.reason == "foreign-server"
        assert "does not belong to the server Punie started" in str(caught.value)
        assert not (tmp_path / "agent.pid").exists()
    finally:
        wait_for(lambda: bool(pids(foreign_pid)), 60)
        for pid in pids(foreign_pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_loopback_listener_seen_by_psutil_matches_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """The two owner checks agree on the same sockets (the listener itself, IPv4 and IPv6)."""
    for host in ("127.0.0.1", "::1"):
        try:
            with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
                probe.bind((host, 0))
        except OSError:
            continue
        port = free_port(host)
        proc = _listen(host, port)
        try:
            answers = set()
            for forced in ("native", "portable"):
                monkeypatch.setenv("PUNIE_MECHANISMS", forced)
                answers.add(owns_listener(proc.pid, port, host))
            assert answers == {True}
        finally:
            _stop(proc)

