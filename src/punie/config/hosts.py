"""The ranks of a distributed profile (``server.distributed``): hosts listed, or mlx.launch's hostfile.

The hostfile format is mlx.launch's own (``mlx._distributed_utils.common.Hostfile.from_file``):
a JSON object ``{"backend": ..., "envs": [...], "hosts": [{"ssh": ..., "ips": [...], "rdma": [...]}]}``
or just the list of hosts; each entry is one rank, rank 0 first. ``ssh`` is the name ssh reaches
the host by; mlx.launch runs a rank without ssh only when it is exactly ``127.0.0.1``. The ring
backend needs ``ips`` (an entry given as an IP address gets itself as its ip, as in ``--hosts``).
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from punie.config.models import MLX_LOCAL_HOST, DistributedHost, DistributedOptions
from punie.errors import ConfigError


@dataclass(frozen=True)
class Rank:
    """One rank: its number, the host's ssh name, the addresses the ring uses, and its RDMA devices."""

    rank: int
    ssh: str
    ips: tuple[str, ...] = ()
    rdma: tuple[Any, ...] = ()

    @property
    def local(self) -> bool:
        """Run on this machine without ssh (mlx.launch's own rule)."""
        return self.ssh == MLX_LOCAL_HOST


@dataclass(frozen=True)
class Hosts:
    """The ranks, plus the backend and environment a hostfile may name (``backend`` None: not named)."""

    ranks: tuple[Rank, ...]
    backend: str | None = None
    envs: tuple[str, ...] = ()
    hostfile: str | None = None  # the file they were read from
    problems: tuple[str, ...] = field(default=())  # well-formed but dubious (said as warnings)

    @property
    def remote(self) -> tuple[Rank, ...]:
        return tuple(r for r in self.ranks if not r.local)


def _ips_of(name: str) -> tuple[str, ...]:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return ()
    return (name,)


def _word(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or value.startswith("-") or any(
            c.isspace() or ord(c) < 32 or ord(c) == 127 for c in value):
        raise ValueError(f"{what} {value!r} is not a host name or address (no spaces, no control characters, "
                         "no leading '-')")
    return value


def parse_hostfile(data: object) -> Hosts:
    """mlx.launch's hostfile (parsed JSON) as ranks; ValueError saying what is wrong (as mlx.launch would
    refuse it, and also entries it would hand unchecked to ssh)."""
    backend, envs = None, ()
    if isinstance(data, dict):
        if "hosts" not in data:
            raise ValueError("no \"hosts\" list")
        backend = data.get("backend") or None
        if backend is not None and not isinstance(backend, str):
            raise ValueError("\"backend\" must be a string")
        raw_envs = data.get("envs", [])
        if not isinstance(raw_envs, list) or not all(isinstance(e, str) for e in raw_envs):
            raise ValueError("\"envs\" must be a list of \"NAME=VALUE\" strings")
        envs = tuple(raw_envs)
        entries = data["hosts"]
    elif isinstance(data, list):
        entries = data
    else:
        raise ValueError("expected an object with \"hosts\", or a list of hosts")
    if not isinstance(entries, list) or not entries:
        raise ValueError("\"hosts\" must be a non-empty list")
    ranks = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "ssh" not in entry:
            raise ValueError(f"hosts[{index}] must be an object with \"ssh\"")
        ssh = _word(entry["ssh"], f"hosts[{index}].ssh")
        ips = entry.get("ips", [])
        if not isinstance(ips, list):
            raise ValueError(f"hosts[{index}].ips must be a list")
        rdma = entry.get("rdma", [])
        if not isinstance(rdma, list):
            raise ValueError(f"hosts[{index}].rdma must be a list")
        ranks.append(Rank(index, ssh, tuple(_word(ip, f"hosts[{index}].ips") for ip in ips), tuple(rdma)))
    return Hosts(tuple(ranks), backend, envs)


def read_hostfile(path: Path) -> Hosts:
    """The hostfile at ``path``; ConfigError naming the file when it cannot be read or is malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"hostfile {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"hostfile {path} cannot be read: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not JSON: {exc.msg}") from None
    try:
        hosts = parse_hostfile(data)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return Hosts(hosts.ranks, hosts.backend, hosts.envs, hostfile=str(path))


def hostfile_path(options: DistributedOptions, project_dir: str) -> Path | None:
    """The hostfile, relative paths taken from the project."""
    if options.hostfile is None:
        return None
    path = Path(options.hostfile).expanduser()
    return path if path.is_absolute() else Path(project_dir) / path


def profile_hosts(options: DistributedOptions, project_dir: str) -> Hosts:
    """The ranks of ``server.distributed``: its hostfile, its hosts, or ``ranks`` ranks on this machine."""
    path = hostfile_path(options, project_dir)
    if path is not None:
        return read_hostfile(path)
    if options.hosts:
        ranks = []
        for index, host in enumerate(options.hosts):
            if isinstance(host, DistributedHost):
                ranks.append(Rank(index, host.ssh, tuple(host.ips) or _ips_of(host.ssh)))
            else:
                ranks.append(Rank(index, host, _ips_of(host)))
        return Hosts(tuple(ranks))
    return Hosts(tuple(Rank(i, MLX_LOCAL_HOST, (MLX_LOCAL_HOST,)) for i in range(options.ranks)))


def hostfile_json(hosts: Hosts, backend: str, envs: tuple[str, ...] = ()) -> str:
    """The hostfile mlx.launch reads for ``hosts`` (its own format, `parse_hostfile` reads it back)."""
    return json.dumps({"backend": backend, "envs": list(envs),
                       "hosts": [{"ssh": r.ssh, "ips": list(r.ips), "rdma": list(r.rdma)} for r in hosts.ranks]},
                      indent=2) + "\n"
