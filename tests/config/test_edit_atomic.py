"""punie.config.atomic: permissions kept, failures leave the original and no temp file."""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path

import pytest

from punie.config import atomic
from punie.config.edit import apply_edit, set_value
from punie.errors import ConfigError
from tests.support.launch_helpers import reap

ORIGINAL = '# keep me\n[profiles.a]\nmodel = "m"\nserver.port = 8081\n'


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_replaces_content_and_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(ORIGINAL)
    path.chmod(0o640)
    atomic.write_atomic(path, "new = 1\n")
    assert path.read_text() == "new = 1\n"
    assert _mode(path) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["punie.toml"]


def test_apply_edit_keeps_mode(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(ORIGINAL)
    path.chmod(0o600)
    apply_edit(path, lambda text: set_value(text, "a", "server.port", 9000))
    assert _mode(path) == 0o600
    assert "server.port = 9000" in path.read_text()


def test_new_file_gets_default_mode(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    old = os.umask(0o022)
    try:
        atomic.write_atomic(path, "x = 1\n")
    finally:
        os.umask(old)
    assert _mode(path) == 0o644


def test_symlink_target_is_replaced_and_link_kept(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    real.write_text(ORIGINAL)
    link = tmp_path / "punie.toml"
    link.symlink_to(real)
    atomic.write_atomic(link, "x = 1\n")
    assert link.is_symlink()
    assert real.read_text() == "x = 1\n"


def test_disk_full_mid_write_leaves_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "punie.toml"
    path.write_bytes(ORIGINAL.encode())
    path.chmod(0o640)
    real_write = os.write
    calls = []

    def short_then_full(fd: int, data: bytes | memoryview) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[:5]))  # a short write, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "write", short_then_full)
    with pytest.raises(OSError) as info:
        atomic.write_atomic(path, "x = 1\n" * 1000)
    monkeypatch.undo()
    assert info.value.errno == errno.ENOSPC
    assert len(calls) == 2
    assert path.read_bytes() == ORIGINAL.encode()
    assert _mode(path) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["punie.toml"]


def test_failed_rename_leaves_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(ORIGINAL)

    def fail(src: str, dst: str) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(ConfigError, match="cannot write the profiles file \\(it is unchanged\\): I/O error"):
        apply_edit(path, lambda text: set_value(text, "a", "server.port", 9000))
    monkeypatch.undo()
    assert path.read_text() == ORIGINAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["punie.toml"]


def test_failed_fsync_leaves_original(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(ORIGINAL)

    def fail(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", fail)
    with pytest.raises(OSError):
        atomic.write_atomic(path, "x = 1\n")
    monkeypatch.undo()
    assert path.read_text() == ORIGINAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["punie.toml"]


def test_interrupt_during_write_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(ORIGINAL)

    def interrupted(fd: int, mode: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic.os, "fchmod", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic.write_atomic(path, "x = 1\n")
    monkeypatch.undo()
    assert path.read_text() == ORIGINAL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["punie.toml"]


def test_killed_writer_never_leaves_a_half_file(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites the file in a loop: the file is always one whole version."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "punie.toml"
    first, second = "a = 1\n" * 20000, "b = 2\n" * 30000
    path.write_text(first)
    script = tmp_path / "writer.py"
    script.write_text(
        "import sys\n"
        "from punie.config.atomic import write_atomic\n"
        f"texts = [{second!r}, {first!r}]\n"
        "print('ready', flush=True)\n"
        "i = 0\n"
        "while True:\n"
        "    write_atomic(sys.argv[1], texts[i % 2])\n"
        "    i += 1\n"
    )
    child = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"ready\n"
        for _ in range(5):
            time.sleep(0.05)
            assert path.read_text() in (first, second)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        reap(child)
    assert path.read_text() in (first, second)
    # Only a leftover temp file (never the target) may hold partial data after a kill.
    assert all(p.name == "punie.toml" or p.name.startswith(".punie.toml.") for p in tmp_path.iterdir() if p != script)


def test_byte_order_mark_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_bytes(b"\xef\xbb\xbf" + ORIGINAL.encode())
    apply_edit(path, lambda text: set_value(text, "a", "server.port", 9000))
    assert path.read_bytes() == b"\xef\xbb\xbf" + ORIGINAL.replace("8081", "9000").encode()


def test_unreadable_bytes_are_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_bytes(b"[profiles.a]\nmodel = '\xff'\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        apply_edit(path, lambda text: set_value(text, "a", "server.port", 9000))
    assert path.read_bytes() == b"[profiles.a]\nmodel = '\xff'\n"


def test_write_cache_json_writes_and_is_best_effort(tmp_path: Path) -> None:
    from punie.config.atomic import write_cache_json

    target = tmp_path / "cache" / "known.json"
    assert write_cache_json(target, {"a": 1}) is True
    assert json.loads(target.read_text()) == {"a": 1}
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert write_cache_json(blocker / "known.json", {"a": 1}) is False  # a parent that is a file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "file"]  # no temp file left


def test_replace_dir_swaps_in_the_new_directory(tmp_path: Path) -> None:
    from punie.config.atomic import replace_dir

    target, staging = tmp_path / "adapter", tmp_path / ".staging"
    target.mkdir()
    (target / "old").write_text("old")
    staging.mkdir()
    (staging / "new").write_text("new")
    replace_dir(staging, target, mode=0o755)
    assert [p.name for p in target.iterdir()] == ["new"] and not staging.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["adapter"]  # the old one moved aside and removed
    assert target.stat().st_mode & 0o777 == 0o755
