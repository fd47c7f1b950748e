"""Confinement edges (issue 25, item 6) with real files and real mounts: a mount inside the workspace
is not crossed without the profile's consent, names are limited by bytes, a refused deep write
leaves nothing behind."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from punie.agent import fs
from punie.agent.local import list_files_impl, read_file_impl, search_impl, write_file_impl
from punie.agent.workspace import Workspace, workspace_for
from punie.config.models import AgentOptions
from punie.errors import OutsideWorkspace, ToolFailure


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setattr(fs, "USE_OPENAT2", request.param == "openat2" and os.uname().sysname == "Linux")
    return str(request.param)


@contextlib.contextmanager
def _mounted(argv: list[str], where: Path) -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture(params=["bind", "tmpfs"])
def mounted(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(workspace, outside folder) with the outside folder mounted at workspace/shared: a bind mount of
    the same file system (same st_dev, another mount id) or a tmpfs (another st_dev)."""
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    (ws / "shared").mkdir(parents=True)
    (ws / "own.txt").write_text("own\n")
    if request.param == "bind":
        outside.mkdir()
        (outside / "secret.txt").write_text("outside secret\n")
        (outside / "deep").mkdir()
        (outside / "deep" / "more.txt").write_text("outside secret 2\n")
        argv = ["mount", "--bind", str(outside), str(ws / "shared")]
    else:
        argv = ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(ws / "shared")]
    with _mounted(argv, ws / "shared"):
        if request.param == "tmpfs":
            (ws / "shared" / "secret.txt").write_text("outside secret\n")
            (ws / "shared" / "deep").mkdir()
            (ws / "shared" / "deep" / "more.txt").write_text("outside secret 2\n")
        yield ws, ws / "shared"


def test_a_mount_inside_the_workspace_is_not_crossed(mounted: tuple[Path, Path], resolver: str) -> None:
    root, shared = mounted
    ws = Workspace(root)
    for path in ("shared/secret.txt", "shared/deep/more.txt", str(shared / "secret.txt")):
        with pytest.raises(OutsideWorkspace, match="another mount"):
            read_file_impl(ws, path)
    with pytest.raises(OutsideWorkspace, match="cross_mounts"):
        write_file_impl(ws, "shared/secret.txt", "overwritten")
    with pytest.raises(OutsideWorkspace):
        write_file_impl(ws, "shared/deep/new.txt", "new")
    with pytest.raises(OutsideWorkspace):
        list_files_impl(ws, "shared")
    assert (shared / "secret.txt").read_text() == "outside secret\n" and not (shared / "deep" / "new.txt").exists()
    listing = list_files_impl(ws, ".")
    assert "shared/" in listing and "secret.txt" not in listing and "more.txt" not in listing
    assert search_impl(ws, "outside secret").startswith("no matches")
    assert read_file_impl(ws, "own.txt") == "own\n"  # the rest of the tree works as before


def test_the_profile_can_consent_to_crossing_mounts(mounted: tuple[Path, Path], resolver: str) -> None:
    root, shared = mounted
    ws = workspace_for(AgentOptions(workspace=str(root), cross_mounts=True))
    assert read_file_impl(ws, "shared/deep/more.txt") == "outside secret 2\n"
    write_file_impl(ws, "shared/new.txt", "allowed")
    assert (shared / "new.txt").read_text() == "allowed"
    assert "shared/deep/more.txt" in list_files_impl(ws, ".")


def test_a_file_bind_mounted_into_the_workspace_is_not_read(tmp_path: Path, resolver: str) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (tmp_path / "outside.txt").write_text("outside secret\n")
    (root / "inside.txt").write_text("placeholder\n")
    with _mounted(["mount", "--bind", str(tmp_path / "outside.txt"), str(root / "inside.txt")], root / "inside.txt"):
        with pytest.raises(OutsideWorkspace):
            read_file_impl(Workspace(root), "inside.txt")


def test_names_are_limited_by_bytes_not_characters(tmp_path: Path, resolver: str) -> None:
    ws = Workspace(tmp_path)
    name = "あ" * 84  # 252 bytes of UTF-8, 84 characters: a valid name
    assert len(name.encode()) == 252
    write_file_impl(ws, f"dir/{name}", "fits")
    assert (tmp_path / "dir" / name).read_text() == "fits"
    assert read_file_impl(ws, f"dir/{name}") == "fits"
    write_file_impl(ws, f"dir/{name}", "replaced")  # the temporary name is cut by bytes too
    assert (tmp_path / "dir" / name).read_text() == "replaced"
    ascii_max = "a" * 255
    write_file_impl(ws, ascii_max, "255 bytes")
    assert (tmp_path / ascii_max).read_text() == "255 bytes"
    for too_long in ("あ" * 86, "a" * 256, "é" * 128):  # 258, 256, 256 bytes
        with pytest.raises(ToolFailure, match="limited to 255 bytes"):
            write_file_impl(ws, f"new/{too_long}", "x")
        with pytest.raises(ToolFailure, match="limited to 255 bytes"):
            read_file_impl(ws, too_long)
    assert not (tmp_path / "new").exists()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_a_refused_too_deep_write_leaves_no_empty_directories(tmp_path: Path, resolver: str) -> None:
    ws = Workspace(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(ToolFailure, match="nested too deeply"):
        write_file_impl(ws, "/".join(["d"] * (fs.MAX_DEPTH + 5)) + "/f.txt", "x")
    assert _tree(tmp_path) == before
    # Half of it already there: what existed stays, nothing new is left.
    existing = tmp_path.joinpath(*["e"] * 40)
    existing.mkdir(parents=True)
    before = _tree(tmp_path)
    with pytest.raises(ToolFailure, match="nested too deeply"):
        write_file_impl(ws, "/".join(["e"] * 40 + ["n"] * 30) + "/f.txt", "x")
    assert _tree(tmp_path) == before
    write_file_impl(ws, "/".join(["ok"] * (fs.MAX_DEPTH - 1)) + "/f.txt", "deep but allowed")


def test_dirs_made_for_a_write_that_is_then_refused_are_removed(tmp_path: Path, resolver: str) -> None:
    """Refused after directories were made on the way: they are removed again (existing ones stay)."""
    (tmp_path / "kept").mkdir()
    ws = Workspace(tmp_path)
    with pytest.raises(OutsideWorkspace):
        write_file_impl(ws, "kept/a/b/../../../../x.txt", "x")
    assert _tree(tmp_path) == {"kept"}


class _Client:
    """The IDE side of fs/read_text_file and fs/write_text_file: records what reaches it, writes by name
    (as an editor does), reads its own buffers."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def read_text_file(self, *, session_id: str, path: str) -> object:
        self.calls.append(("read", path))
        return type("Read", (), {"content": Path(path).read_text()})()

    async def write_text_file(self, *, session_id: str, path: str, content: str) -> None:
        self.calls.append(("write", path))
        Path(path).write_text(content)


def _client_fs() -> tuple[object, _Client]:
    from punie.agent.acp_backends import ClientFiles

    client = _Client()
    return ClientFiles(client, "s1", read=True, write=True), client


def test_writes_delegated_to_the_ide_get_the_disk_paths_checks(tmp_path: Path, resolver: str) -> None:
    import anyio

    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "twin.txt").write_text("outside original\n")
    os.link(outside / "twin.txt", root / "linked.txt")  # a hard link: the outside twin shares the inode
    (root / "out").symlink_to(outside)
    (root / "punie.toml").write_text("[profiles]\n")
    os.mkfifo(root / "pipe")
    ws = Workspace(root)
    files, client = _client_fs()
    refused = {
        "linked.txt": "2 hard links",
        "out/twin.txt": "outside the workspace",
        str(outside / "twin.txt"): "outside the workspace",
        "punie.toml": "protected path",
        "pipe": "FIFO",
        ".": "directory",
    }
    for path, why in refused.items():
        with pytest.raises(ToolFailure, match=why):
            anyio.run(lambda p=path: files.write_text(ws, p, "overwritten\n"))
    assert client.calls == []  # nothing refused ever reached the client
    assert (outside / "twin.txt").read_text() == "outside original\n"
    anyio.run(lambda: files.write_text(ws, "punie.toml", "approved\n", allow_protected=True))
    anyio.run(lambda: files.write_text(ws, "new/dir/file.txt", "created\n"))
    assert [call[0] for call in client.calls] == ["write", "write"]
    assert client.calls[1][1] == str(root / "new" / "dir" / "file.txt")
    # Reads get the same checks: a FIFO is refused at once (never handed to the client to block on).
    with pytest.raises(ToolFailure, match="FIFO"):
        anyio.run(lambda: files.read_text(ws, "pipe"))
    with pytest.raises(OutsideWorkspace):
        anyio.run(lambda: files.read_text(ws, "out/twin.txt"))
    assert [call[0] for call in client.calls] == ["write", "write"]


def test_the_diff_preview_reads_the_old_text_through_the_descriptor(tmp_path: Path, resolver: str) -> None:
    import anyio

    from punie.agent.local import DiskFiles

    root, outside = tmp_path / "ws", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("outside secret\n")
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    os.mkfifo(root / "pipe")
    (root / "plain.txt").write_text("old text\n")
    ws = Workspace(root)
    async def pipe() -> str | None:
        with anyio.fail_after(10):  # a FIFO opened by name would block for ever
            return await DiskFiles().old_text(ws, "pipe")

    assert anyio.run(pipe) is None
    assert anyio.run(DiskFiles().old_text, ws, "leak.txt") is None
    assert anyio.run(DiskFiles().old_text, ws, "missing.txt") is None
    assert anyio.run(DiskFiles().old_text, ws, "plain.txt") == "old text\n"
