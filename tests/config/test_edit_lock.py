"""Edits of punie.toml under the edit lock, with real `punie profiles` processes.

Concurrent edits serialise (none lost), a SIGKILLed edit leaves the file whole
and its temp file is removed by the next edit, a read-only file is refused,
symlinks are followed and hard links refused (see punie.config.atomic).
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from punie.config import atomic
from punie.config.edit import apply_edit, set_value
from punie.errors import ConfigError
from tests.support.launch_helpers import reap

N = 30


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUNIE_")}
    env.update(extra)
    return env


def _punie(*args: str, cwd: Path, **popen: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "punie", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **popen,  # type: ignore[arg-type]
    )


def _profiles_file(n: int) -> str:
    body = "# many profiles, one file\n[defaults]\nmodel = 'builtin:smollm2-135m-instruct'\n"
    for i in range(n):
        body += f"\n# profile {i}\n[profiles.p{i}]\ndescription = \"number {i}\"\n"
    return body


def _temps(directory: Path) -> list[str]:
    pattern = atomic.temp_pattern("punie.toml")
    return sorted(p.name for p in directory.iterdir() if pattern.match(p.name))


@pytest.mark.slow
def test_concurrent_cli_sets_are_all_kept(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(_profiles_file(N))
    # Each process sets a different profile, and every third one a second key
    # kind, so a lost update shows as a missing value.
    commands = []
    for i in range(N):
        key, value = ("server.port", str(9000 + i)) if i % 3 else ("agent.max_turns", str(i + 1))
        commands.append((i, key, value))
    children = [
        (i, key, value, _punie("profiles", "set", f"p{i}", key, value, cwd=tmp_path, env=_env()))
        for i, key, value in commands
    ]
    results = [(i, key, value, child.wait(timeout=300), child.stderr.read()) for i, key, value, child in children]  # type: ignore[union-attr]
    for child in (c for *_, c in children):
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    failed = [(i, rc, err) for i, _, _, rc, err in results if rc != 0]
    assert failed == []
    data = tomllib.loads(path.read_text())
    kept = 0
    for i, key, value, _, _ in results:
        section, leaf = key.split(".")
        assert data["profiles"][f"p{i}"][section][leaf] == int(value), (i, key)
        kept += 1
    assert kept == N
    # Nothing else was lost either: every comment and description is still there.
    text = path.read_text()
    assert all(f"# profile {i}\n" in text and f'description = "number {i}"' in text for i in range(N))
    assert _temps(tmp_path) == []


def _paused_edit(tmp_path: Path, fifo: Path) -> subprocess.Popen[bytes]:
    os.mkfifo(fifo)
    return _punie(
        "profiles", "set", "p0", "server.port", "9999",
        cwd=tmp_path,
        env=_env(**{atomic.TEST_PAUSE_ENV: str(fifo)}),
    )


def _wait_paused(child: subprocess.Popen[bytes], fifo: Path) -> None:
    # Opening the FIFO for reading blocks until the child opens it: the child is
    # then inside write_atomic, lock held, half of the new file written.
    fd = os.open(fifo, os.O_RDONLY)
    try:
        assert os.read(fd, 1) == b"w"
    finally:
        os.close(fd)


@pytest.mark.slow
def test_sigkill_mid_write_leaves_file_intact_and_next_edit_cleans_up(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    original = _profiles_file(3)
    path.write_text(original)
    fifo = tmp_path / "pause.fifo"
    child = _paused_edit(tmp_path, fifo)
    try:
        _wait_paused(child, fifo)
        leftovers = _temps(tmp_path)
        assert len(leftovers) == 1 and f".{child.pid}." in leftovers[0]
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=180) == -signal.SIGKILL
    finally:
        reap(child)
        child.stdout.close()  # type: ignore[union-attr]
        child.stderr.close()  # type: ignore[union-attr]
    assert path.read_text() == original
    assert len(_temps(tmp_path)) == 1  # the killed writer's half file
    # The next edit takes the (released) lock at once and removes the stale file.
    done = subprocess.run(
        [sys.executable, "-m", "punie", "profiles", "set", "p1", "server.port", "9001"],
        cwd=tmp_path, env=_env(), capture_output=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert _temps(tmp_path) == []
    assert tomllib.loads(path.read_text())["profiles"]["p1"]["server"]["port"] == 9001
    assert "port" not in tomllib.loads(path.read_text())["profiles"]["p0"].get("server", {})


def _wait_blocked_on_lock(child: subprocess.Popen[bytes]) -> None:
    # /proc/locks lists a process waiting for a lock with "->" in front of the lock's line.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(line.split()[1] == "->" and line.split()[5] == str(child.pid) for line in _proc_locks()):
            return
        assert child.poll() is None, "the second edit finished while the first held the lock"
        time.sleep(0.02)
    raise AssertionError("the second edit never blocked on the lock")


def _proc_locks() -> list[str]:
    with open("/proc/locks") as f:
        return [line for line in f if len(line.split()) > 5]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/locks"), reason="needs /proc/locks (Linux)")
def test_an_edit_waits_for_the_lock_holder(tmp_path: Path) -> None:
    """While one edit holds the lock (paused mid-write), another edit blocks; after the
    holder is killed the waiting edit completes on the intact file."""
    path = tmp_path / "punie.toml"
    path.write_text(_profiles_file(2))
    fifo = tmp_path / "pause.fifo"
    holder = _paused_edit(tmp_path, fifo)
    waiter = None
    try:
        _wait_paused(holder, fifo)
        waiter = _punie("profiles", "set", "p1", "agent.max_turns", "7", cwd=tmp_path, env=_env())
        _wait_blocked_on_lock(waiter)
        assert waiter.poll() is None and "max_turns" not in path.read_text()
        holder.kill()
        holder.wait(timeout=180)
        assert waiter.wait(timeout=120) == 0
    finally:
        for child in (holder, waiter):
            if child is not None:
                reap(child)
                child.stdout.close()  # type: ignore[union-attr]
                child.stderr.close()  # type: ignore[union-attr]
    data = tomllib.loads(path.read_text())
    assert data["profiles"]["p1"]["agent"]["max_turns"] == 7
    assert _temps(tmp_path) == []


def test_read_only_file_is_refused_by_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    original = _profiles_file(1)
    path.write_text(original)
    path.chmod(0o444)
    done = subprocess.run(
        [sys.executable, "-m", "punie", "profiles", "set", "p0", "server.port", "9001"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 2
    assert "punie.toml: the profiles file is read-only (mode 0444): not changed" in done.stderr
    assert "chmod u+w" in done.stderr
    assert path.read_text() == original
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert sorted(p.name for p in tmp_path.iterdir()) == ["punie.toml"]


def test_symlinked_file_edits_the_target_and_keeps_the_link(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    real = shared / "team.toml"
    real.write_text(_profiles_file(1))
    real.chmod(0o640)
    project = tmp_path / "project"
    project.mkdir()
    link = project / "punie.toml"
    link.symlink_to(os.path.relpath(real, project))
    done = subprocess.run(
        [sys.executable, "-m", "punie", "profiles", "set", "p0", "server.port", "9001"],
        cwd=project, env=_env(), capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(real, project)
    assert tomllib.loads(real.read_text())["profiles"]["p0"]["server"]["port"] == 9001
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert sorted(p.name for p in project.iterdir()) == ["punie.toml"]
    assert sorted(p.name for p in shared.iterdir()) == ["team.toml"]


def test_symlink_to_read_only_target_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text(_profiles_file(1))
    real.chmod(0o444)
    link = tmp_path / "punie.toml"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="read-only"):
        apply_edit(link, lambda text: set_value(text, "p0", "server.port", 9001))
    assert link.is_symlink()


def test_hard_linked_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    original = _profiles_file(1)
    path.write_text(original)
    other = tmp_path / "copy.toml"
    os.link(path, other)
    with pytest.raises(ConfigError, match="2 hard links") as info:
        apply_edit(path, lambda text: set_value(text, "p0", "server.port", 9001))
    assert "symlink" in (info.value.hint or "")
    assert path.read_text() == original and os.stat(path).st_ino == os.stat(other).st_ino


def test_temp_file_held_by_a_writer_is_kept_and_leftovers_removed(tmp_path: Path) -> None:
    import fcntl

    path = tmp_path / "punie.toml"
    path.write_text(_profiles_file(1))
    stale = tmp_path / ".punie.toml.999999.abcd1234.tmp"
    old_style = tmp_path / ".punie.toml.k3j4h5.tmp"  # mkstemp name of an older Punie
    held = tmp_path / f".punie.toml.{os.getpid()}.feed1234.tmp"
    unrelated = tmp_path / ".other.toml.1.abcd.tmp"
    for p in (stale, old_style, held, unrelated):
        p.write_text("half")
    fd = os.open(held, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as write_atomic holds its temp file until the rename
        apply_edit(path, lambda text: set_value(text, "p0", "server.port", 9001))
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["punie.toml", held.name, unrelated.name])
    finally:
        os.close(fd)
    apply_edit(path, lambda text: set_value(text, "p0", "server.port", 9002))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["punie.toml", unrelated.name])
