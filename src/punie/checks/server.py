"""Server checks: host is loopback (unless allowed), port is free, or the URL is well formed.

The rules themselves live in `punie.net` (one home, shared with the launch plan).
A busy port is state, not configuration: `punie check` and `punie up --dry-run` warn
(an error with ``--strict``), and only `punie up` refuses, when it binds. When the
listener is Punie's own `punie up` of the same profile, the warning says so with its pid.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from punie import envvars
from punie.config.models import ServerOptions
from punie.limits import SMALL_FILE_BYTES
from punie.net import is_loopback, listener_pids, port_problem, process_cmdline, remote_host_problem
from punie.procfs import parent_pid

__all__ = ["is_loopback", "port_problem", "server_findings"]


def server_findings(server: ServerOptions, *, profile: str | None = None,
                    strict: bool = False) -> list[tuple[str, str, str, str]]:
    """Problems of the server options as (severity, code, key, message); an empty list when fine.

    A port something listens on is a warning (``strict``: an error), naming the listener.
    """
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
        severity = "error"
        if "already in use" in problem:
            severity = "error" if strict else "warning"
            owner = port_owner(server.host, server.port, profile)
            problem += f": {owner}" if owner else ""
            problem += " (`punie up` refuses to start on a busy port; mlx_lm.server would hang on it)"
        found.append((severity, "port", "server.port", problem))
    return found


#: How many ancestors of a listener are looked at for the `punie up` that started it.
_MAX_ANCESTORS = 32


def port_owner(host: str, port: int, profile: str | None) -> str | None:
    """Who listens on ``host:port``: Punie's own `punie up` of ``profile`` (with its pid), or
    another process (pid and command), or None when /proc cannot tell."""
    pids = listener_pids(port, host)
    for pid in pids:
        current: int | None = pid
        for _ in range(_MAX_ANCESTORS):
            if current is None or current <= 1:
                break
            if profile is not None and is_punie_up(process_cmdline(current), profile, _environ_profile(current)):
                server = "" if current == pid else f"; the server is pid {pid}"
                return f"Punie's own `punie up {profile}` already runs this profile (pid {current}{server})"
            current = parent_pid(current)
    if pids:
        argv = process_cmdline(pids[0])
        shown = _printable(" ".join(argv))[:120] or "?"
        return f"pid {pids[0]} listens there ({shown})"
    return None


def is_punie_up(argv: list[str], profile: str, env_profile: str | None = None) -> bool:
    """Whether ``argv`` is `punie up` of ``profile`` (named, in a --group list, or by PUNIE_PROFILE)."""
    if not argv:
        return False
    names = [Path(a).name for a in argv[:3]]
    punie = "punie" in names or any(argv[i] == "-m" and argv[i + 1] in ("punie", "punie.cli")
                                    for i in range(min(len(argv) - 1, 4)))
    if not punie or "up" not in argv:
        return False
    rest = argv[argv.index("up") + 1:]
    positional = [a for i, a in enumerate(rest) if not a.startswith("-") and (i == 0 or rest[i - 1] not in _VALUED)]
    if profile in positional:
        return True
    for i, arg in enumerate(rest):
        value = rest[i + 1] if arg == "--group" and i + 1 < len(rest) else arg.partition("=")[2] \
            if arg.startswith("--group=") else None
        if value is not None and profile in value.split(","):
            return True
    return not positional and env_profile == profile


_VALUED = frozenset({"--format", "--grace", "--group", "--set", "-s", "--config", "-c"})


def _environ_profile(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            raw = fh.read(SMALL_FILE_BYTES)
    except OSError:
        return None
    for item in raw.split(b"\0"):
        if item.startswith(f"{envvars.PROFILE}=".encode()):
            return item.split(b"=", 1)[1].decode("utf-8", "replace")
    return None


def _printable(text: str) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)
