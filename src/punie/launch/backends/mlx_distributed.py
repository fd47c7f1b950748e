"""The mlx-distributed backend: one model served by several mlx ranks, started by ``mlx.launch``.

``server.backend = "mlx-distributed"`` (`punie.config.models.DistributedOptions`). The server process
the supervisor starts and watches is mlx.launch (mlx's own launcher), which starts one rank per host
entry running Punie's rank script (`punie.launch.mlx_dist_server`, passed by path: mlx.launch does not
accept ``-m``); rank 0 serves HTTP. What runs where, as mlx.launch builds it:

- a host named ``127.0.0.1``: ``bash -c 'cd ...; export ...; exec PYTHON SCRIPT ARGS'``, a child of
  mlx.launch in its process group: the supervisor's group stop and the orphan guard's group kill reach
  it (a SIGKILLed `punie up` leaves no rank: tests/launch/test_mlx_distributed_mlx.py);
- any other host: ``ssh -tt -o LogLevel=QUIET HOST 'the same script'``: the remote rank runs under a
  pseudo-terminal, so when the local ssh client dies (with mlx.launch's group, however `punie up`
  ends) sshd hangs the terminal up and the rank dies of SIGHUP (tests/launch/test_mlx_distributed_ssh.py).
  No stop command is needed.

A rank that exits makes mlx.launch stop the others and print ``Node with rank N exited with code C``:
that line ends the group (`fatal_patterns`), named in the failure; ``[server.restart]`` restarts it.

mlx_lm refuses adapters in distributed mode: the adapter is served fused (`punie.launch.fuse`, its
canary verified before, and probed again at readiness on the fused model); a base without
``model.safetensors.index.json`` is served from an indexed view (`punie.launch.distributed`). With
remote hosts the model and the rank script are copied to ``remote_dir`` on every host first.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from punie import envvars
from punie.checks.rules import CheckRules
from punie.config.hosts import Hosts, hostfile_json, profile_hosts
from punie.config.models import MLX_LOCAL_HOST, ResolvedProfile
from punie.errors import ConfigError
from punie.launch.backends.base import Backend, BackendPart, FileCopy, HostCommand, LaunchInputs
from punie.launch.blas import BlasChoice, hint_text, preload_env
from punie.launch.dist_plan import CopyStep, RankPlan, WrittenFile
from punie.launch.distributed import (
    RANK_SCRIPT,
    copy_steps,
    free_port_run,
    launcher_argv,
    listing,
    planned_files,
    remote_model_name,
    run_copies,
    served_model,
    server_script_args,
    ssh_wrapper,
    write_files,
)
from punie.launch.plan import LaunchPlan, common_plan
from punie.launch.resolve import expected_canary
from punie.net import connect_host
from punie.paths import state_dir

ENGINE = "mlx.launch"
NAME = "mlx-distributed"


class MlxDistributedPart(BackendPart):
    """The mlx-distributed part of a plan: every rank, every copy, every file written."""

    name: Literal["mlx-distributed"] = "mlx-distributed"
    engine: ClassVar[str] = ENGINE
    dist_backend: str = Field("ring", description="mlx.launch --backend (ring, jaccl, jaccl-ring, mpi)")
    sharding: Literal["tensor", "pipeline"] = "tensor"
    ring_port: int | None = Field(None, description="first port of the ring (rank r listens on ring_port + r)")
    python: str = ""
    script: str = Field("", description="the rank script's path on every host")
    model: str = Field("", description="the model's path on every host")
    source_model: str = Field("", description="the model directory here (copied to remote hosts)")
    hostfile: str | None = None
    ranks: tuple[RankPlan, ...] = ()
    steps: tuple[CopyStep, ...] = Field((), description="commands run here before mlx.launch (mkdir, copies)")
    files: tuple[WrittenFile, ...] = ()
    rank0_local: bool = True
    blas: str | None = None
    blas_note: str | None = None
    blas_hint: str | None = None

    def describe(self) -> list[str]:
        blas = f"{self.blas} (preloaded, local ranks)" if self.blas else f"bundled ({self.blas_note})"
        lines = [f"  blas:    {blas}",
                 f"  ranks:   {len(self.ranks)} ({self.dist_backend}, {self.sharding} sharding"
                 + (f", ring ports {self.ring_port}-{self.ring_port + len(self.ranks) - 1}"
                    if self.ring_port and self.dist_backend == "ring" else "") + ")"]
        lines += [f"  write:   {f.path} ({f.what})" for f in self.files]
        for r in self.ranks:
            where = "local" if r.local else f"ssh {r.host}"
            lines.append(f"  rank {r.rank}:  [{where}] " + (f"{shlex.join(r.via)} " if r.via else "")
                         + shlex.join(r.argv) + ("  (serves HTTP)" if r.rank == 0 else ""))
        return lines

    def commands(self) -> tuple[HostCommand, ...]:
        """The copy steps (run here, before mlx.launch), then what each rank runs on its host."""
        return (*(HostCommand(argv=s.argv) for s in self.steps),
                *(HostCommand(host=None if r.local else r.host, argv=r.argv) for r in self.ranks))

    def copies(self) -> tuple[FileCopy, ...]:
        """Every file copied to a host: the rank script and the model's files, to their path there."""
        out = []
        for step in self.steps:
            if step.files:
                out += [FileCopy(source=f, host=step.host, target=step.target) for f in step.files]
        return tuple(out)


def build_distributed_plan(
    resolved: ResolvedProfile,
    *,
    model_path: Path,
    hosts: Hosts,
    ring_port: int | None,
    python: str = sys.executable,
    remote: bool = False,
    log_dir: Path | None = None,
    environ: Mapping[str, str] | None = None,
    blas: BlasChoice | None = None,
    ssh: str | None = None,
    model_files: Sequence[Path] | None = None,
    cpus: int | None = None,
) -> LaunchPlan:
    """The plan of ``mlx.launch`` serving ``model_path`` (an indexed, adapter-free model) on ``hosts``.

    Pure but for listing ``model_path`` when ``model_files`` (what is copied) is not given
    (``ssh``: the real ssh's path, default "ssh"); starts nothing. ``cpus``: this machine's cores,
    shared by its ranks' OpenBLAS threads.
    ``ring_port``: the first port of the ring (or jaccl's coordinator port); None: mlx.launch's default.
    """
    env = os.environ if environ is None else environ
    profile = resolved.profile
    server, options = profile.server, profile.server.distributed
    work = state_dir(resolved.project_dir) / "dist" / resolved.name
    backend = hosts.backend if options.hostfile and hosts.backend else options.backend
    rank_python = options.python or python
    others = hosts.remote
    files: list[WrittenFile] = []
    ssh_cmd = ssh or "ssh"
    server_env: dict[str, str] = {}
    if options.ssh_options and others:
        wrapper = work / "bin" / "ssh"
        files.append(WrittenFile(path=str(wrapper), what="ssh with server.distributed.ssh_options",
                                 content=ssh_wrapper(python, ssh_cmd, options.ssh_options), mode=0o755))
        ssh_cmd = str(wrapper)
        # mlx.launch runs `ssh` by name (through bash): the wrapper goes first on its PATH.
        server_env["PATH"] = os.pathsep.join([str(wrapper.parent), env.get("PATH", os.defpath)])
    steps: list[CopyStep] = []
    if others:
        if options.remote_dir is None:
            raise ConfigError(f"{len(others)} rank(s) run on other hosts ({', '.join(r.ssh for r in others)}): "
                              "set the directory the model and the rank script are copied to there",
                              where=f"profiles.{resolved.name}.server.distributed.remote_dir",
                              hint="e.g. remote_dir = \"/tmp/punie-dist\" (an absolute path on every host)")
        model = f"{options.remote_dir}/models/{remote_model_name(model_path)}"
        script = f"{options.remote_dir}/{RANK_SCRIPT.name}"
        steps += copy_steps(hosts, [RANK_SCRIPT], options.remote_dir, ssh=ssh_cmd, method=options.copy_with)
        files_ = sorted(model_files) if model_files is not None else sorted(listing(model_path))
        steps += copy_steps(hosts, files_, model, ssh=ssh_cmd, method=options.copy_with)
    else:
        model, script = str(model_path), str(RANK_SCRIPT)
    launch = [*launcher_argv(python), "--backend", backend]
    hostfile = None
    if all(r.local for r in hosts.ranks) and options.hostfile is None:
        launch += ["--hosts", MLX_LOCAL_HOST, "-n", str(len(hosts.ranks))]
    elif options.hostfile is not None and hosts.hostfile is not None:
        hostfile = hosts.hostfile
        launch += ["--hostfile", hostfile]
    else:
        hostfile = str(work / "hostfile.json")
        files.append(WrittenFile(path=hostfile, what="mlx.launch hostfile", content=hostfile_json(hosts, backend)))
        launch += ["--hostfile", hostfile]
    if ring_port is not None:
        launch += ["--starting-port", str(ring_port)]
    for name, value in {envvars.PYTHONUNBUFFERED: "1", envvars.HF_HUB_OFFLINE: "1", **options.env}.items():
        launch += ["--env", f"{name}={value}"]  # every rank, remote ones included
    launch += ["--python", rank_python]
    script_args = server_script_args(resolved, model=model, sharding=options.sharding)
    # mlx_lm.server's flags after "--": mlx.launch's own parser would take --host for its --hosts.
    launch += ["--", script, *script_args]
    rank0 = hosts.ranks[0]
    ranks = tuple(
        RankPlan(rank=r.rank, host=r.ssh, ips=r.ips, local=r.local,
                 via=() if r.local else (ssh_cmd, "-tt", "-o", "LogLevel=QUIET", r.ssh),
                 argv=(rank_python, script, *script_args))
        for r in hosts.ranks)
    part = MlxDistributedPart(
        dist_backend=backend, sharding=options.sharding, ring_port=ring_port, python=rank_python, script=script,
        model=model, source_model=str(model_path), hostfile=hostfile, ranks=ranks, steps=tuple(steps),
        files=tuple(files), rank0_local=rank0.local, blas=blas.path if blas is not None else None,
        blas_note=blas.reason if blas is not None else None, blas_hint=hint_text(blas) if blas is not None else None,
    )
    agent_args = ("--options", profile.agent.model_dump_json(), "--profile", resolved.name,
                  *(("--config", resolved.config_path) if resolved.config_path else ()), "--warm")
    overrides = preload_env(blas, env) if blas is not None else {}  # local ranks inherit mlx.launch's env
    local = sum(1 for r in hosts.ranks if r.local)
    if overrides and local > 1 and cpus and "OPENBLAS_NUM_THREADS" not in env:
        # Each rank's OpenBLAS would start a thread per core: ranks sharing this machine share its cores.
        overrides["OPENBLAS_NUM_THREADS"] = str(max(1, cpus // local))
    plan = common_plan(resolved, label=resolved.name, part=part, model=model, adapter=None, argv=tuple(launch),
                       server_env=server_env, env_overrides=overrides, python=python, agent_args=agent_args,
                       remote=remote, log_dir=log_dir, environ=environ)
    if rank0.local:
        return plan
    # Rank 0 serves HTTP on its own host: the probe and the agent go there.
    address = rank0.ips[0] if rank0.ips else rank0.ssh
    root = f"http://{connect_host(address)}:{server.port}"
    agent = list(plan.agent_argv)
    agent[agent.index(plan.base_url)] = root + "/v1"
    return plan.model_copy(update={"host": address, "server_url": root, "base_url": root + "/v1",
                                   "agent_argv": tuple(agent)})


def _rules(resolved: ResolvedProfile, shapes: object, adapter_dir: Path | None) -> tuple[list, list[str]]:
    from punie.checks.distributed import distributed_items

    return distributed_items(resolved, has_adapter=bool(resolved.profile.adapter or resolved.profile.adapters))


class MlxDistributedBackend(Backend):
    """mlx.launch: one model over several mlx ranks (adapters served fused)."""

    name: ClassVar[str] = NAME
    engine: ClassVar[str] = ENGINE
    part: ClassVar[type[BackendPart]] = MlxDistributedPart
    check_rules: ClassVar[CheckRules] = CheckRules(extra=_rules)
    key_prefixes: ClassVar[tuple[str, ...]] = ("server.distributed.",)

    def prepare(self, inputs: LaunchInputs) -> LaunchPlan:
        """Resolve (the check's paths), fuse the adapter (verified), pick the ring's ports, build the plan;
        a real run (``provision``) also writes the hostfile and ssh wrapper and copies the model."""
        from punie.launch.blas import find_blas

        resolved = inputs.lead
        if resolved.profile.server.url:
            raise ConfigError("server.url names a running server: backend mlx-distributed starts its own ranks",
                              where=f"profiles.{resolved.name}.server.url",
                              hint="remove server.url, or use backend = \"mlx\" to talk to a running server")
        options = resolved.profile.server.distributed
        hosts = profile_hosts(options, resolved.project_dir)
        model, adapter = inputs.model_path(), inputs.adapter_path()
        canary = expected_canary(resolved, model_path=model, adapter_path=adapter, compute=inputs.provision)
        served = served_model(resolved, model=model, adapter=adapter, expected=canary,
                              provision=inputs.provision, python=inputs.python)
        backend = hosts.backend if options.hostfile and hosts.backend else options.backend
        ring_port = options.ring_port
        if ring_port is None and backend != "mpi":
            ring_port = free_port_run(len(hosts.ranks) if backend == "ring" else 1)
        plan = build_distributed_plan(resolved, model_path=served, hosts=hosts, ring_port=ring_port,
                                      python=inputs.python, remote=inputs.remote, log_dir=inputs.log_dir,
                                      blas=find_blas(resolved.profile.server.blas), ssh=shutil.which("ssh") or "ssh",
                                      model_files=planned_files(served, model), cpus=os.cpu_count())
        if canary is not None:
            plan = plan.model_copy(update={"canary": canary})
        part = plan.backend
        assert isinstance(part, MlxDistributedPart)
        if inputs.provision:
            write_files(part.files)
            run_copies(part.steps)
        return plan

    def expected_ids(self, plan: LaunchPlan) -> tuple[str, ...]:
        """Rank 0 lists the resolved path of the model it loads (when it loads it here)."""
        part = plan.backend
        if not isinstance(part, MlxDistributedPart) or not part.rank0_local or not part.model:
            return ()
        path = Path(plan.cwd, part.model)
        return (str(path.resolve()),) if path.exists() else ()

    def listens_here(self, plan: LaunchPlan) -> bool:
        part = plan.backend
        return not isinstance(part, MlxDistributedPart) or part.rank0_local

    def fatal_patterns(self, plan: LaunchPlan) -> Mapping[str, str]:
        # mlx.launch, once a rank exited: it stops the others, and the group never answers again.
        return {"Node with rank": "server-died"}

    def hint(self, reason: str, plan: LaunchPlan) -> str | None:
        if reason == "server-died":
            return ("a rank of the group exited (its lines are in the server log above); [server.restart] "
                    "policy = \"on-failure\" starts the whole group again")
        return None
