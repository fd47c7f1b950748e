"""Atomic replacement of a text file.

The new content is written to a temporary file in the same directory, flushed
and fsynced, given the permission bits of the file it replaces, then moved over
it with ``os.replace`` (atomic on POSIX) and the directory is fsynced. A crash,
a full disk or any error before the rename leaves the original file untouched
and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

_DEFAULT_MODE = 0o644


def write_atomic(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Replace ``path`` with ``text`` atomically, keeping its permission bits.

    A file that does not exist yet gets mode 0644 (less the umask). A symlink is
    followed: the file it points to is replaced, the link stays. Raises OSError
    (for example ENOSPC) with the original file left byte for byte as it was.
    """
    target = Path(os.path.realpath(path))
    directory = target.parent
    owner: tuple[int, int] | None = None
    try:
        st = os.stat(target)
        mode, owner = stat.S_IMODE(st.st_mode), (st.st_uid, st.st_gid)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = _DEFAULT_MODE & ~umask

    data = text.encode(encoding)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)
            if owner is not None and hasattr(os, "fchown"):
                # Only possible for root or the same owner; a failure keeps our ids.
                with contextlib.suppress(OSError):
                    os.fchown(fd, *owner)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(directory)
    logger.debug("wrote %s atomically (%d bytes, mode %o)", target, len(data), mode)


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
