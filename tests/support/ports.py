"""Free ports for tests: never a fixed number, and never one another test process can draw too.

A port handed to a child binds later: between the choice and the bind, a port the OS picked
(``bind(("", 0))``) can be drawn again by another pytest-xdist worker, or taken as the local end of any
outgoing connection, both from the OS's ephemeral range. So the ports come from below that range, in
blocks of ``BLOCK`` ports leased by one process at a time (an ``flock`` on the block's lock file, held
until the process exits): two workers, or two test runs on one machine, never hand out the same port.
Within its blocks a process hands ports out in turn (the longest time before one comes round again),
and skips any that something is bound to.
"""

from __future__ import annotations

import fcntl
import os
import socket
import tempfile
import threading
from pathlib import Path

#: Ports handed out lie in [FIRST, the OS's first ephemeral port): out of reach of ``bind(0)`` and of
#: outgoing connections, and above the usual fixed ports of services.
FIRST = 20000
BLOCK = 200
#: Blocks one process leases at most before it cycles through the ones it holds.
MAX_BLOCKS = 4

_lock = threading.Lock()
_blocks: list[tuple[int, int]] = []  # (first port, lock fd) of the blocks this process holds
_next = 0  # index of the next port to try, over the ports of the blocks held, in order
_pid = 0  # the process the blocks belong to (a forked child leases its own)


def _ephemeral_first() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _lease_block() -> bool:
    """Lease one more block (False when every block is held by other processes)."""
    lock_dir = Path(tempfile.gettempdir()) / "punie-test-ports"
    lock_dir.mkdir(exist_ok=True)
    held = {first for first, _ in _blocks}
    for first in range(FIRST, _ephemeral_first() - BLOCK + 1, BLOCK):
        if first in held:
            continue
        fd = os.open(lock_dir / f"{first}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        _blocks.append((first, fd))
        return True
    return False


def _claim(count: int, host: str) -> int:
    """The first of ``count`` consecutive ports of one block that nothing is bound to on ``host``."""
    global _next, _pid
    with _lock:
        if _pid != os.getpid():  # after a fork, the parent's leases are not this process's
            _blocks.clear()
            _pid = os.getpid()
        for _ in range(2 * MAX_BLOCKS * BLOCK):
            if _next >= len(_blocks) * BLOCK:
                if len(_blocks) < MAX_BLOCKS and _lease_block():
                    continue
                if not _blocks:
                    raise AssertionError("no block of test ports left to lease (every one held)")
                _next = 0
            block, offset = divmod(_next, BLOCK)
            if offset + count > BLOCK:  # a run never straddles two blocks
                _next += BLOCK - offset
                continue
            first = _blocks[block][0] + offset
            _next += count
            if all(port_free(first + i, host) for i in range(count)):
                return first
        raise AssertionError(f"no run of {count} free test ports in the blocks held")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing is bound to right now on ``host``, that no other test process is handed."""
    return _claim(1, host)


def free_port_run(count: int, host: str = "127.0.0.1") -> int:
    """The first of ``count`` consecutive free ports (a ring that listens on port + rank)."""
    return _claim(count, host)


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when ``port`` can be bound the way a server binds it (SO_REUSEADDR: TIME_WAIT is no conflict)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def time_wait_on(port: int) -> bool:
    """True when a TCP connection on local ``port`` is in TIME_WAIT (Linux /proc/net/tcp{,6})."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in list(fh)[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "06":  # TCP_TIME_WAIT
                    return True
    return False
