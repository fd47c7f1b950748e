"""Server checks: host is loopback (unless allowed), port is free, or the URL is well formed."""

from __future__ import annotations

import errno
import ipaddress
import socket
from urllib.parse import urlsplit

from punie.config.models import ServerOptions


def is_loopback(host: str) -> bool | None:
    """True for a loopback address or a name resolving only to loopback; None if it does not resolve."""
    name = host.strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return None
    return bool(infos) and all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def port_problem(host: str, port: int) -> str | None:
    """Why mlx_lm.server could not listen on host:port, or None when it could (binds and closes)."""
    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        return f"host {host!r} does not resolve ({exc})"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # no SO_REUSEADDR: a port held by a listening server (or in TIME_WAIT) must fail here
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        try:
            sock.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return (f"port {port} on {host} is already in use (mlx_lm.server would print "
                        "'Address already in use' and hang)")
            if exc.errno == errno.EACCES:
                return f"no permission to listen on port {port} of {host}"
            if exc.errno == errno.EADDRNOTAVAIL:
                return f"address {host} is not an address of this machine"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def server_findings(server: ServerOptions) -> list[tuple[str, str, str, str]]:
    """Problems of the server options as (severity, code, key, message); an empty list when fine."""
    found: list[tuple[str, str, str, str]] = []
    if server.url:
        parts = urlsplit(server.url)
        try:
            port = parts.port
        except ValueError:
            found.append(("error", "url", "server.url", f"{server.url!r} has an invalid port"))
            return found
        if parts.scheme not in ("http", "https") or not parts.hostname:
            found.append(("error", "url", "server.url", f"{server.url!r} is not an http(s)://host[:port] URL"))
            return found
        del port
        if not server.allow_remote:
            loop = is_loopback(parts.hostname)
            if loop is None:
                found.append(("error", "url", "server.url", f"host {parts.hostname!r} does not resolve"))
            elif not loop:
                found.append(("error", "remote-host", "server.url",
                              f"{parts.hostname} is not a loopback address; set server.allow_remote = true "
                              "to use a remote server"))
        return found
    loop = is_loopback(server.host)
    if loop is None:
        found.append(("error", "host", "server.host", f"host {server.host!r} does not resolve"))
        return found
    if not loop and not server.allow_remote:
        found.append(("error", "remote-host", "server.host",
                      f"{server.host} is not a loopback address: mlx_lm.server has no authentication; "
                      "set server.allow_remote = true to expose it"))
    if problem := port_problem(server.host, server.port):
        found.append(("error", "port", "server.port", problem))
    return found
