"""Checks of a ``server.backend = "mlx-distributed"`` profile, before anything starts.

The ranks (hosts listed, or the hostfile readable and well formed as mlx.launch reads it), what
each backend of mlx.launch needs (ring: an address per rank; jaccl: an RDMA device per peer;
mpi: mpirun), remote hosts (remote_dir, ssh, rsync), the ring's ports on this machine, and
whether mlx_lm's sharded_load can split the model over the ranks (`punie.checks.sharding`).
The model's index file is made at launch when missing (the adapter fused, or an indexed view
of the base), so only its absence in a model that cannot get one would be an error.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from punie.checks.sharding import check_sharding
from punie.config.hosts import Hosts, profile_hosts
from punie.config.models import ResolvedProfile
from punie.errors import ConfigError, PunieError
from punie.net import is_loopback, port_problem

Item = tuple[str, str, str, str]  # (severity, code, key, message)
_KEY = "server.distributed"
#: Findings about the index file: made at launch (fused, or an indexed view), not the user's to fix.
_MADE_AT_LAUNCH = {"no-index"}


def distributed_items(resolved: ResolvedProfile, *, has_adapter: bool,
                      strict: bool = False) -> tuple[list[Item], list[str]]:
    """(problems, passed lines) of a distributed profile's server.distributed options (its backend's
    extra rules, `punie.checks.rules`)."""
    profile = resolved.profile
    model_path = _model_path(resolved)
    options = profile.server.distributed
    items: list[Item] = []
    passed: list[str] = []
    where_hosts = f"{_KEY}.hostfile" if options.hostfile else f"{_KEY}.hosts"
    if profile.server.url:
        items.append(("error", "distributed-url", "server.url",
                      "backend mlx-distributed starts its own ranks: server.url cannot be set"))
    try:
        hosts = profile_hosts(options, resolved.project_dir)
    except ConfigError as exc:
        items.append(("error", "hostfile", f"{_KEY}.hostfile", exc.message))
        return items, passed
    backend = hosts.backend if options.hostfile and hosts.backend else options.backend
    items += _backend_items(hosts, backend, where_hosts)
    items += _remote_items(resolved, hosts)
    items += _port_items(resolved, hosts, backend, strict=strict)
    ranks = len(hosts.ranks)
    if model_path is not None:
        findings = [f for f in check_sharding(model_path, options.sharding, ranks) if f.code not in _MADE_AT_LAUNCH]
        if has_adapter and profile.fuse.bits is None:  # the fused model is de-quantized: no group rule
            findings = [f for f in findings if f.code != "tensor-quantized-split"]
        for f in findings:
            items.append((f.severity, f"sharding-{f.code}", f"{_KEY}.sharding", f"{f.where}: {f.message}"))
        if not findings:
            made = "the adapter fused" if has_adapter else "the base"
            passed.append(f"sharding: {made} splits over {ranks} rank(s) by {options.sharding}")
        if has_adapter:
            passed.append("index: the fused model gets model.safetensors.index.json (mlx_lm refuses adapters "
                          "in distributed mode: the adapter is served fused)")
        elif (model_path / "model.safetensors.index.json").is_file():
            passed.append("index: model.safetensors.index.json present")
        else:
            passed.append("index: none in the model; an indexed view of it is made at launch (sharded_load needs one)")
    if not any(severity == "error" for severity, *_ in items):
        where = ", ".join(sorted({r.ssh for r in hosts.ranks}))
        passed.append(f"ranks: {ranks} on {where} ({backend})")
    return items, passed


def _model_path(resolved: ResolvedProfile) -> Path | None:
    """The base model's directory (the check said what is wrong with it, if anything: None then)."""
    from punie.weights.resolve import resolve_model

    if not resolved.profile.model:
        return None
    try:
        return resolve_model(resolved.profile.model, resolved.project_dir)
    except (PunieError, OSError):
        return None


def _backend_items(hosts: Hosts, backend: str, key: str) -> list[Item]:
    items: list[Item] = []
    if backend not in ("ring", "jaccl", "jaccl-ring", "mpi"):
        items.append(("error", "distributed-backend", key, f"the hostfile names backend {backend!r}: "
                      "mlx.launch runs ring, jaccl, jaccl-ring or mpi here (nccl is for CUDA)"))
        return items
    if backend == "ring" and len(hosts.ranks) > 1:
        missing = [r for r in hosts.ranks if not r.ips]
        if missing:
            items.append(("error", "ring-ips", key, f"the ring backend needs an address for every rank; "
                          f"rank {missing[0].rank} ({missing[0].ssh}) has none: give it ips = [\"ADDRESS\"]"))
    if backend.startswith("jaccl"):
        if not hosts.ranks[0].ips:
            items.append(("error", "jaccl-coordinator", key, "jaccl: rank 0 needs an address the others reach"))
        n = len(hosts.ranks)
        if not all(len(r.rdma) == n and r.rdma[r.rank] is None for r in hosts.ranks):
            items.append(("error", "jaccl-rdma", key, f"jaccl: every host needs \"rdma\", a list of {n} devices "
                          "(null for itself), as `mlx.distributed_config` writes it"))
    if backend == "mpi" and shutil.which("mpirun") is None:
        items.append(("error", "mpirun", f"{_KEY}.backend", "backend mpi needs mpirun on PATH (Open MPI)"))
    return items


def _remote_items(resolved: ResolvedProfile, hosts: Hosts) -> list[Item]:
    options = resolved.profile.server.distributed
    server = resolved.profile.server
    remote = hosts.remote
    items: list[Item] = []
    if not hosts.ranks[0].local and is_loopback(server.host):
        items.append(("error", "rank0-remote", "server.host",
                      f"rank 0 ({hosts.ranks[0].ssh}) serves HTTP on another machine, but server.host is "
                      f"{server.host} (loopback there): list this machine (127.0.0.1) first, or bind an address "
                      "this machine reaches (server.host, allow_remote)"))
    if not remote:
        return items
    names = ", ".join(sorted({r.ssh for r in remote}))
    if options.remote_dir is None:
        items.append(("error", "remote-dir", f"{_KEY}.remote_dir", f"ranks on {names} need the model copied: "
                      "set remote_dir, an absolute directory on those hosts"))
    elif any(not (c.isalnum() or c in "._/+-") for c in options.remote_dir):
        items.append(("error", "remote-dir", f"{_KEY}.remote_dir", f"{options.remote_dir!r}: use only letters, "
                      "digits and ._/+- (the remote shell sees it)"))
    if shutil.which("ssh") is None:
        items.append(("error", "no-ssh", f"{_KEY}.hosts", f"ranks on {names} are reached by ssh, which is not "
                      "installed here"))
    if options.copy_with == "rsync" and shutil.which("rsync") is None:
        items.append(("error", "no-rsync", f"{_KEY}.copy_with", "rsync is not installed here: install it, or set "
                      "copy_with = \"scp\""))
    return items


def _port_items(resolved: ResolvedProfile, hosts: Hosts, backend: str, *, strict: bool) -> list[Item]:
    options = resolved.profile.server.distributed
    if options.ring_port is None or backend != "ring":
        return []
    items: list[Item] = []
    for offset in range(len(hosts.ranks)):
        rank = hosts.ranks[offset]
        if not rank.local or not rank.ips:
            continue
        port = options.ring_port + offset
        if port > 65535:
            items.append(("error", "ring-port", f"{_KEY}.ring_port", f"rank {offset} would listen on port {port}"))
            continue
        if problem := port_problem(rank.ips[0], port):
            severity = "error" if strict or "already in use" not in problem else "warning"
            items.append((severity, "ring-port", f"{_KEY}.ring_port",
                          f"rank {offset}'s ring port: {problem}"))
    return items
