"""A rank over ssh: an sshd the test starts on this machine's loopback, reached as host "localhost".

mlx.launch runs every host but ``127.0.0.1`` through ``ssh -tt``; Punie copies the model and the rank
script to ``remote_dir`` first (ssh mkdir, scp) and hands ``ssh_options`` (the port, the key, no
known_hosts) to every ssh through its wrapper. Rank 0 runs here, rank 1 in the ssh session. Killing
`punie up` with SIGKILL must end the remote rank too: the guard kills the local ssh client, sshd hangs
up the rank's terminal, the rank dies of SIGHUP.

Skipped without sshd (``apt-get install openssh-server``); PUNIE_REQUIRE_SSHD=1 (.ci/run) fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from punie.config import load_profile
from punie.launch import run_up
from tests.support import tiny
from tests.support.launch_helpers import agent_let_in
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.mlx]
pytest.importorskip("mlx_lm")

#: PUNIE_REQUIRE_SSHD=1 (set by .ci/run) turns a missing sshd into a failure instead of a skip.
REQUIRE_SSHD = os.environ.get("PUNIE_REQUIRE_SSHD") == "1"
SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


def _wait_port(port: int, timeout: float = 20) -> bool:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """(port, client key) of an sshd on 127.0.0.1 that lets this user in with that key."""
    if SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        if REQUIRE_SSHD:
            pytest.fail("PUNIE_REQUIRE_SSHD=1 but sshd is not installed (apt-get install -y openssh-server)")
        pytest.skip("no sshd here (apt-get install -y openssh-server)")
    root = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "id"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    shutil.copy(root / "id.pub", root / "authorized_keys")
    port = free_port()
    (root / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {root / 'host_key'}
AuthorizedKeysFile {root / 'authorized_keys'}
PidFile {root / 'sshd.pid'}
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
Subsystem sftp internal-sftp
""")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        if not _wait_port(port):
            proc.kill()
            out = proc.communicate()[0]
            if REQUIRE_SSHD:
                pytest.fail(f"sshd did not start: {out}")
            pytest.skip(f"sshd did not start here: {out.strip()[-300:]}")
        yield port, root / "id"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, sshd: tuple[int, Path]) -> Path:
    port, key = sshd
    root = tmp_path_factory.mktemp("ssh-project")
    options = ["-F", "/dev/null", "-p", str(port), "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    (root / "punie.toml").write_text(f"""
[profiles.ssh2]
model = {json.dumps(str(tiny_model))}
[profiles.ssh2.server]
backend = "mlx-distributed"
ready_timeout = 120
[profiles.ssh2.server.distributed]
hosts = ["127.0.0.1", {{ ssh = "localhost", ips = ["127.0.0.1"] }}]
remote_dir = {json.dumps(str(root / "remote"))}
ssh_options = {json.dumps(options)}
copy_with = "scp"
env = {{ MLX_DISABLE_COMPILE = "1", TOKENIZERS_PARALLELISM = "false" }}
""")
    return root


def _remote_ranks(project: Path) -> list[psutil.Process]:
    """Rank processes started over ssh (children of sshd, not of `punie up`): they run the copied script."""
    script = str(project / "remote" / "mlx_dist_server.py")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        argv = p.info["cmdline"] or []
        if argv[1:2] == [script]:
            try:
                if p.environ().get("MLX_RANK") == "1":
                    found.append(p)
            except psutil.Error:
                continue
    return found


def test_a_rank_over_ssh_serves_with_the_model_copied(project: Path, tmp_path: Path) -> None:
    resolved = load_profile("ssh2", config=project / "punie.toml")
    server = resolved.profile.server.model_copy(update={"port": free_port()})
    resolved = resolved.model_copy(update={"profile": resolved.profile.model_copy(update={"server": server})})
    out = tmp_path / "models.json"
    agent = [sys.executable, "-c", "import sys, urllib.request; open(sys.argv[2], 'wb').write("
             "urllib.request.urlopen(sys.argv[1] + '/models', timeout=30).read())",
             f"http://127.0.0.1:{server.port}/v1", str(out)]
    lines: list[str] = []
    outcome = run_up(resolved, sink=lines.append, grace=10, agent_argv=agent)
    assert outcome.exit_code == 0, "\n".join(lines)
    part = outcome.plan.backend if outcome.plan else None
    assert part is not None and [r.local for r in part.ranks] == [True, False]
    copied = project / "remote" / "models" / part.model.rsplit("/", 1)[-1]
    assert (copied / "model.safetensors.index.json").is_file() and (project / "remote" / "mlx_dist_server.py").is_file()
    served = [m["id"] for m in json.loads(out.read_text())["data"]]
    assert part.model in served, served  # rank 0 serves the copy under remote_dir, as rank 1 loads it
    assert _remote_ranks(project) == []  # stopped with the session


def test_sigkill_of_punie_up_ends_the_rank_over_ssh(project: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "punie", "--config", str(project / "punie.toml"), "up", "ssh2",
         "--set", f"server.port={free_port()}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=project,
        env=tiny.mlx_env({"PUNIE_CACHE_DIR": os.environ["PUNIE_CACHE_DIR"]}))
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 180
        for line in iter(proc.stdout.readline, ""):
            lines.append(line)
            if agent_let_in(line) or time.monotonic() > deadline:
                break
        assert any(agent_let_in(line) for line in lines), "".join(lines)
        remote = _remote_ranks(project)
        assert len(remote) == 1, "".join(lines)
        assert proc.pid not in [p.pid for p in remote[0].parents()]  # not ours: sshd's
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(remote, timeout=30)
        assert [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE] == []
    finally:
        if proc.poll() is None:
            proc.kill()
