"""Workspace confinement under races and odd files: real renameat2 swaps, hardlinks, FIFOs, protected paths."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from punie.agent import fs
from punie.agent.local import list_files_impl, read_file_impl, search_impl, write_file_impl
from punie.agent.workspace import Workspace
from punie.config.models import AgentOptions
from punie.errors import OutsideWorkspace, PunieError, ToolFailure

linux = pytest.mark.skipif(os.uname().sysname != "Linux", reason="renameat2 is Linux-only")

# A separate process swaps two names as fast as it can (renameat2 RENAME_EXCHANGE): a real race on
# another core, not a thread taking turns with the tools for the GIL. It prints its swap count on SIGTERM.
SWAPPER = """
import ctypes, os, signal, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b = os.fsencode(sys.argv[1]), os.fsencode(sys.argv[2])
count = 0
def done(*_):
    print(count, flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, done)
print("ready", flush=True)
while True:
    if libc.renameat2(-100, a, -100, b, 2) == 0:
        count += 1
"""


@contextlib.contextmanager
def swapping(a: Path, b: Path) -> Iterator[list[int]]:
    """Swap ``a`` and ``b`` in another process for the duration; yields [swaps done] once it has stopped."""
    proc = subprocess.Popen([sys.executable, "-c", SWAPPER, str(a), str(b)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    result: list[int] = []
    try:
        yield result
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=120)
        result.append(int(out.strip() or 0))


@pytest.fixture
def no_fsync(monkeypatch: pytest.MonkeyPatch) -> None:
    """fsync (~6 ms a write on ext4) has nothing to do with where a write lands; skip it in the 10,000-call races."""
    monkeypatch.setattr(fs, "FSYNC", False)


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test with the kernel's openat2 fast path and with the portable walk alone."""
    monkeypatch.setattr(fs, "USE_OPENAT2", request.param == "openat2" and os.uname().sysname == "Linux")
    return str(request.param)


@pytest.mark.slow
@linux
def test_directory_symlink_swap_race_never_escapes(tmp_path: Path, resolver: str, no_fsync: None) -> None:
    root = tmp_path / "ws"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.txt").write_text("INSIDE\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.txt").write_text("OUTSIDE\n")
    os.symlink(outside, root / "l")  # d (a real directory) and l (a symlink out) are swapped all along
    ws = Workspace(root)
    outcomes = Counter[str]()
    with swapping(root / "d", root / "l") as swaps:
        for i in range(5_000):  # 10,000 tool calls: a read and a write each round
            name = "d" if i % 2 else "l"
            try:
                text = read_file_impl(ws, f"{name}/f.txt")
                assert text == "INSIDE\n", f"read outside content through {name}: {text!r}"
                outcomes["read"] += 1
            except (ToolFailure, OSError):
                outcomes["read refused"] += 1
            target = f"{name}/f.txt" if i % 4 < 2 else f"{name}/new-{i}.txt"
            try:
                write_file_impl(ws, target, "INSIDE\n")
                outcomes["write"] += 1
            except (ToolFailure, OSError):
                outcomes["write refused"] += 1
    assert sorted(os.listdir(outside)) == ["f.txt"], "a write escaped the workspace"
    assert (outside / "f.txt").read_text() == "OUTSIDE\n"
    # The race really ran: many swaps, and both outcomes seen for reads and writes.
    assert swaps[0] > 1000, swaps
    assert outcomes["read"] > 100 and outcomes["read refused"] > 100, outcomes
    assert outcomes["write"] > 100 and outcomes["write refused"] > 100, outcomes
    inside = root / "l" if (root / "d").is_symlink() else root / "d"
    assert (inside / "f.txt").read_text() == "INSIDE\n"
    assert not [n for n in os.listdir(inside) if n.endswith(".tmp")], "temp files left behind"


@pytest.mark.slow
@linux
def test_file_symlink_swap_race_never_reads_or_writes_outside(tmp_path: Path, resolver: str, no_fsync: None) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / "f.txt").write_text("INSIDE\n")
    secret = tmp_path / "secret.txt"
    secret.write_text("OUTSIDE\n")
    os.symlink(secret, root / "s.txt")
    ws = Workspace(root)
    seen = Counter[str]()
    with swapping(root / "f.txt", root / "s.txt") as swaps:
        for i in range(1_000):
            try:
                seen[read_file_impl(ws, "f.txt" if i % 2 else "s.txt")] += 1
            except (ToolFailure, OSError):
                seen["refused"] += 1
            try:
                write_file_impl(ws, "s.txt" if i % 2 else "f.txt", "INSIDE\n")
            except (ToolFailure, OSError):
                seen["write refused"] += 1
    assert "OUTSIDE\n" not in seen, seen
    assert secret.read_text() == "OUTSIDE\n"
    assert seen["INSIDE\n"] > 100 and swaps[0] > 100, (seen, swaps)


def test_preexisting_hardlink_to_an_outside_file_is_not_written(tmp_path: Path, resolver: str) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    outside = tmp_path / "authorized_keys"
    outside.write_text("ssh-ed25519 AAAA user\n")
    os.link(outside, root / "notes.txt")
    ws = Workspace(root)
    with pytest.raises(ToolFailure, match="2 hard links: refused"):
        write_file_impl(ws, "notes.txt", "ssh-ed25519 EVIL attacker\n")
    assert outside.read_text() == "ssh-ed25519 AAAA user\n"
    assert os.stat(outside).st_nlink == 2  # nothing was replaced either
    assert read_file_impl(ws, "notes.txt") == "ssh-ed25519 AAAA user\n"  # reading the inside name is fine


def test_write_replaces_atomically_keeps_mode_and_follows_inside_symlinks(tmp_path: Path, resolver: str) -> None:
    ws = Workspace(tmp_path)
    (tmp_path / "src").mkdir()
    script = tmp_path / "src" / "run.sh"
    script.write_text("old\n")
    script.chmod(0o750)
    os.symlink("src/run.sh", tmp_path / "alias.sh")
    inode = script.stat().st_ino
    assert write_file_impl(ws, "alias.sh", "new\n") == "wrote 4 bytes to src/run.sh"
    assert script.read_text() == "new\n" and (tmp_path / "alias.sh").is_symlink()
    assert stat.S_IMODE(script.stat().st_mode) == 0o750
    assert script.stat().st_ino != inode  # a new inode renamed over the old name, never written through
    assert sorted(os.listdir(tmp_path / "src")) == ["run.sh"]


def test_absolute_symlink_inside_and_dotdot_through_real_dirs(tmp_path: Path, resolver: str) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.txt").write_text("x\n")
    os.symlink(tmp_path / "a" / "b", tmp_path / "abs-link")
    os.symlink("../..", tmp_path / "a" / "b" / "up")  # back to the root: allowed
    os.symlink("../../..", tmp_path / "a" / "b" / "out")
    ws = Workspace(tmp_path)
    assert read_file_impl(ws, "abs-link/x.txt") == "x\n"
    assert read_file_impl(ws, "a/b/up/a/b/x.txt") == "x\n"
    assert read_file_impl(ws, "a/b/../b/x.txt") == "x\n"
    assert ws.canonical("abs-link/../b/x.txt") == "a/b/x.txt"  # '..' after a symlink: the kernel's meaning
    with pytest.raises(OutsideWorkspace):
        read_file_impl(ws, "a/b/out/etc/passwd")
    with pytest.raises(OutsideWorkspace):
        write_file_impl(ws, "a/b/out/new.txt", "x")
    loop = tmp_path / "loop"
    os.symlink("loop", loop)
    with pytest.raises(ToolFailure, match="too many levels"):
        read_file_impl(ws, "loop/x")


def test_fifo_is_refused_at_once_without_blocking(tmp_path: Path, resolver: str) -> None:
    os.mkfifo(tmp_path / "pipe")
    ws = Workspace(tmp_path)
    start = time.monotonic()
    with pytest.raises(ToolFailure, match="is a FIFO, not a regular file"):
        read_file_impl(ws, "pipe")
    with pytest.raises(ToolFailure, match="FIFO"):
        write_file_impl(ws, "pipe", "x")
    assert search_impl(ws, "anything") == "no matches for 'anything'"  # search skips it too
    assert time.monotonic() - start < 30  # a blocking open of the FIFO would never return


def test_sockets_and_devices_are_refused(tmp_path: Path) -> None:
    ws = Workspace(tmp_path)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "sock"))
        with pytest.raises(ToolFailure, match="socket"):
            read_file_impl(ws, "sock")
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pass  # not root: only the symlink case below
    else:
        with pytest.raises(ToolFailure, match="character device"):
            read_file_impl(ws, "null")
    os.symlink("/dev/zero", tmp_path / "zero")
    with pytest.raises(OutsideWorkspace):
        read_file_impl(ws, "zero")


def test_read_size_cap(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"y" * 5000)
    ws = Workspace(tmp_path, max_read_bytes=1000)
    text = read_file_impl(ws, "big.bin")
    assert text.startswith("y" * 1000) and "y" * 1001 not in text
    assert "read 1000 bytes of a 5000-byte file" in text


def test_list_and_search_walk_descriptors_and_do_not_follow_symlinks_out(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "m.py").write_text("needle\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("needle SECRET\n")
    os.symlink(outside, root / "escape")
    ws = Workspace(root)
    assert list_files_impl(ws).splitlines() == ["escape", "src/", "src/m.py"]
    assert search_impl(ws, "needle") == "src/m.py:1: needle"
    with pytest.raises(OutsideWorkspace):
        list_files_impl(ws, "escape")


# -- protected paths ------------------------------------------------------------


@pytest.mark.parametrize("path", [".git/config", ".git", ".git/hooks/pre-commit", "sub/.git/config",
                                  "punie.toml", "sub/punie.toml", ".punie/state.json", ".GIT/config",
                                  "Punie.TOML", "secrets/prod.env", "deploy/key.pem", "keys"])
def test_protected_paths(tmp_path: Path, path: str) -> None:
    ws = Workspace(tmp_path, protected=["secrets", "*.pem", "keys/"])
    assert ws.is_protected(path)


@pytest.mark.parametrize("path", ["src/config", "gitignore", ".gitignore", "punie.toml.bak", "notes/punie.md",
                                  "secretsx/a", "deploy/key.pub"])
def test_unprotected_paths(tmp_path: Path, path: str) -> None:
    ws = Workspace(tmp_path, protected=["secrets", "*.pem"])
    assert not ws.is_protected(path)


def test_protection_follows_symlinks_and_is_rechecked_at_write_time(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("[core]\n")
    os.symlink(".git", tmp_path / "innocent")
    ws = Workspace(tmp_path)
    assert ws.is_protected("innocent/config")
    with pytest.raises(ToolFailure, match="protected path"):
        write_file_impl(ws, "innocent/config", "[core]\n\tfsmonitor = touch pwned\n")
    # Approved for a harmless name, then the name is redirected to .git: still refused.
    (tmp_path / "later").mkdir()
    assert not ws.is_protected("later/config")
    os.rmdir(tmp_path / "later")
    os.symlink(".git", tmp_path / "later")
    with pytest.raises(ToolFailure, match="protected path"):
        write_file_impl(ws, "later/config", "x")
    assert (tmp_path / ".git" / "config").read_text() == "[core]\n"
    assert write_file_impl(ws, ".git/config", "[core]\n\tbare = false\n", allow_protected=True)


def test_agent_options_carry_protected_env_and_read_cap(tmp_path: Path) -> None:
    from punie.agent.workspace import workspace_for

    options = AgentOptions(protected=["*.key"], env={"FOO": "bar"}, max_read_bytes=10)
    ws = workspace_for(options, tmp_path)
    assert ws.protected == ("*.key",) and ws.env == {"FOO": "bar"} and ws.max_read_bytes == 10
    with pytest.raises(ValueError):
        AgentOptions(env={"A=B": "x"})


def test_tool_errors_are_punie_errors() -> None:
    from punie.agent import permissions, workspace

    assert issubclass(ToolFailure, PunieError) and issubclass(OutsideWorkspace, ToolFailure)
    assert issubclass(permissions.PermissionDenied, PunieError)
    assert workspace.ToolFailure is ToolFailure and workspace.OutsideWorkspace is OutsideWorkspace
