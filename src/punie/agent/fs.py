"""Descriptor-relative file access that cannot be raced out of a directory tree.

Everything here works on an open directory descriptor of the tree's root and
never on a path name the kernel would resolve on its own:

* :func:`resolve` walks a relative path one component at a time with
  ``openat(dirfd, name, O_DIRECTORY | O_NOFOLLOW)``. A component that is a
  symlink is not followed by the kernel: its target is read with
  ``readlinkat`` and spliced into the walk (absolute targets only when they
  name a place inside the root), ``..`` pops the stack of descriptors the walk
  itself opened, so it can never climb above the root. On Linux the parent
  directory is first tried in one ``openat2(RESOLVE_BENEATH |
  RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` call, which the kernel
  enforces; any symlink or escape attempt falls back to the walk.
* Opened files are checked with ``fstat`` (regular file only) after an
  ``O_NONBLOCK | O_NOFOLLOW`` open, so a FIFO never blocks and a device or
  socket is refused before (``fstatat``) and after the open.
* :func:`write_atomic` writes a temporary file created ``O_EXCL`` inside the
  target's directory descriptor and ``renameat``s it over the name: the write
  never goes through an existing inode (a hardlink or a symlink swapped in at
  the last moment is replaced, not written through), readers never see half a
  file, and a file with several hard links is refused up front.
* :func:`walk` lists a tree with ``scandir`` on descriptors, never descending
  into symlinks.

A directory that is *moved* out of the tree after it was opened is followed
by its descriptor: that needs write access outside the tree, which the agent
does not have except through run_command.
"""

from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass

from punie.errors import OutsideWorkspace, ToolFailure
from punie.limits import CHUNK_BYTES
from punie.paths import current_umask

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_NOCTTY = getattr(os, "O_NOCTTY", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC | _NONBLOCK
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | _CLOEXEC | _NONBLOCK | _NOCTTY
MAX_SYMLINKS = 40
MAX_DEPTH = 64
#: The longest file name (one path component) in bytes, as file systems count it (NAME_MAX), not in characters.
NAME_MAX_BYTES = 255

# openat2(2) (Linux >= 5.6); the number is the same on every architecture.
_SYS_OPENAT2 = 437
RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
#: fsync a written file before renaming it over the old one (durability across a crash; ~ms per write).
FSYNC = True
#: Set to False to force the portable walk (tests exercise both).
USE_OPENAT2 = sys.platform.startswith("linux")
_openat2_state: bool | None = None  # None: not probed yet


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve_flags: int) -> int | None:
    """``openat2(dirfd, path, flags, resolve)``: a descriptor, None when the kernel lacks it; OSError otherwise."""
    global _openat2_state
    if not USE_OPENAT2 or _openat2_state is False:
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    how = _OpenHow(flags, 0, resolve_flags)
    libc.syscall.restype = ctypes.c_long
    fd = libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(dirfd), ctypes.c_char_p(os.fsencode(path)),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd >= 0:
        _openat2_state = True
        return int(fd)
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EPERM, errno.E2BIG) and _openat2_state is None:
        _openat2_state = False  # old kernel or a seccomp filter: use the walk from now on
        return None
    raise OSError(err, os.strerror(err), path)


def kind(mode: int) -> str:
    """A file type in words (for refusals)."""
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISLNK, "symlink"), (stat.S_ISREG, "regular file")):
        if test(mode):
            return name
    return "special file"


def split(path: str, root: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """The components of ``path`` relative to the root (an absolute path must start with the root)."""
    if not isinstance(path, str) or not path.strip():
        raise ToolFailure("path must be a non-empty string")
    if "\x00" in path:
        raise ToolFailure("path must not contain NUL characters")
    if os.path.isabs(path):
        rel = _strip_root(path, (root, *aliases))
        if rel is None:
            raise OutsideWorkspace(f"{path!r} is outside the workspace {root!r}: file tools only work on paths "
                                   "inside it (no '..', no outside absolute paths, no symlinks pointing out)")
        path = rel
    parts = [c for c in path.split("/") if c not in ("", ".")]
    for part in parts:
        size = len(os.fsencode(part))
        if size > NAME_MAX_BYTES:
            raise ToolFailure(f"a name in {path!r} is {size} bytes long: file names are limited to "
                              f"{NAME_MAX_BYTES} bytes (UTF-8), not characters")
    return parts


def mount_of(fd: int) -> tuple[int, int | None]:
    """Which mount an open file is on: its device and (Linux) its mount id, which also tells a bind
    mount of the same file system apart (same st_dev, another mount)."""
    device = os.fstat(fd).st_dev
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as fh:
            for line in fh:
                if line.startswith(b"mnt_id:"):
                    return device, int(line.split()[1])
    except (OSError, ValueError):
        pass
    return device, None


def _check_mount(fd: int, mount: tuple[int, int | None] | None, where: str, shown: str) -> None:
    """Refuse (closing ``fd``) a directory or file on another mount than the root's, when ``mount`` is set."""
    if mount is not None and mount_of(fd) != mount:
        os.close(fd)
        raise OutsideWorkspace(f"{shown!r} crosses into another mount at {where!r} (a bind mount or a mounted "
                               "file system): the agent does not cross mounts unless agent.cross_mounts = true")


def _strip_root(path: str, roots: tuple[str, ...]) -> str | None:
    for root in roots:
        root = root.rstrip("/") or "/"
        if path == root or path.startswith(root.rstrip("/") + "/"):
            return path[len(root):].lstrip("/")
    return None


@dataclass
class Target:
    """Where a path leads: an open descriptor of its directory and the last component's name.

    ``parts`` are the canonical components of the directory relative to the
    root; ``name`` is None when the path is the root itself; ``st`` is the
    ``lstat`` of the entry (None when it does not exist). The caller closes it.
    """

    dirfd: int
    parts: tuple[str, ...]
    name: str | None
    st: os.stat_result | None
    #: The root's mount when crossing mounts is refused (`mount_of`), else None.
    mount: tuple[int, int | None] | None = None

    @property
    def rel(self) -> str:
        """The canonical path relative to the root ('.' for the root)."""
        return "/".join((*self.parts, self.name) if self.name else self.parts) or "."

    def close(self) -> None:
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lstat(name: str, dirfd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def resolve(root_fd: int, root: str, components: list[str], *, create_dirs: bool = False,
            lexical_tail: bool = False, original: str = "", aliases: tuple[str, ...] = (),
            mount: tuple[int, int | None] | None = None) -> Target:
    """Walk ``components`` from ``root_fd`` to a :class:`Target`, never leaving the tree.

    ``create_dirs`` makes missing directories on the way (write_file); when the
    path is refused after that, the directories this call made are removed again.
    ``lexical_tail`` lets missing directories through as names only (for
    showing a path, never for opening it). ``mount`` (the root's `mount_of`)
    refuses a directory on another mount (a bind mount into the tree).
    """
    shown = original or "/".join(components)
    fast = _resolve_openat2(root_fd, components, create_dirs, lexical_tail, mount)
    if fast is not None:
        return fast
    created: list[tuple[int, str]] = []  # (descriptor of the parent, name) of each directory made here
    try:
        return _walk_to(root_fd, root, components, shown, create_dirs, lexical_tail, aliases, mount, created)
    except BaseException:
        for parent, name in reversed(created):
            try:
                os.rmdir(name, dir_fd=parent)
            except OSError:
                pass
        raise
    finally:
        for parent, _ in created:
            os.close(parent)


def _walk_to(root_fd: int, root: str, components: list[str], shown: str, create_dirs: bool, lexical_tail: bool,
             aliases: tuple[str, ...], mount: tuple[int, int | None] | None,
             created: list[tuple[int, str]]) -> Target:
    pending = list(components)
    stack: list[tuple[str, int]] = []  # directories the walk opened, below the root
    lexical: list[str] = []  # missing directories (lexical_tail only)
    hops = 0
    try:
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if lexical:
                    lexical.pop()
                elif stack:
                    os.close(stack.pop()[1])
                else:
                    raise OutsideWorkspace(f"{shown!r} is outside the workspace {root!r}: '..' above its root")
                continue
            dirfd = stack[-1][1] if stack else root_fd
            if lexical or (not pending):
                if lexical:
                    lexical.append(name)
                    continue
                st = _lstat(name, dirfd)
                if st is not None and stat.S_ISLNK(st.st_mode):
                    hops += 1
                    pending = _splice(name, dirfd, pending, hops, root, shown, stack, aliases)
                    continue
                fd = os.dup(dirfd)
                return Target(fd, tuple(n for n, _ in stack), name, st, mount)
            try:
                fd = os.open(name, DIR_FLAGS, dir_fd=dirfd)
            except FileNotFoundError:
                if lexical_tail:
                    lexical.append(name)
                    continue
                if not create_dirs:
                    raise ToolFailure(f"no such file or directory: {shown!r} ({'/'.join([*_names(stack), name])} "
                                      "does not exist)") from None
                if len(stack) + len([c for c in pending if c not in ("", ".")]) > MAX_DEPTH:
                    raise ToolFailure(f"{shown!r} is nested too deeply") from None  # before making anything
                try:
                    os.mkdir(name, 0o777, dir_fd=dirfd)
                    created.append((os.dup(dirfd), name))
                except FileExistsError:
                    pass
                pending.insert(0, name)  # open what was made (or raced in), with the same checks
                continue
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                    raise
                st = _lstat(name, dirfd)
                if st is None:
                    pending.insert(0, name)  # gone meanwhile: look again
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        raise ToolFailure(f"{shown!r} keeps changing while it is opened") from None
                    continue
                if not stat.S_ISLNK(st.st_mode):
                    raise ToolFailure(f"{'/'.join([*_names(stack), name])!r} is a {kind(st.st_mode)}, "
                                      f"not a directory (in {shown!r})") from None
                hops += 1
                pending = _splice(name, dirfd, pending, hops, root, shown, stack, aliases)
                continue
            if len(stack) >= MAX_DEPTH:
                os.close(fd)
                raise ToolFailure(f"{shown!r} is nested too deeply")
            _check_mount(fd, mount, "/".join([*_names(stack), name]), shown)
            stack.append((name, fd))
        if lexical:
            top = stack[-1][1] if stack else root_fd
            return Target(os.dup(top), (*_names(stack), *lexical[:-1]), lexical[-1], None, mount)
        if not stack:
            return Target(os.dup(root_fd), (), None, os.fstat(root_fd), mount)
        # The path ended on '..' or '.': the target is the directory the walk stands in.
        name, fd = stack.pop()
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        parent = stack[-1][1] if stack else root_fd
        return Target(os.dup(parent), tuple(_names(stack)), name, st, mount)
    finally:
        for _, fd in stack:
            os.close(fd)


def _names(stack: list[tuple[str, int]]) -> list[str]:
    return [n for n, _ in stack]


def _splice(name: str, dirfd: int, pending: list[str], hops: int, root: str, shown: str,
            stack: list[tuple[str, int]], aliases: tuple[str, ...]) -> list[str]:
    """The components left to walk after following the symlink ``name`` (in ``dirfd``) ourselves."""
    if hops > MAX_SYMLINKS:
        raise ToolFailure(f"too many levels of symbolic links in {shown!r}")
    try:
        target = os.readlink(name, dir_fd=dirfd)
    except OSError:
        return [name, *pending]  # changed meanwhile: look at it again
    if target.startswith("/"):
        rel = _strip_root(target, (root, *aliases))
        if rel is None:
            raise OutsideWorkspace(f"{shown!r} is outside the workspace {root!r}: "
                                   f"{'/'.join([*_names(stack), name])} is a symlink pointing out ({target})")
        while stack:
            os.close(stack.pop()[1])
        return [*rel.split("/"), *pending]
    return [*target.split("/"), *pending]


def _resolve_openat2(root_fd: int, components: list[str], create_dirs: bool, lexical_tail: bool,
                     mount: tuple[int, int | None] | None = None) -> Target | None:
    """The kernel-enforced fast path: the parent in one openat2 call, when it has no '..' and no symlink
    (and, when ``mount`` is set, crosses no mount: RESOLVE_NO_XDEV)."""
    if not components or ".." in components:
        return None
    *parents, name = components
    how = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | (RESOLVE_NO_XDEV if mount else 0)
    try:
        fd = openat2(root_fd, "/".join(parents), DIR_FLAGS, how) if parents else os.dup(root_fd)
    except OSError:
        return None  # a symlink, a missing directory, a mount, a race: the walk decides
    if fd is None:
        return None
    st = _lstat(name, fd)
    if st is not None and stat.S_ISLNK(st.st_mode):
        os.close(fd)
        return None
    return Target(fd, tuple(parents), name, st, mount)


def open_regular(target: Target, shown: str) -> tuple[int, os.stat_result]:
    """Open a target that must be a regular file for reading: a descriptor and its fstat."""
    if target.name is None or (target.st is not None and stat.S_ISDIR(target.st.st_mode)):
        raise ToolFailure(f"{shown!r} is a directory (use list_files)")
    if target.st is None:
        raise ToolFailure(f"no such file: {shown!r}")
    if not stat.S_ISREG(target.st.st_mode):
        raise ToolFailure(f"{shown!r} is a {kind(target.st.st_mode)}, not a regular file: refused")
    try:
        fd = os.open(target.name, FILE_FLAGS, dir_fd=target.dirfd)
    except FileNotFoundError:
        raise ToolFailure(f"no such file: {shown!r}") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise ToolFailure(f"{shown!r} changed while it was opened (now a symlink): try again") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise ToolFailure(f"{shown!r} is a {kind(st.st_mode)}, not a regular file: refused")
    _check_mount(fd, target.mount, target.rel, shown)
    return fd, st


def read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes of an open file."""
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, CHUNK_BYTES))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def check_replaceable_file(st: os.stat_result, shown: str) -> None:
    """Refuse to replace what is not one plain file: a directory, a FIFO, device or socket, or a file
    with other (hard-linked) names, which may be outside the workspace."""
    if stat.S_ISDIR(st.st_mode):
        raise ToolFailure(f"{shown!r} is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise ToolFailure(f"{shown!r} is a {kind(st.st_mode)}, not a regular file: refused")
    if st.st_nlink > 1:
        raise ToolFailure(f"{shown!r} has {st.st_nlink} hard links: refused (the other names may be "
                          "outside the workspace; remove the extra links first)")


def write_atomic(target: Target, data: bytes, shown: str) -> None:
    """Replace ``target`` with ``data``: a temp file in the same directory descriptor, renamed over it."""
    if target.name is None:
        raise ToolFailure(f"{shown!r} is a directory")
    st = target.st
    mode = 0o666
    if st is not None:
        check_replaceable_file(st, shown)
        mode = stat.S_IMODE(st.st_mode)
    tmp = f".{_cut_bytes(target.name, 200)}.punie-{secrets.token_hex(6)}.tmp"  # <= 224 bytes
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, 0o600, dir_fd=target.dirfd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if st is not None:
                os.fchmod(fd, mode)
            else:
                os.fchmod(fd, mode & ~current_umask())
            if FSYNC:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, target.name, src_dir_fd=target.dirfd, dst_dir_fd=target.dirfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=target.dirfd)
        except OSError:
            pass
        raise


def _cut_bytes(name: str, limit: int) -> str:
    """``name`` cut to at most ``limit`` bytes of its file-system encoding, never inside a character."""
    raw = os.fsencode(name)
    if len(raw) <= limit:
        return name
    cut = raw[:limit]
    for _ in range(4):  # a UTF-8 character is at most 4 bytes: drop a partial one at the end
        try:
            return cut.decode("utf-8")
        except UnicodeDecodeError:
            cut = cut[:-1]
    return os.fsdecode(raw[:limit])


def open_dir(target: Target, shown: str) -> int:
    """A descriptor of the directory a target names."""
    if target.name is None:
        return os.dup(target.dirfd)
    if target.st is None:
        raise ToolFailure(f"no such file or directory: {shown!r}")
    if not stat.S_ISDIR(target.st.st_mode):
        raise ToolFailure(f"not a directory: {shown!r}")
    try:
        fd = os.open(target.name, DIR_FLAGS, dir_fd=target.dirfd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
            raise ToolFailure(f"{shown!r} changed while it was opened: try again") from None
        raise
    _check_mount(fd, target.mount, target.rel, shown)
    return fd


@dataclass(frozen=True)
class Entry:
    """One entry met by :func:`walk`: its path relative to the walk's start and its type."""

    rel: str
    is_dir: bool
    is_file: bool
    dirfd: int  # the open directory it is in (valid only during the iteration)
    name: str


def walk(fd: int, skip: frozenset[str], recursive: bool = True, prefix: str = "", depth: int = 0,
         mount: tuple[int, int | None] | None = None) -> Iterator[Entry]:
    """Entries under the open directory ``fd``, sorted, top-down; symlinks listed but never followed;
    with ``mount``, a directory on another mount is listed but not descended into."""
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    subdirs: list[str] = []
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
            is_file = entry.is_file(follow_symlinks=False)
        except OSError:
            continue
        if is_dir and entry.name in skip:
            continue
        yield Entry(prefix + entry.name, is_dir, is_file, fd, entry.name)
        if is_dir:
            subdirs.append(entry.name)
    if not recursive or depth >= MAX_DEPTH:
        return
    for name in subdirs:
        try:
            sub = os.open(name, DIR_FLAGS, dir_fd=fd)
        except OSError:
            continue  # swapped for something else meanwhile: not descended
        if mount is not None and mount_of(sub) != mount:
            os.close(sub)
            continue  # a mount point (bind mount) inside the tree: not crossed
        try:
            yield from walk(sub, skip, True, f"{prefix}{name}/", depth + 1, mount)
        finally:
            os.close(sub)
