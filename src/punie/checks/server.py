"""Server checks: host is loopback (unless allowed), port is free, or the URL is well formed.

The rules themselves live in `punie.net` (one home, shared with the launch plan).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from punie.config.models import ServerOptions
from punie.net import is_loopback, port_problem, remote_host_problem

__all__ = ["is_loopback", "port_problem", "server_findings"]


def server_findings(server: ServerOptions) -> list[tuple[str, str, str, str]]:
    """Problems of the server options as (severity, code, key, message); an empty list when fine."""
    found: list[tuple[str, str, str, str]] = []
    if server.url:
        parts = urlsplit(server.url)
        try:
            parts.port  # noqa: B018 (raises on an invalid port)
        except ValueError:
            found.append(("error", "url", "server.url", f"{server.url!r} has an invalid port"))
            return found
        if parts.scheme not in ("http", "https") or not parts.hostname:
            found.append(("error", "url", "server.url", f"{server.url!r} is not an http(s)://host[:port] URL"))
            return found
        if problem := remote_host_problem(parts.hostname, server.allow_remote, what="server.url"):
            code = "url" if "does not resolve" in problem else "remote-host"
            found.append(("error", code, "server.url", problem))
        return found
    if is_loopback(server.host) is None:
        found.append(("error", "host", "server.host", f"host {server.host!r} does not resolve"))
        return found
    if problem := remote_host_problem(server.host, server.allow_remote):
        found.append(("error", "remote-host", "server.host", problem))
    if problem := port_problem(server.host, server.port):
        if "already in use" in problem:
            problem += " (mlx_lm.server would print 'Address already in use' and hang)"
        found.append(("error", "port", "server.port", problem))
    return found
