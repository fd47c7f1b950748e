"""Atomic, serialised replacement of a text file (the profiles file), and of a directory (`replace_dir`).

``write_atomic`` writes the new content to a temporary file in the same
directory (named ``.NAME.PID.RANDOM.tmp``), flushes and fsyncs it, gives it the
permission bits (and, where allowed, the owner) of the file it replaces, then
moves it over the file with ``os.replace`` (atomic on POSIX) and fsyncs the
directory. A crash, a full disk or any error before the rename leaves the
original file untouched; an error leaves no temporary file behind, and the one
a SIGKILLed writer leaves is removed by the next ``locked`` edit (a writer holds
an flock on its temp file until the rename, released by the kernel when it
dies, so a temp file that can be locked is a leftover: no pid guessing).

``locked(path)`` serialises read-modify-write cycles: it takes an exclusive
``fcntl.flock`` on the *directory* that holds the (symlink-resolved) file.
The directory's inode is stable across the renames (a lock on the file itself
would be lost with the inode each edit replaces) and it needs no lock file in
the user's project; where a filesystem refuses to lock a directory, a sidecar
``.NAME.lock`` next to the file is locked instead. The lock dies with its
process, so a killed edit never blocks the next one. Every edit through
`punie.config.edit.apply_edit` reads, changes, validates and writes under it.

What is refused, on purpose (``ConfigError`` naming the file):

- a file without write permission (``0444``), even for root: the user made it
  read-only, so it is not silently replaced;
- a file with more than one hard link: a rename would split the links (the
  other names would keep the old text) and writing in place would lose
  atomicity. Replace the hard link with a symlink.

A symlink is resolved once: the file it points to is replaced and the link
stays a link.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from punie.errors import ConfigError

logger = logging.getLogger(__name__)

_DEFAULT_MODE = 0o644
# Test hook (tests/config/test_edit_lock.py): the path of a FIFO. The writer writes one
# byte to it after half its data and then waits to be killed, so a test can
# SIGKILL an edit mid-write at a known point without sleeping.
TEST_PAUSE_ENV = "_PUNIE_TEST_PAUSE_WRITE"  # not PUNIE_*: never taken for a profile key


def temp_pattern(name: str) -> re.Pattern[str]:
    """The names of the temporary files ``write_atomic`` makes for file ``name``."""
    return re.compile(rf"^\.{re.escape(name)}\.(?:(\d+)\.)?[A-Za-z0-9_-]+\.tmp$")


def _temp_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_atomic(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8",
                 new_mode: int = _DEFAULT_MODE) -> None:
    """Replace ``path`` with ``text`` atomically, keeping its permission bits.

    THE temp-file-then-rename of Punie (tests/core/test_one_home.py keeps it the only one).
    A file that does not exist yet gets ``new_mode`` (0644; less the umask). A symlink is
    followed: the file it points to is replaced, the link stays. Raises OSError
    (for example ENOSPC) with the original file left byte for byte as it was.
    Does not lock: callers that read, change and write use ``locked``.
    """
    target = Path(os.path.realpath(path))
    directory = target.parent
    owner: tuple[int, int] | None = None
    try:
        st = os.stat(target)
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    except FileNotFoundError:
        from punie.paths import current_umask

        mode = new_mode & ~current_umask()

    data = text.encode(encoding)
    tmp_name = _temp_name(target)
    fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        # Held until the rename: a temp file nobody holds a lock on is a dead writer's.
        fcntl.flock(fd, fcntl.LOCK_EX)
        _write_all(fd, data)
        os.fchmod(fd, mode)
        if owner is not None and hasattr(os, "fchown"):
            # Only possible for root or the same owner; a failure keeps our ids.
            with contextlib.suppress(OSError):
                os.fchown(fd, *owner)
        os.fsync(fd)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    finally:
        os.close(fd)
    _fsync_dir(directory)
    logger.debug("wrote %s atomically (%d bytes, mode %o)", target, len(data), mode)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    pause = os.environ.get(TEST_PAUSE_ENV)
    if pause:
        head = len(view) // 2
        _write_view(fd, view[:head])
        _pause_for_test(pause)
        view = view[head:]
    _write_view(fd, view)


def _write_view(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pause_for_test(fifo: str) -> None:
    with open(fifo, "wb") as f:
        f.write(b"w")
    while True:  # until SIGKILLed
        signal.pause()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform/filesystem allows it.
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def locked(path: str | os.PathLike[str], *, display: str | None = None) -> Iterator[Path]:
    """Hold the exclusive edit lock of ``path`` and yield its resolved target.

    On entry, checks that the file may be replaced (see the module doc), and
    removes temporary files that killed writers left next to it.
    """
    shown = display or str(path)
    target = Path(os.path.realpath(path))
    fd = _lock(target, shown)
    try:
        check_replaceable(target, shown)
        remove_stale_temps(target)
        yield target
    finally:
        os.close(fd)  # releases the flock


def _lock(target: Path, shown: str) -> int:
    directory = target.parent
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot open the directory of the profiles file: {exc.strerror or exc}", where=shown) from None
    try:
        _flock(fd, shown)
        return fd
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP):
            raise ConfigError(f"cannot lock the profiles file: {exc.strerror or exc}", where=shown) from None
    # A filesystem that cannot lock a directory (some network ones): a sidecar file.
    sidecar = target.with_name(f".{target.name}.lock")
    try:
        fd = os.open(sidecar, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        _flock(fd, shown)
    except OSError as exc:
        raise ConfigError(f"cannot lock the profiles file: {exc.strerror or exc}", where=shown) from None
    return fd


def _flock(fd: int, shown: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        logger.info("%s: waiting for another edit of the file to finish", shown)
        fcntl.flock(fd, fcntl.LOCK_EX)


def check_replaceable(target: Path, shown: str) -> None:
    """Refuse a read-only or hard-linked file (ConfigError); a missing one is fine."""
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError("not a regular file: refusing to replace it", where=shown)
    mode = stat.S_IMODE(st.st_mode)
    # Mode bits, not os.access: root may write anything, but a 0444 file was made read-only on purpose.
    if not mode & 0o222 or not os.access(target, os.W_OK):
        raise ConfigError(
            f"the profiles file is read-only (mode {mode:04o}): not changed",
            where=shown,
            hint=f"make it writable first (chmod u+w {shown}) or edit a copy with --config",
        )
    if st.st_nlink > 1:
        raise ConfigError(
            f"the profiles file has {st.st_nlink} hard links: an atomic edit would split them, not changed",
            where=shown,
            hint="replace the hard link with a symlink (ln -sf TARGET punie.toml); symlinks are followed",
        )


def remove_stale_temps(target: Path) -> list[Path]:
    """Remove the ``write_atomic`` temp files of ``target`` that no writer holds.

    A writer holds an exclusive flock on its temp file until the rename, and the
    kernel drops it when the writer dies (SIGKILL included): a temp file that can
    be locked at once is a dead writer's leftover. Returns what was removed.
    """
    pattern = temp_pattern(target.name)
    removed: list[Path] = []
    try:
        names = os.listdir(target.parent)
    except OSError:
        return removed
    for name in names:
        if not pattern.match(name):
            continue
        candidate = target.parent / name
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live writer's (or not lockable): leave it
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(candidate)
                removed.append(candidate)
                logger.info("removed %s, left by an interrupted edit", candidate)
        finally:
            os.close(fd)
    return removed


def publish_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str], *,
                complete: Callable[[Path], bool]) -> Path:
    """Rename the finished directory ``staging`` to ``target`` (a sibling), unless another process
    published the same content first (``complete(target)`` is then true and theirs is kept; the
    caller removes ``staging``). Raises OSError when the rename fails for another reason."""
    staging, target = Path(staging), Path(target)
    try:
        os.rename(staging, target)
    except OSError:
        if not complete(target):
            raise
    return target


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str], *, mode: int | None = None) -> Path:
    """Put the finished directory ``staging`` at ``target`` (a sibling), replacing what is there.

    Each step is a rename within one directory: a reader sees the old directory or the new one,
    never a mix. The old one is moved aside first, then removed. ``mode``: the new directory's
    permissions (a ``mkdtemp`` directory is 0700).
    """
    staging, target = Path(staging), Path(target)
    if mode is not None:
        os.chmod(staging, mode)
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, old / target.name)
        os.rename(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(staging, target)
    return target


def write_cache_json(path: str | os.PathLike[str], value: object) -> bool:
    """Write a cache file as JSON through a temp file and a rename, best effort: a cache that
    cannot be written is only slower next time, so an OSError is swallowed (returns False)."""
    import json

    path = Path(path)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(value), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()
        return False
    return True
