"""The workspace the agent's file tools are confined to.

A :class:`Workspace` holds an open descriptor of its root directory and does
every file operation relative to it, through :mod:`punie.agent.fs`: paths are
walked component by component without letting the kernel follow a symlink,
so neither ``..``, nor an absolute path elsewhere, nor a symlink pointing out
(present from the start, or swapped in while the tool runs) reaches outside.
Only regular files are read or written; FIFOs, devices and sockets are refused
at once (nothing blocks); writes replace the file through a temporary file in
the same directory and never write through a file with several hard links.

The function-level API (:meth:`Workspace.read_text`, :meth:`Workspace.write_text`,
:meth:`Workspace.list`, :meth:`Workspace.files`) is what the tools and the ACP
server call; it is blocking, so async callers run it in a thread
(``anyio.to_thread.run_sync``). :meth:`Workspace.resolve` gives the path to
*show* (tool call locations); nothing is ever opened through it.

Protected paths (:meth:`Workspace.is_protected`) may be read but are never
written without asking, whatever the permission mode: anything under a
``.git`` or ``.punie`` directory, any ``punie.toml``, and the profile's
``agent.protected`` globs. The workspace also carries the extra environment
of the commands run in it (``agent.env``).

A directory on another mount than the root's (an outside folder bind-mounted
into the tree, a mounted file system) is not crossed, by any tool, unless the
profile says ``agent.cross_mounts = true``.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from punie.agent import fs
from punie.agent.limits import shown_text
from punie.errors import OutsideWorkspace, ToolFailure
from punie.limits import MAX_READ_BYTES
from punie.paths import CONFIG_NAME, STATE_DIR_NAME

if TYPE_CHECKING:
    from punie.config.models import AgentOptions

__all__ = ["DEFAULT_MAX_READ_BYTES", "OutsideWorkspace", "ToolFailure", "Workspace", "resolve_workspace"]

DEFAULT_MAX_READ_BYTES = MAX_READ_BYTES
#: Directory names that are protected wherever they are, and file names likewise (compared case-insensitively,
#: as macOS and Windows file systems do).
PROTECTED_DIRS = frozenset({".git", STATE_DIR_NAME})
PROTECTED_NAMES = frozenset({".git", CONFIG_NAME})


class Workspace:
    """A directory tree the agent may read and (with permission) write."""

    def __init__(self, root: str | os.PathLike[str], *, protected: Iterable[str] = (),
                 max_read_bytes: int = DEFAULT_MAX_READ_BYTES, env: Mapping[str, str] | None = None,
                 cross_mounts: bool = False):
        given = os.path.abspath(os.fspath(root))
        real = os.path.realpath(given)
        try:
            fd = os.open(real, fs.DIR_FLAGS)
        except OSError:
            raise ToolFailure(f"workspace {os.fspath(root)!r} is not a directory") from None
        self._fd = fd
        self._finalizer = weakref.finalize(self, os.close, fd)
        self.root = Path(real)
        self._aliases = (given,) if given != real else ()
        self.protected = tuple(p.strip().strip("/") for p in protected if p.strip().strip("/"))
        self.max_read_bytes = max_read_bytes
        self.env = dict(env or {})
        #: The root's mount (fs.mount_of): another mount met below it (a bind mount of an outside
        #: folder) is refused, unless the profile consents (agent.cross_mounts: then None).
        self.mount = None if cross_mounts else fs.mount_of(fd)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    def close(self) -> None:
        """Close the root descriptor (the workspace cannot be used afterwards)."""
        self._finalizer()

    # -- paths -----------------------------------------------------------------

    def _target(self, path: str, **options: bool) -> fs.Target:
        parts = fs.split(path, str(self.root), self._aliases)
        return fs.resolve(self._fd, str(self.root), parts, original=path, aliases=self._aliases, mount=self.mount,
                          **options)

    def canonical(self, path: str) -> str:
        """``path`` relative to the root, symlinks inside followed ('.' for the root); for showing only."""
        with self._target(path, lexical_tail=True) as target:
            return target.rel

    def resolve(self, path: str) -> Path:
        """The absolute path ``path`` leads to, for showing (never opened by name).

        Raises :class:`OutsideWorkspace` when it leads outside the root.
        """
        rel = self.canonical(path)
        return self.root if rel == "." else self.root / rel

    def contains(self, real_path: str | os.PathLike[str]) -> bool:
        """Whether an already resolved path is the root or below it."""
        text = os.fspath(real_path)
        root = str(self.root)
        return text == root or text.startswith(root.rstrip(os.sep) + os.sep)

    def relative(self, real_path: str | os.PathLike[str]) -> str:
        """A resolved path written relative to the root (``.`` for the root itself)."""
        rel = os.path.relpath(os.fspath(real_path), self.root)
        return "." if rel == "." else rel.replace(os.sep, "/")

    def is_protected(self, path: str) -> bool:
        """Whether writing ``path`` (after following symlinks inside) needs a person's yes."""
        return self._protected_rel(self.canonical(path))

    def _protected_rel(self, rel: str) -> bool:
        if rel == ".":
            return False
        parts = rel.split("/")
        folded = [p.casefold() for p in parts]
        if any(p in PROTECTED_DIRS for p in folded[:-1]) or folded[-1] in PROTECTED_NAMES | PROTECTED_DIRS:
            return True
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        return any(fnmatch.fnmatchcase(prefix, pattern) for pattern in self.protected for prefix in prefixes)

    # -- files -----------------------------------------------------------------

    def read_bytes(self, path: str, limit: int | None = None) -> tuple[bytes, int]:
        """At most ``limit`` (default ``max_read_bytes``) bytes of a regular file, and its size."""
        cap = self.max_read_bytes if limit is None else limit
        with self._target(path) as target:
            fd, st = fs.open_regular(target, path)
        try:
            return fs.read_fd(fd, cap), st.st_size
        finally:
            os.close(fd)

    def read_text(self, path: str, limit: int | None = None) -> str:
        """A regular file as a read shows it (:func:`punie.agent.limits.shown_text`): decoded as UTF-8
        (undecodable bytes replaced), at most ``limit`` (default ``max_read_bytes``) bytes of it."""
        data, size = self.read_bytes(path, limit)
        return shown_text(data, size, self.max_read_bytes if limit is None else limit)

    def write_bytes(self, path: str, data: bytes, *, allow_protected: bool = False) -> str:
        """Replace (or create, with its parents) a regular file; returns its path relative to the root.

        A protected target is refused unless ``allow_protected`` (a person said yes to exactly this),
        checked on the directory actually opened, so a symlink changed after the question cannot
        redirect an approved write to a protected file.
        """
        with self._target(path, create_dirs=True) as target:
            if not allow_protected and self._protected_rel(target.rel):
                raise ToolFailure(f"{target.rel!r} is a protected path: writing it needs permission")
            fs.write_atomic(target, data, path)
            return target.rel

    def write_text(self, path: str, text: str, *, allow_protected: bool = False) -> str:
        """:meth:`write_bytes` of ``text`` encoded as UTF-8."""
        return self.write_bytes(path, text.encode("utf-8"), allow_protected=allow_protected)

    def checked_read_path(self, path: str) -> Path:
        """The absolute path of a regular file the read checks allow (inside, same mount, a regular file:
        opened through the descriptor walk, then closed), to hand to a client that reads by name."""
        with self._target(path) as target:
            fd, _ = fs.open_regular(target, path)
            os.close(fd)
            return self.root / target.rel

    def checked_write_path(self, path: str, *, allow_protected: bool = False) -> Path:
        """The absolute path a write may go to, after the checks :meth:`write_bytes` makes (inside, no
        symlink out, same mount, not protected unless allowed, a regular file with one link or
        nothing yet), without writing: for a client that writes by name (the IDE's fs/write_text_file).
        Missing parent directories are made, as for a write to disk."""
        with self._target(path, create_dirs=True) as target:
            if target.name is None:
                raise ToolFailure(f"{path!r} is a directory")
            if not allow_protected and self._protected_rel(target.rel):
                raise ToolFailure(f"{target.rel!r} is a protected path: writing it needs permission")
            st = target.st
            if st is not None:
                fs.check_replaceable_file(st, path)
                fd, _ = fs.open_regular(target, path)  # the mount check, on the file itself
                os.close(fd)
            return self.root / target.rel

    def existing_text(self, path: str) -> str | None:
        """The current text of a file, or None when it is missing or not a readable regular file (diffs)."""
        try:
            return self.read_text(path)
        except (ToolFailure, OSError):
            return None

    # -- trees -----------------------------------------------------------------

    def _dir(self, path: str) -> tuple[int, str]:
        with self._target(path) as target:
            return fs.open_dir(target, path), target.rel

    def list(self, path: str = ".", *, recursive: bool = True, skip: frozenset[str] = frozenset(),
             limit: int = 500) -> tuple[list[str], bool]:
        """Entries under a directory relative to the root (directories end with '/'), and whether cut at ``limit``."""
        fd, rel = self._dir(path)
        prefix = "" if rel == "." else rel + "/"
        entries: list[str] = []
        try:
            for entry in fs.walk(fd, skip, recursive, mount=self.mount):
                entries.append(prefix + entry.rel + ("/" if entry.is_dir else ""))
                if len(entries) >= limit:
                    return entries, True
        finally:
            os.close(fd)
        return entries, False

    def files(self, path: str = ".", *, skip: frozenset[str] = frozenset(),
              max_bytes: int = 2_000_000) -> Iterator[tuple[str, bytes]]:
        """(path relative to the root, content) of each regular file at or under ``path`` (at most ``max_bytes``).

        Symlinks are not followed (their targets inside the tree are met at their own place).
        """
        with self._target(path) as target:
            if target.st is not None and stat.S_ISREG(target.st.st_mode):
                fd, st = fs.open_regular(target, path)
                try:
                    if st.st_size <= max_bytes:
                        yield target.rel, fs.read_fd(fd, max_bytes)
                finally:
                    os.close(fd)
                return
            dirfd = fs.open_dir(target, path)
            rel = target.rel
        prefix = "" if rel == "." else rel + "/"
        try:
            for entry in fs.walk(dirfd, skip, True, mount=self.mount):
                if not entry.is_file:
                    continue
                try:
                    fd = os.open(entry.name, fs.FILE_FLAGS, dir_fd=entry.dirfd)
                except OSError:
                    continue
                try:
                    st = os.fstat(fd)
                    if stat.S_ISREG(st.st_mode) and st.st_size <= max_bytes:
                        data = fs.read_fd(fd, max_bytes)
                    else:
                        continue
                finally:
                    os.close(fd)
                yield prefix + entry.rel, data
        finally:
            os.close(dirfd)


def resolve_workspace(workspace: str, base_dir: str | os.PathLike[str] | None = None, **options: object) -> Workspace:
    """The Workspace for an ``agent.workspace`` value: absolute, or relative to ``base_dir`` (default cwd).

    ``options`` are :class:`Workspace`'s (``protected``, ``max_read_bytes``, ``env``, ``cross_mounts``).
    """
    base = os.fspath(base_dir) if base_dir is not None else os.getcwd()
    return Workspace(os.path.join(base, os.path.expanduser(workspace)), **options)  # type: ignore[arg-type]


def workspace_for(options: AgentOptions, base_dir: str | os.PathLike[str] | None = None) -> Workspace:
    """The Workspace an ``AgentOptions`` describes: root, protected globs, read cap, commands' extra env."""
    return resolve_workspace(options.workspace, base_dir, protected=tuple(options.protected),
                             max_read_bytes=options.max_read_bytes, env=dict(options.env),
                             cross_mounts=options.cross_mounts)
