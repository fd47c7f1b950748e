"""The workspace the agent's file tools are confined to.

Every path a model hands to a tool goes through :meth:`Workspace.resolve`:
the path is made absolute against the root and fully resolved
(``os.path.realpath``: ``..`` and every symlink on the way), and anything that
does not land inside the root is refused. Resolving first and comparing after
is what stops ``../`` traversal, absolute paths elsewhere, and symlinks that
point out of the tree (including dangling ones, and ones created later in the
walk to a file that does not exist yet).
"""

from __future__ import annotations

import os
from pathlib import Path


class ToolFailure(Exception):
    """A tool could not do what the model asked; the message goes back to the model."""


class OutsideWorkspace(ToolFailure):
    """A path resolves outside the workspace root."""


class Workspace:
    """A directory tree the agent may read and (with permission) write."""

    def __init__(self, root: str | os.PathLike[str]):
        real = os.path.realpath(os.fspath(root))
        if not os.path.isdir(real):
            raise ToolFailure(f"workspace {os.fspath(root)!r} is not a directory")
        self.root = Path(real)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def resolve(self, path: str) -> Path:
        """The real path of ``path`` (relative to the root, or absolute inside it).

        Raises :class:`OutsideWorkspace` when it resolves outside the root.
        """
        if not isinstance(path, str) or not path.strip():
            raise ToolFailure("path must be a non-empty string")
        if "\x00" in path:
            raise ToolFailure("path must not contain NUL characters")
        # os.path.join keeps an absolute path as is: it is then checked like any other.
        candidate = os.path.join(self.root, path)
        real = os.path.realpath(candidate)
        if not self.contains(real):
            raise OutsideWorkspace(
                f"{path!r} is outside the workspace {str(self.root)!r}: "
                "file tools only work on paths inside it (no '..', no outside absolute paths, "
                "no symlinks pointing out)"
            )
        return Path(real)

    def contains(self, real_path: str | os.PathLike[str]) -> bool:
        """Whether an already resolved path is the root or below it."""
        text = os.fspath(real_path)
        root = str(self.root)
        return text == root or text.startswith(root.rstrip(os.sep) + os.sep)

    def relative(self, real_path: str | os.PathLike[str]) -> str:
        """A resolved path written relative to the root (``.`` for the root itself)."""
        rel = os.path.relpath(os.fspath(real_path), self.root)
        return "." if rel == "." else rel.replace(os.sep, "/")


def resolve_workspace(workspace: str, base_dir: str | os.PathLike[str] | None = None) -> Workspace:
    """The Workspace for an ``agent.workspace`` value: absolute, or relative to ``base_dir`` (default cwd)."""
    base = os.fspath(base_dir) if base_dir is not None else os.getcwd()
    return Workspace(os.path.join(base, os.path.expanduser(workspace)))
