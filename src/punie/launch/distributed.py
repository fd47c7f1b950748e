"""The pieces of an mlx-distributed launch (`punie.launch.backends.mlx_distributed` builds the plan).

Pure: mlx.launch's argv head, the rank script's arguments, the copy steps to each host (``ssh HOST
mkdir -p DIR``, then rsync or scp of each file; cp for local ranks when there are remote ones, so every
rank loads one path; argv lists only), the ``ssh`` wrapper that adds ``ssh_options`` to every ssh
(put first on mlx.launch's PATH, and given to rsync ``-e`` / scp ``-S``: nothing from the profile is
pasted into a local shell string). With side effects: the served model (the adapter fused and
verified, or an indexed view of a base without ``model.safetensors.index.json``: sharded_load needs
it; the model's own folder is never written), a free run of ring ports, writing the plan's files and
running its copy steps through the guarded runner.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

from punie.config.hosts import Hosts
from punie.config.models import MLX_LOCAL_HOST, ResolvedProfile
from punie.errors import ConfigError
from punie.launch.canary import ExpectedCanary
from punie.launch.dist_plan import CopyStep, WrittenFile
from punie.launch.mlx_flags import sampling_flags
from punie.paths import cache_dir

logger = logging.getLogger(__name__)

#: The rank script, in the installed package (copied to remote_dir for remote hosts).
RANK_SCRIPT = Path(__file__).with_name("mlx_dist_server.py")
INDEX_FILE = "model.safetensors.index.json"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


# --------------------------------------------------------------------------- pure pieces


def launcher_argv(python: str) -> list[str]:
    """mlx.launch as a command: its console script beside ``python``, else its main through ``python``."""
    script = Path(python).parent / "mlx.launch"
    if script.is_file():
        return [python, str(script)]
    return [python, "-c", "import sys; from mlx._distributed_utils.launch import main; sys.exit(main())"]


def remote_model_name(model: Path) -> str:
    """The model's directory name under ``remote_dir/models`` (safe in any shell and path)."""
    return _SAFE_NAME.sub("_", model.name) or "model"


def ssh_wrapper(python: str, ssh: str, options: list[str]) -> str:
    """An ``ssh`` that adds ``options``: a Python script (its data a JSON literal, never shell text)."""
    shebang = python if python and not any(c.isspace() for c in python) else "/usr/bin/env python3"
    return (f"#!{shebang}\n# Written by punie: ssh with server.distributed.ssh_options.\n"
            f"import os, sys\nARGV = {json.dumps([ssh, *options])}\nos.execv(ARGV[0], ARGV + sys.argv[1:])\n")


def copy_steps(hosts: Hosts, files: list[Path], dest: str, *, ssh: str, method: str) -> list[CopyStep]:
    """The commands that put ``files`` into ``dest`` on every host that needs them (argv lists).

    Remote hosts: ``ssh HOST mkdir -p -- DIR`` (``dest`` has only path-safe characters: the
    remote shell sees it as one word), then one rsync / scp of every file. Local ranks (only
    when there are remote ones, so that every rank loads the same path): mkdir and cp.
    """
    steps: list[CopyStep] = []
    names = [str(f) for f in files]
    seen: set[str] = set()
    for rank in hosts.ranks:
        if rank.ssh in seen:
            continue
        seen.add(rank.ssh)
        if rank.local:
            steps.append(CopyStep(host=rank.ssh, what=f"make {dest}", argv=("mkdir", "-p", "--", dest)))
            steps.append(CopyStep(host=rank.ssh, what=f"copy to {dest}", argv=("cp", "-L", "-p", *names, dest + "/"),
                                  files=tuple(names), target=dest))
            continue
        steps.append(CopyStep(host=rank.ssh, what=f"make {dest}",
                              argv=(ssh, rank.ssh, "mkdir", "-p", "--", shlex.quote(dest))))
        target = f"{rank.ssh}:{dest}/"
        if method == "rsync":
            argv = ("rsync", "-L", "-t", "--partial", "-e", ssh, *names, target)
        else:
            argv = ("scp", "-q", "-p", "-S", ssh, *names, target)
        steps.append(CopyStep(host=rank.ssh, what=f"copy to {dest}", argv=argv, files=tuple(names), target=dest))
    return steps


def server_script_args(resolved: ResolvedProfile, *, model: str, sharding: str) -> list[str]:
    """mlx_lm.server's arguments for every rank (only rank 0 binds ``--host``/``--port``)."""
    server = resolved.profile.server
    args = ["--model", model, "--host", server.host, "--port", str(server.port)]
    if sharding == "pipeline":
        args.append("--pipeline")
    return args + sampling_flags(server) + list(server.extra_args)


def planned_files(served: Path, base: Path) -> list[Path]:
    """The files of the served model, also before it is made (a dry run): an indexed view holds the
    base's files and the index; a fused model not made yet, what `mlx_lm fuse` writes."""
    if served.is_dir():
        return listing(served)
    if served == indexed_dir(base):
        return sorted({served / p.name for p in listing(base)} | {served / INDEX_FILE})
    return [served / name for name in ("config.json", "model.safetensors", INDEX_FILE, "tokenizer.json",
                                        "tokenizer_config.json")]


def listing(model_dir: Path) -> list[Path]:
    """The files of a model directory (flat, as mlx_lm writes it; symlinks are followed when copied)."""
    try:
        return [p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")]
    except OSError:
        return [model_dir / "config.json", model_dir / INDEX_FILE]


# --------------------------------------------------------------------------- an indexed view of a base


def _safetensors_names(path: Path) -> tuple[list[str], int]:
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
    names = [k for k in header if k != "__metadata__"]
    total = sum(int(v["data_offsets"][1]) - int(v["data_offsets"][0]) for k, v in header.items()
                if k != "__metadata__")
    return names, total


def index_json(model_dir: Path) -> str:
    """``model.safetensors.index.json`` for a model directory that has none (from the headers)."""
    weight_map: dict[str, str] = {}
    total = 0
    for file in sorted(model_dir.glob("*.safetensors")):
        names, size = _safetensors_names(file)
        total += size
        weight_map.update(dict.fromkeys(names, file.name))
    return json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                      indent=2) + "\n"


def indexed_dir(model_dir: Path) -> Path:
    """Where the indexed view of ``model_dir`` lives (Punie's cache, keyed by the model's path)."""
    import hashlib

    key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:20]
    return cache_dir() / "indexed" / f"{remote_model_name(model_dir)}-{key}"


def indexed_model(model_dir: Path, *, provision: bool = True) -> Path:
    """``model_dir`` if it has an index file, else a view of it with one: symlinks to its files and
    the index (sharded_load needs it; the model's own directory is never written)."""
    if (model_dir / INDEX_FILE).is_file():
        return model_dir
    view = indexed_dir(model_dir)
    if not provision:
        return view
    from punie.config.atomic import replace_dir

    wanted = index_json(model_dir)
    if (view / INDEX_FILE).is_file() and (view / INDEX_FILE).read_text() == wanted and all(
            (view / p.name).exists() for p in listing(model_dir)):
        return view
    work = view.with_name(view.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for item in listing(model_dir):
        (work / item.name).symlink_to(item.resolve())
    (work / INDEX_FILE).write_text(wanted)
    replace_dir(work, view)
    return view


# --------------------------------------------------------------------------- prepare (side effects)


def free_port_run(count: int, host: str = MLX_LOCAL_HOST, *, tries: int = 50) -> int:
    """A first port with ``count`` free ports from it on (the ring listens on port + rank)."""
    import socket

    from punie.net import free_port

    for _ in range(tries):
        start = free_port(host)
        if start + count > 65536:
            continue
        ok = True
        for port in range(start, start + count):
            with socket.socket() as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            return start
    raise ConfigError(f"no run of {count} free ports on {host} for the ring",
                      hint="set server.distributed.ring_port to a first port of free ones")


def served_model(resolved: ResolvedProfile, *, model: Path, adapter: Path | None,
                 expected: ExpectedCanary | None,
                 provision: bool, python: str) -> Path:
    """What the ranks load: the adapter fused into the base (verified by its canary), or the base
    with an index file. mlx_lm serves no adapter in distributed mode."""
    if adapter is not None:
        from punie.launch.fuse import profile_fused_model

        return profile_fused_model(resolved, model=model, adapter=adapter, expected=expected,
                                   provision=provision, python=python)
    return indexed_model(model, provision=provision)


def write_files(files: Sequence[WrittenFile]) -> None:
    """Write a plan's hostfile and ssh wrapper (atomically)."""
    from punie.config.atomic import write_atomic

    for f in files:
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(f.path, f.content)
        os.chmod(f.path, f.mode)


def run_copies(steps: Sequence[CopyStep], *, env: Mapping[str, str] | None = None) -> None:
    """Run a plan's copy steps in order, each through the guarded runner; LaunchFailed on the first
    that fails (naming the host and quoting its output)."""
    from punie.errors import LaunchFailed, LaunchReason
    from punie.launch.runner import run_to_end

    for step in steps:
        logger.info("[%s] %s: %s", step.host, step.what, shlex.join(step.argv))
        try:
            code, tail = run_to_end("copy", step.argv, env=dict(os.environ if env is None else env))
        except OSError as exc:
            raise LaunchFailed(LaunchReason.SERVER_FAILED, f"cannot {step.what} on {step.host}: {exc}",
                               hint="install it, or set server.distributed.copy_with") from None
        if code != 0:
            lines = "\n  ".join(tail[-6:])
            raise LaunchFailed(LaunchReason.SERVER_FAILED,
                               f"{step.what} on {step.host} failed (exit code {code}): {shlex.join(step.argv)}"
                               + (f"\n  {lines}" if lines else ""),
                               hint="check that ssh reaches the host without a password (ssh-copy-id), and "
                               "server.distributed.remote_dir / ssh_options")
