"""Network facts in one place: loopback, URLs of a server, and whether a port is taken.

Everything here is stdlib-only and cheap to import (the CLI's check path uses it).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import functools
import ipaddress
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from punie.limits import SMALL_FILE_BYTES
from punie.mechanisms import NATIVE, mechanism
from punie.procfs import children_map, subtree

#: The request ``model`` under which mlx_lm serves the model WITH its ``--adapter-path``
#: (any other name, even the model's own path, silently reloads the bare base model).
SERVED_MODEL_NAME = "default_model"
LOOPBACK = "127.0.0.1"  # where servers bind unless the profile says otherwise
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp{,6}


def is_loopback(host: str) -> bool | None:
    """True for a loopback address or a name resolving only to loopback; None if it does not resolve."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return True
    loopback = _literal_loopback(name)
    if loopback is not None:
        return loopback
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return None
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


@functools.lru_cache(maxsize=256)
def _literal(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``name`` as an IP address literal, or None (a host name). Cached: `punie check` of a file with
    thousands of profiles asks about the same few hosts for each (issue 25); no DNS answer is cached."""
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


@functools.lru_cache(maxsize=256)
def _literal_loopback(name: str) -> bool | None:
    """Whether the address literal ``name`` is loopback; None for a host name (asked of DNS, never cached)."""
    literal = _literal(name)
    return None if literal is None else literal.is_loopback


def is_loopback_url(url: str) -> bool:
    """True when the URL's host is a loopback literal or localhost (no DNS: for proxy decisions)."""
    host = (urlsplit(url).hostname or "").strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def remote_host_problem(host: str, allow_remote: bool, *, what: str = "server.host") -> str | None:
    """Why ``host`` may not be used, or None. THE rule for non-loopback hosts, used by check and plan.

    A host that is not loopback needs ``server.allow_remote = true`` (mlx_lm.server has no
    authentication); without it a host that does not resolve is refused too.
    """
    if allow_remote:
        return None
    loop = is_loopback(host)
    if loop is None:
        return f"host {host!r} does not resolve"
    if loop:
        return None
    if what == "server.url":
        return f"{host} is not a loopback address; set server.allow_remote = true to use a remote server"
    return (f"{host} is not a loopback address: mlx_lm.server has no authentication; "
            "set server.allow_remote = true to expose it")


def remote_warning(host: str) -> str | None:
    """The warning printed at every start of a server bound to a non-loopback ``host`` (None: loopback)."""
    if is_loopback(host):
        return None
    return (f"WARNING: the server listens on {host} (server.allow_remote = true): anyone who can reach "
            "this machine can use the model server, which has no authentication")


def connect_host(host: str) -> str:
    """The address a client uses to reach a server bound to ``host`` (wildcards mean loopback), URL-ready."""
    host = LOOPBACK if host in WILDCARD_HOSTS else host
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def server_root(url: str) -> str:
    """``http://h:p/v1/`` or ``http://h:p`` -> ``http://h:p``."""
    root = url.rstrip("/")
    return root.removesuffix("/v1")


def openai_base_url(url: str) -> str:
    """The OpenAI base URL of a server URL (``http://host:port`` -> ``http://host:port/v1``)."""
    return server_root(url) + "/v1"


def local_root(host: str, port: int) -> str:
    """The root URL (``http://host:port``) of a server Punie starts bound to ``host:port``."""
    return f"http://{connect_host(host)}:{port}"


def server_root_for(url: str | None, host: str, port: int) -> str:
    """The root URL of a profile's server: its ``server.url``'s, else where Punie starts it on
    ``host:port`` (wildcard binds are reached on loopback). The one rule, for the plan and the agent."""
    return server_root(url) if url else local_root(host, port)


def local_base_url(host: str, port: int) -> str:
    """The OpenAI base URL of a server Punie starts on ``host:port``."""
    return local_root(host, port) + "/v1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host.strip("[]"), 0))
        return int(sock.getsockname()[1])


# -- is the port taken? --------------------------------------------------------------------------


_snapshot: contextvars.ContextVar[dict[int, list[tuple[str, int]]] | None] = contextvars.ContextVar(
    "punie_listener_snapshot", default=None)
_owners: contextvars.ContextVar[dict[tuple[int, str], list[int]] | None] = contextvars.ContextVar(
    "punie_listener_owners", default=None)


def _scan_listeners() -> dict[int, list[tuple[str, int]]]:
    """Every LISTEN socket in /proc/net/tcp{,6}, by port: [(address, inode)] (Linux; {} elsewhere)."""
    found: dict[int, list[tuple[str, int]]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as fh:
                next(fh, None)
                for line in fh:
                    fields = line.split()
                    if len(fields) < 10 or fields[3] != _LISTEN:
                        continue
                    address, _, hexport = fields[1].rpartition(":")
                    found.setdefault(int(hexport, 16), []).append((_proc_address(address), int(fields[9])))
        except (OSError, ValueError):
            continue
    return found


@contextlib.contextmanager
def listener_snapshot() -> Iterator[None]:
    """Within this block, the socket tables are read once (at entry) and every port question is
    answered from that one scan: a command checking 5,000 profiles reads /proc/net/tcp once, not
    5,000 times. Use it where the answers need to be consistent, not fresh (`punie check`);
    `punie up` asks outside it, at the moment it binds."""
    token = _snapshot.set(_scan_listeners())
    owners = _owners.set({})
    try:
        yield
    finally:
        _owners.reset(owners)
        _snapshot.reset(token)


def _proc_listeners(port: int) -> list[tuple[str, int]]:
    """(address, inode) of every LISTEN socket on ``port`` (from the snapshot when one is taken)."""
    table = _snapshot.get()
    if table is None:
        table = _scan_listeners()
    return list(table.get(port, ()))


def _proc_address(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    # /proc prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    addr = ipaddress.ip_address(words)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        return str(addr.ipv4_mapped)
    return str(addr)


def listening_inodes(port: int) -> set[int]:
    """Inodes of the sockets listening on ``port`` (any address), from /proc/net (Linux)."""
    return {inode for _, inode in _proc_listeners(port)}


def _overlaps(listener: str, host: str) -> bool:
    if listener in ("0.0.0.0", "::") or host in WILDCARD_HOSTS:
        return True
    a, b = _literal(listener), _literal(host.strip("[]"))
    if a is None or b is None:
        return True  # a name: be safe
    return a == b


def port_problem(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now, or None when it could.

    Binds the way mlx_lm.server and vLLM bind (SO_REUSEADDR, so a TIME_WAIT left by a
    server that just stopped is no conflict), and on Linux also looks for a LISTEN socket
    on the port in /proc/net/tcp{,6}: a listener on 127.0.0.1, 0.0.0.0 or :: overlapping
    ``host`` is a conflict even where the bind alone would not show it.
    """
    name = host.strip("[]")
    literal = _literal(name)
    if literal is not None and "%" not in name:  # no resolver call for an address (thousands on 127.0.0.1)
        family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        kind, proto = socket.SOCK_STREAM, socket.IPPROTO_TCP
        address: tuple[Any, ...] = (name, port, 0, 0) if literal.version == 6 else (name, port)
    else:
        try:
            infos = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            return f"host {host!r} does not resolve ({exc})"
        family, kind, proto, _, address = infos[0]
    busy = f"port {port} on {host} is already in use"
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return busy
            if exc.errno == errno.EACCES:
                return f"no permission to listen on port {port} of {host}"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"address {host} is not an address of this machine"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    bound = str(address[0])
    for listener, _ in _proc_listeners(port):
        if _overlaps(listener, bound):
            return f"{busy} (a server listens on {listener})"
    return None


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on ``host:port`` (TIME_WAIT does not count); see `port_problem`."""
    problem = port_problem(host, port)
    return problem is not None and "already in use" in problem


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets open in process ``pid`` (Linux /proc/PID/fd; empty when unreadable)."""
    found: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return found
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (by parent pid, from /proc; Linux)."""
    return subtree(pid, children_map())


def listener_pids(port: int, host: str = "") -> list[int]:
    """Pids of the processes holding a socket that listens on ``port`` (overlapping ``host``), from
    /proc (Linux; [] elsewhere or when they belong to another user)."""
    inodes = {inode for address, inode in _proc_listeners(port) if not host or _overlaps(address, host)}
    if not inodes:
        return []
    memo = _owners.get()
    if memo is not None and (port, host) in memo:  # within a snapshot: /proc/*/fd is walked once per port
        return memo[(port, host)]
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return []
    found = sorted(int(e) for e in entries if socket_inodes(int(e)) & inodes)
    if memo is not None:
        memo[(port, host)] = found
    return found


def process_cmdline(pid: int) -> list[str]:
    """The argv of process ``pid`` ([] when unreadable)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            raw = fh.read(SMALL_FILE_BYTES)
    except OSError:
        return []
    return [part.decode("utf-8", "replace") for part in raw.split(b"\0") if part]



def owns_listener(pid: int, port: int, host: str = "") -> bool | None:
    """Does the process tree of ``pid`` hold every socket listening on ``port`` (overlapping ``host``)?

    THE port-owner check; the mechanism is chosen by `punie.mechanisms` (job ``port-owner``):
    /proc on Linux, psutil elsewhere (or when forced). False when no socket of the tree listens
    there or some other process is seen holding one; None when it cannot be told at all.
    """
    if mechanism("port-owner") == NATIVE:
        return _proc_owns_listener(pid, port, host)
    return _psutil_owns_listener(pid, port, host)


def _proc_owns_listener(pid: int, port: int, host: str) -> bool | None:
    listeners = {inode for address, inode in _proc_listeners(port) if not host or _overlaps(address, host)}
    if not listeners:
        return False
    ours: set[int] = set()
    for member in descendants(pid):
        ours |= socket_inodes(member)
    return listeners <= ours


def _psutil_owns_listener(pid: int, port: int, host: str) -> bool | None:
    """The portable owner check: the listening sockets of ``pid``'s tree, by psutil (which on macOS
    can list another user's sockets only as root: what it cannot see, it does not count against us)."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return False
    mine: set[tuple[str, int]] = set()
    for member in tree:
        try:
            connections = member.net_connections(kind="tcp")
        except psutil.Error:
            continue
        mine |= {(c.laddr.ip, c.laddr.port) for c in connections if _listens_on(c, port, host)}
    if not mine:
        return False
    tree_pids = {member.pid for member in tree}
    try:
        everyone = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):  # macOS without root: only our own tree's sockets can be seen
        return True
    others = [c for c in everyone if _listens_on(c, port, host) and c.pid is not None and c.pid not in tree_pids]
    return not others


def _listens_on(connection: object, port: int, host: str) -> bool:
    laddr = getattr(connection, "laddr", None)
    if getattr(connection, "status", None) != "LISTEN" or not laddr or laddr.port != port:
        return False
    address = laddr.ip.split("%")[0]
    with_v4 = address.removeprefix("::ffff:") if address.startswith("::ffff:") else address
    return not host or _overlaps(with_v4, host)
