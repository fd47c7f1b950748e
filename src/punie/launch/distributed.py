"""Launch plans for ``server.backend = "mlx-distributed"``: one model served by several mlx ranks.

The server process is ``mlx.launch`` (mlx's own launcher, ``mlx._distributed_utils.launch``), which
starts one rank per host entry running Punie's rank script (`punie.launch.mlx_dist_server`, a
script path: mlx.launch does not accept ``-m``) with ``--python``; rank 0 serves HTTP. What each
host runs, as mlx.launch builds it:

- a host named ``127.0.0.1``: ``bash -c 'cd ...; export ...; exec PYTHON SCRIPT ARGS'``, a child
  of mlx.launch in its process group (so the orphan guard's group kill reaches it);
- any other host: ``ssh -tt -o LogLevel=QUIET HOST 'the same script'``: the remote rank runs
  under a pseudo-terminal, so when the local ssh dies (however mlx.launch or Punie die) sshd
  hangs the terminal up and the rank gets SIGHUP.

mlx_lm refuses adapters in distributed mode: an adapter is served fused (`punie.launch.fuse`,
verified by its canary before, and probed again at readiness); a base without
``model.safetensors.index.json`` (sharded_load needs it) is served from an indexed view
(`indexed_model`). With remote hosts, the model and the script are copied to
``server.distributed.remote_dir`` on every host (local ranks too, so every rank loads one path):
``ssh HOST mkdir -p DIR`` then rsync or scp of each file, argv lists only. ``ssh_options`` reach
every ssh through a generated ``ssh`` wrapper put first on mlx.launch's PATH (and given to rsync
``-e`` / scp ``-S``): nothing from the profile is ever pasted into a local shell string.

`build_distributed_plan` is pure; `prepare_distributed` resolves, fuses, finds ports, writes the
hostfile and the wrapper and copies, then builds the plan (a dry run only computes it).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import struct
import sys
from collections.abc import Mapping
from pathlib import Path

from punie.config.hosts import Hosts, hostfile_json, profile_hosts
from punie.config.models import MLX_LOCAL_HOST, ResolvedProfile
from punie.errors import ConfigError
from punie.launch.blas import BlasChoice, hint_text, preload_env
from punie.launch.canary import ExpectedCanary
from punie.launch.dist_plan import CopyStep, DistributedPart, RankPlan, WrittenFile
from punie.launch.plan import LaunchPlan, RestartPolicy, default_hf_hub_cache, refuse_remote
from punie.net import connect_host
from punie.paths import cache_dir, state_dir

logger = logging.getLogger(__name__)

#: The rank script, in the installed package (copied to remote_dir for remote hosts).
RANK_SCRIPT = Path(__file__).with_name("mlx_dist_server.py")
INDEX_FILE = "model.safetensors.index.json"
#: mlx.launch's log lines (stderr, colored) that end the group: a rank exited or was killed.
DIST_FATAL_PATTERNS = {"Node with rank": "server-died"}
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
            steps.append(CopyStep(host=rank.ssh, what=f"copy to {dest}", argv=("cp", "-L", "-p", *names, dest + "/")))
            continue
        steps.append(CopyStep(host=rank.ssh, what=f"make {dest}",
                              argv=(ssh, rank.ssh, "mkdir", "-p", "--", shlex.quote(dest))))
        target = f"{rank.ssh}:{dest}/"
        if method == "rsync":
            argv = ("rsync", "-L", "-t", "--partial", "-e", ssh, *names, target)
        else:
            argv = ("scp", "-q", "-p", "-S", ssh, *names, target)
        steps.append(CopyStep(host=rank.ssh, what=f"copy to {dest}", argv=argv))
    return steps


def server_script_args(resolved: ResolvedProfile, *, model: str, sharding: str) -> list[str]:
    """mlx_lm.server's arguments for every rank (only rank 0 binds ``--host``/``--port``)."""
    server = resolved.profile.server
    args = ["--model", model, "--host", server.host, "--port", str(server.port)]
    if sharding == "pipeline":
        args.append("--pipeline")
    if server.temperature is not None:
        args += ["--temp", repr(server.temperature)]
    if server.top_p is not None:
        args += ["--top-p", repr(server.top_p)]
    if server.max_tokens is not None:
        args += ["--max-tokens", str(server.max_tokens)]
    if server.chat_template_args:
        args += ["--chat-template-args", json.dumps(server.chat_template_args, sort_keys=True)]
    return args + list(server.extra_args)


def build_distributed_plan(
    resolved: ResolvedProfile,
    *,
    model_path: Path,
    hosts: Hosts,
    ring_port: int | None,
    python: str = sys.executable,
    log_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    blas: BlasChoice | None = None,
    ssh: str | None = None,
) -> LaunchPlan:
    """The plan of ``mlx.launch`` serving ``model_path`` (an indexed, adapter-free model) on ``hosts``.

    Pure: reads no files (``ssh``: the real ssh's path, default "ssh"), starts nothing.
    ``ring_port``: the first port of the ring (or jaccl's coordinator port); None leaves
    mlx.launch's default.
    """
    env = os.environ if environ is None else environ
    remote_bind = refuse_remote(resolved)
    profile = resolved.profile
    server, options = profile.server, profile.server.distributed
    project = resolved.project_dir
    logs = Path(log_dir) if log_dir is not None else state_dir(project) / "logs"
    work = state_dir(project) / "dist" / resolved.name
    backend = options.backend if options.hostfile is None or hosts.backend is None else hosts.backend
    rank_python = options.python or python
    remote = hosts.remote
    files: list[WrittenFile] = []
    real_ssh = ssh or "ssh"
    ssh_cmd = real_ssh
    path_env: dict[str, str] = {}
    if options.ssh_options and remote:
        wrapper = work / "bin" / "ssh"
        files.append(WrittenFile(path=str(wrapper), what="ssh with server.distributed.ssh_options",
                                 content=ssh_wrapper(python, real_ssh, options.ssh_options), mode=0o755))
        ssh_cmd = str(wrapper)
        path_env = {"PATH": os.pathsep.join([str(wrapper.parent), env.get("PATH", os.defpath)])}
    copies: list[CopyStep] = []
    if remote:
        if options.remote_dir is None:
            raise ConfigError(f"{len(remote)} rank(s) run on other hosts ({', '.join(r.ssh for r in remote)}): "
                              "set the directory the model and the rank script are copied to there",
                              where=f"profiles.{resolved.name}.server.distributed.remote_dir",
                              hint="e.g. remote_dir = \"/tmp/punie-dist\" (an absolute path on every host)")
        model = f"{options.remote_dir}/models/{remote_model_name(model_path)}"
        script = f"{options.remote_dir}/{RANK_SCRIPT.name}"
        weights = sorted(p for p in _listing(model_path))
        copies += copy_steps(hosts, [RANK_SCRIPT], options.remote_dir, ssh=ssh_cmd, method=options.copy_with)
        copies += copy_steps(hosts, weights, model, ssh=ssh_cmd, method=options.copy_with)
    else:
        model, script = str(model_path), str(RANK_SCRIPT)
    launch = [*launcher_argv(python), "--backend", backend]
    hostfile = None
    if all(r.local for r in hosts.ranks) and options.hostfile is None:
        launch += ["--hosts", MLX_LOCAL_HOST, "-n", str(len(hosts.ranks))]
    elif options.hostfile is not None and hosts.hostfile is not None and not options.hosts:
        hostfile = hosts.hostfile
        launch += ["--hostfile", hostfile]
    else:
        hostfile = str(work / "hostfile.json")
        files.append(WrittenFile(path=hostfile, what="mlx.launch hostfile", content=hostfile_json(hosts, backend)))
        launch += ["--hostfile", hostfile]
    if ring_port is not None:
        launch += ["--starting-port", str(ring_port)]
    rank_env = {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **options.env}
    for name, value in rank_env.items():
        launch += ["--env", f"{name}={value}"]
    launch += ["--python", rank_python]
    script_args = server_script_args(resolved, model=model, sharding=options.sharding)
    launch += ["--", script, *script_args]
    hub_cache = default_hf_hub_cache(env)
    server_env = {"HF_HUB_CACHE": hub_cache, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **path_env}
    if blas is not None:
        server_env |= preload_env(blas, env)  # local ranks inherit mlx.launch's environment
    rank0 = hosts.ranks[0]
    if rank0.local:
        root = f"http://{connect_host(server.host)}:{server.port}"
    else:
        address = rank0.ips[0] if rank0.ips else rank0.ssh
        root = f"http://{connect_host(address)}:{server.port}"
    ranks = tuple(
        RankPlan(rank=r.rank, host=r.ssh, ips=r.ips, local=r.local,
                 via=() if r.local else (ssh_cmd, "-tt", "-o", "LogLevel=QUIET", r.ssh),
                 argv=(rank_python, script, *script_args))
        for r in hosts.ranks)
    part = DistributedPart(
        backend=backend, sharding=options.sharding, ring_port=ring_port, python=rank_python, script=script,
        model=model, source_model=str(model_path), hostfile=hostfile, ranks=ranks, copies=tuple(copies),
        files=tuple(files), rank0_local=rank0.local,
    )
    base_url = root + "/v1"
    agent_argv = (
        python, "-m", "punie", "agent", "--base-url", base_url, "--options", profile.agent.model_dump_json(),
        "--profile", resolved.name, *(("--config", resolved.config_path) if resolved.config_path else ()), "--warm",
    )
    return LaunchPlan(
        profile=resolved.name, project_dir=str(project), model=model, adapter=None,
        server_argv=tuple(launch), server_env=server_env, host=server.host if rank0.local else
        (rank0.ips[0] if rank0.ips else rank0.ssh), port=server.port, server_url=root, base_url=base_url,
        agent_argv=agent_argv, cwd=str(project), server_log=str(logs / f"{resolved.name}-server.log"),
        agent_log=str(logs / f"{resolved.name}-agent.log"), ensure_dirs=(str(logs), hub_cache),
        ready_timeout=server.ready_timeout,
        restart=RestartPolicy(mode=server.restart, max_restarts=server.max_restarts, backoff=server.restart_backoff),
        liveness_interval=server.liveness_interval, liveness_failures=server.liveness_failures,
        remote=remote_bind, idle_unload=server.idle_unload, backend="mlx-distributed",
        fatal_patterns=DIST_FATAL_PATTERNS,
        blas=blas.path if blas is not None else None, blas_note=blas.reason if blas is not None else None,
        blas_hint=hint_text(blas) if blas is not None else None, distributed=part,
    )


def _listing(model_dir: Path) -> list[Path]:
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
            (view / p.name).exists() for p in _listing(model_dir)):
        return view
    work = view.with_name(view.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for item in _listing(model_dir):
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


def write_files(part: DistributedPart) -> None:
    """Write the plan's hostfile and ssh wrapper (atomically)."""
    from punie.config.atomic import write_atomic

    for f in part.files:
        Path(f.path).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(f.path, f.content)
        os.chmod(f.path, f.mode)


def run_copies(part: DistributedPart, *, env: Mapping[str, str] | None = None) -> None:
    """Run the plan's copy steps in order, each through the guarded runner; LaunchFailed on the first
    that fails (naming the host and quoting its output)."""
    from punie.errors import LaunchFailed, LaunchReason
    from punie.launch.runner import run_to_end

    for step in part.copies:
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


def prepare_distributed(
    resolved: ResolvedProfile,
    *,
    model: Path,
    adapter: Path | None,
    canary: ExpectedCanary | None,
    provision: bool = True,
    python: str = sys.executable,
    log_dir: Path | None = None,
) -> LaunchPlan:
    """From the checked profile's resolved model, adapter and canary (`punie.launch.prepare`): fuse the
    adapter (verified), pick the ring's ports, build the plan; for a real run (``provision``) also write
    the hostfile and ssh wrapper and copy the model to the remote hosts."""
    from punie.launch.blas import find_blas

    if resolved.profile.server.url:
        raise ConfigError("server.url names a running server: backend mlx-distributed starts one",
                          where=f"profiles.{resolved.name}.server.url",
                          hint="remove server.url, or use backend = \"mlx\" to talk to a running server")
    options = resolved.profile.server.distributed
    hosts = profile_hosts(options, resolved.project_dir)
    served = served_model(resolved, model=model, adapter=adapter, expected=canary, provision=provision,
                          python=python)
    backend = hosts.backend if options.hostfile and hosts.backend else options.backend
    ring_port = options.ring_port
    if ring_port is None and backend in ("ring", "jaccl", "jaccl-ring"):
        ring_port = free_port_run(len(hosts.ranks) if backend == "ring" else 1)
    blas = find_blas(resolved.profile.server.blas)
    plan = build_distributed_plan(resolved, model_path=served, hosts=hosts, ring_port=ring_port, python=python,
                                  log_dir=log_dir, blas=blas, ssh=shutil.which("ssh") or "ssh")
    if canary is not None:
        plan = plan.model_copy(update={"canary": canary})
    if provision and plan.distributed is not None:
        write_files(plan.distributed)
        run_copies(plan.distributed)
    return plan
