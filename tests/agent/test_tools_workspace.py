"""Workspace confinement: traversal, absolute paths and symlink escapes are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punie.agent.local import list_files_impl, read_file_impl, search_impl, write_file_impl
from punie.agent.workspace import OutsideWorkspace, ToolFailure, Workspace, resolve_workspace


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Workspace, Path]:
    root = tmp_path / "ws"
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.py").write_text("print('hi')\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("TOP SECRET\n")
    return Workspace(root), outside


def test_relative_and_absolute_inside_paths_resolve(layout: tuple[Workspace, Path]) -> None:
    ws, _ = layout
    assert ws.resolve("src/main.py") == ws.root / "src" / "main.py"
    assert ws.resolve(str(ws.root / "src" / "main.py")) == ws.root / "src" / "main.py"
    assert ws.resolve("src/../src/main.py") == ws.root / "src" / "main.py"
    assert ws.resolve(".") == ws.root


@pytest.mark.parametrize("path", ["../secret.txt", "src/../../secret.txt", "..", "/etc/passwd", "/"])
def test_traversal_and_outside_absolute_paths_are_refused(layout: tuple[Workspace, Path], path: str) -> None:
    ws, _ = layout
    with pytest.raises(OutsideWorkspace, match="outside the workspace"):
        ws.resolve(path)


def test_absolute_path_to_outside_file_is_refused_by_read(layout: tuple[Workspace, Path]) -> None:
    ws, outside = layout
    with pytest.raises(OutsideWorkspace):
        read_file_impl(ws, str(outside))


def test_sibling_directory_with_common_prefix_is_outside(tmp_path: Path) -> None:
    (tmp_path / "ws").mkdir()
    (tmp_path / "ws-evil").mkdir()
    (tmp_path / "ws-evil" / "x").write_text("x")
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(OutsideWorkspace):
        ws.resolve(str(tmp_path / "ws-evil" / "x"))


def test_symlink_to_outside_file_is_refused_for_read_and_write(layout: tuple[Workspace, Path]) -> None:
    ws, outside = layout
    os.symlink(outside, ws.root / "link.txt")
    with pytest.raises(OutsideWorkspace):
        read_file_impl(ws, "link.txt")
    with pytest.raises(OutsideWorkspace):
        write_file_impl(ws, "link.txt", "overwritten")
    assert outside.read_text() == "TOP SECRET\n"


def test_symlinked_directory_pointing_out_is_refused(layout: tuple[Workspace, Path]) -> None:
    ws, outside = layout
    os.symlink(outside.parent, ws.root / "escape")
    with pytest.raises(OutsideWorkspace):
        write_file_impl(ws, "escape/new.txt", "x")
    assert not (outside.parent / "new.txt").exists()
    with pytest.raises(OutsideWorkspace):
        list_files_impl(ws, "escape")


def test_dangling_symlink_pointing_out_is_refused_for_write(layout: tuple[Workspace, Path]) -> None:
    ws, outside = layout
    target = outside.parent / "created-through-link.txt"
    os.symlink(target, ws.root / "dangling")
    with pytest.raises(OutsideWorkspace):
        write_file_impl(ws, "dangling", "x")
    assert not target.exists()


def test_symlink_inside_workspace_is_allowed(layout: tuple[Workspace, Path]) -> None:
    ws, _ = layout
    os.symlink(ws.root / "src" / "main.py", ws.root / "alias.py")
    assert read_file_impl(ws, "alias.py") == "print('hi')\n"


def test_search_skips_symlinks_pointing_out(layout: tuple[Workspace, Path]) -> None:
    ws, outside = layout
    os.symlink(outside, ws.root / "link.txt")
    assert "TOP SECRET" not in search_impl(ws, "SECRET")


def test_workspace_root_given_through_a_symlink_is_resolved(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "alias")
    ws = Workspace(tmp_path / "alias")
    assert ws.root == real.resolve()
    assert ws.resolve("f.txt") == real.resolve() / "f.txt"


def test_empty_and_nul_paths_are_refused(layout: tuple[Workspace, Path]) -> None:
    ws, _ = layout
    for bad in ("", "   ", "a\x00b"):
        with pytest.raises(ToolFailure):
            ws.resolve(bad)


def test_missing_workspace_is_a_clear_failure(tmp_path: Path) -> None:
    with pytest.raises(ToolFailure, match="not a directory"):
        resolve_workspace("nope", tmp_path)


def test_resolve_workspace_is_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    assert resolve_workspace("sub", tmp_path / "proj").root == (tmp_path / "proj" / "sub").resolve()
    assert resolve_workspace(str(tmp_path), tmp_path / "proj").root == tmp_path.resolve()


_segment = st.sampled_from(["..", ".", "a", "b", "src", "", "..."])


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.lists(_segment, min_size=1, max_size=8), st.booleans())
def test_resolved_paths_are_always_inside_or_refused(tmp_path_factory: pytest.TempPathFactory,
                                                      segments: list[str], absolute: bool) -> None:
    root = tmp_path_factory.getbasetemp() / "hyp-ws"
    (root / "a" / "b").mkdir(parents=True, exist_ok=True)
    ws = Workspace(root)
    path = "/".join(segments)
    if absolute:
        path = str(root) + "/" + path
    if not path.strip():
        return
    try:
        real = ws.resolve(path)
    except OutsideWorkspace:
        expected = os.path.normpath(os.path.join(str(ws.root), path))
        assert not (expected == str(ws.root) or expected.startswith(str(ws.root) + os.sep))
    else:
        assert real == ws.root or ws.root in real.parents
