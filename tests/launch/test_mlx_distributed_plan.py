"""The mlx-distributed backend's config, hostfile, plan, dry run and checks (no rank started).

The hostfile reader is compared with mlx.launch's own (``mlx._distributed_utils.common.Hostfile``,
stdlib only): the engine is the oracle for what a hostfile means.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from punie.cli import main
from punie.config import load_profile
from punie.config.hosts import Hosts, hostfile_json, parse_hostfile, profile_hosts
from punie.config.models import DistributedOptions
from punie.launch.backends.mlx_distributed import MlxDistributedPart, build_distributed_plan
from punie.launch.blas import BlasChoice
from punie.launch.distributed import RANK_SCRIPT, index_json, indexed_model
from tests.support import tiny
from tests.support.ports import free_port

pytestmark = pytest.mark.mlx  # the tiny model is built with mlx; mlx.launch's hostfile reader is the oracle
common = pytest.importorskip("mlx._distributed_utils.common")


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.build_tiny_model(tmp_path_factory.mktemp("dist-plan") / "tiny")


def _project(root: Path, model: Path, distributed: str, *, server: str = "") -> Path:
    (root / "punie.toml").write_text(f"""
[profiles.d]
model = {json.dumps(str(model))}
[profiles.d.server]
backend = "mlx-distributed"
port = {free_port()}
{server}
[profiles.d.server.distributed]
{distributed}
""")
    return root / "punie.toml"


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize("bad", [
    {"hosts": ["-oProxyCommand=touch /tmp/x"]},
    {"hosts": ["a b"]},
    {"hosts": [{"ssh": "mac2", "ips": ["10.0.0.2\nHost *"]}]},
    {"remote_dir": "relative/dir"},
    {"remote_dir": "/tmp/x\n"},
    {"env": {"A-B": "1"}},
    {"hosts": ["127.0.0.1"], "hostfile": "h.json"},
    {"backend": "nccl"},
    {"sharding": "data"},
])
def test_unsafe_or_wrong_options_are_refused(bad: dict) -> None:
    with pytest.raises(ValidationError):
        DistributedOptions.model_validate(bad)


def test_defaults_are_two_local_ranks_on_the_ring_by_tensor(tmp_path: Path) -> None:
    options = DistributedOptions()
    hosts = profile_hosts(options, str(tmp_path))
    assert [(r.rank, r.ssh, r.ips, r.local) for r in hosts.ranks] == [
        (0, "127.0.0.1", ("127.0.0.1",), True), (1, "127.0.0.1", ("127.0.0.1",), True)]
    assert (options.backend, options.sharding) == ("ring", "tensor")


# --------------------------------------------------------------------------- hostfile, against mlx.launch's reader

_names = st.sampled_from(["127.0.0.1", "mac1.local", "10.0.0.2", "studio", "fe80::1"])
_host = st.fixed_dictionaries({"ssh": _names}, optional={
    "ips": st.lists(st.sampled_from(["10.0.0.1", "192.168.1.2", "fe80::2"]), max_size=2),
    "rdma": st.lists(st.one_of(st.none(), st.sampled_from(["rdma_en2", "rdma_en3"])), max_size=3)})
_hostfile = st.one_of(
    st.lists(_host, min_size=1, max_size=4),
    st.fixed_dictionaries({"hosts": st.lists(_host, min_size=1, max_size=4)}, optional={
        "backend": st.sampled_from(["ring", "jaccl", "mpi"]), "envs": st.lists(st.sampled_from(["A=1", "B=x y"]))}),
)


def _mlx_reads(data: object, tmp: Path) -> tuple:
    path = tmp / "hosts.json"
    path.write_text(json.dumps(data))
    parsed = common.Hostfile.from_file(path)
    return ([(h.rank, h.ssh_hostname, tuple(h.ips), tuple(h.rdma)) for h in parsed.hosts],
            parsed.backend or None, tuple(parsed.envs))


def _ours(hosts: Hosts) -> tuple:
    return [(r.rank, r.ssh, r.ips, r.rdma) for r in hosts.ranks], hosts.backend, hosts.envs


@settings(max_examples=60, deadline=None)
@given(data=_hostfile)
def test_a_hostfile_means_what_mlx_launch_reads_in_it(data: object, tmp_path_factory: pytest.TempPathFactory) -> None:
    assert _ours(parse_hostfile(data)) == _mlx_reads(data, tmp_path_factory.mktemp("hf"))


@settings(max_examples=30, deadline=None)
@given(data=_hostfile)
def test_the_hostfile_punie_writes_is_read_back_alike_by_mlx_launch(data: object,
                                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    hosts = parse_hostfile(data)
    written = json.loads(hostfile_json(hosts, "ring"))
    ranks, backend, _ = _mlx_reads(written, tmp_path_factory.mktemp("hf"))
    assert ranks == _ours(hosts)[0] and backend == "ring"


@pytest.mark.parametrize("data", [{}, {"hosts": []}, {"hosts": [{"ips": ["1.2.3.4"]}]}, 3,
                                  [{"ssh": "-oProxyCommand=x"}], [{"ssh": "a", "ips": "1.2.3.4"}]])
def test_a_malformed_hostfile_is_refused(data: object) -> None:
    with pytest.raises(ValueError):
        parse_hostfile(data)


# --------------------------------------------------------------------------- the plan


def _plan(config: Path, **kw):
    resolved = load_profile("d", config=config)
    options = resolved.profile.server.distributed
    hosts = profile_hosts(options, resolved.project_dir)
    model = Path(resolved.profile.model or "")
    return resolved, build_distributed_plan(resolved, model_path=model, hosts=hosts, ring_port=41000,
                                            ssh="/usr/bin/ssh", **kw)


def test_local_ranks_plan_mlx_launch_with_the_rank_script(tmp_path: Path, model: Path) -> None:
    config = _project(tmp_path, model, 'ranks = 3\nsharding = "pipeline"\nenv = { MLX_X = "1" }')
    blas = BlasChoice("/usr/lib/libblas-fast.so.3", "search")
    resolved, plan = _plan(config, blas=blas, environ={"LD_PRELOAD": "/other.so"})
    argv = list(plan.server_argv or ())
    assert argv[1].endswith("mlx.launch")
    sep = argv.index("--")
    head, script = argv[:sep], argv[sep + 1:]
    assert head[head.index("--hosts") + 1:head.index("--hosts") + 4] == ["127.0.0.1", "-n", "3"]
    assert head[head.index("--backend") + 1] == "ring" and head[head.index("--starting-port") + 1] == "41000"
    assert "MLX_X=1" in head and head[head.index("--python") + 1] == sys.executable
    # mlx_lm.server's own flags come after "--": mlx.launch's parser would take --host for its --hosts
    assert script[0] == str(RANK_SCRIPT) and Path(script[0]).is_file()
    assert script[script.index("--model") + 1] == str(model)
    assert script[script.index("--port") + 1] == str(resolved.profile.server.port) and "--pipeline" in script
    assert plan.server_env["LD_PRELOAD"] == "/usr/lib/libblas-fast.so.3:/other.so"
    part = plan.backend
    assert isinstance(part, MlxDistributedPart) and part.steps == () and part.files == () and part.rank0_local
    assert [r.rank for r in part.ranks] == [0, 1, 2] and all(r.local and not r.via for r in part.ranks)
    assert plan.engine == "mlx.launch" and plan.base_url.endswith(f":{resolved.profile.server.port}/v1")
    assert "rank 2:  [local]" in plan.render_text() and "(serves HTTP)" in plan.render_text()


def test_remote_ranks_get_the_model_copied_and_run_over_ssh(tmp_path: Path, model: Path) -> None:
    config = _project(tmp_path, model, """
hosts = ["127.0.0.1", { ssh = "mac2.local", ips = ["10.0.0.2"] }, { ssh = "mac3.local", ips = ["10.0.0.3"] }]
remote_dir = "/opt/punie-dist"
ssh_options = ["-p", "2222", "-o", "StrictHostKeyChecking=accept-new"]
copy_with = "scp"
""")
    _, plan = _plan(config, environ={"PATH": "/usr/bin"})
    part = plan.backend
    assert isinstance(part, MlxDistributedPart)
    wrapper, hostfile = part.files[0], part.files[1]
    assert wrapper.mode == 0o755 and plan.server_env["PATH"].split(os.pathsep)[0] == str(Path(wrapper.path).parent)
    # mlx.launch reads the hostfile Punie writes exactly as the profile meant it
    data = json.loads(hostfile.content)
    assert [(h.ssh_hostname, h.ips) for h in common.Hostfile.from_file(_write(tmp_path, data)).hosts] == [
        ("127.0.0.1", ["127.0.0.1"]), ("mac2.local", ["10.0.0.2"]), ("mac3.local", ["10.0.0.3"])]
    argv = list(plan.server_argv or ())
    assert argv[argv.index("--hostfile") + 1] == hostfile.path
    # every rank loads the same paths: under remote_dir, here too (rank 0 is local)
    assert part.model == f"/opt/punie-dist/models/{model.name}" and part.script == "/opt/punie-dist/mlx_dist_server.py"
    hosts = [(s.host, s.argv[0]) for s in part.steps]
    assert hosts == [("127.0.0.1", "mkdir"), ("127.0.0.1", "cp"), ("mac2.local", wrapper.path),
                     ("mac2.local", "scp"), ("mac3.local", wrapper.path), ("mac3.local", "scp")] * 2
    files = {p.name for p in model.iterdir()}
    model_copies = [s for s in part.steps if s.argv[0] == "scp" and s.argv[-1].endswith(f"{model.name}/")]
    assert len(model_copies) == 2
    for step in model_copies:
        assert step.argv[:5] == ("scp", "-q", "-p", "-S", wrapper.path)
        assert {Path(a).name for a in step.argv[5:-1]} == files
    assert part.ranks[1].via == (wrapper.path, "-tt", "-o", "LogLevel=QUIET", "mac2.local")
    text = plan.render_text()
    assert f"on this host: scp -q -p -S {wrapper.path}" in text and "rank 2:  [ssh mac3.local]" in text
    assert f"-> mac3.local:/opt/punie-dist/models/{model.name}" in text and "on mac3.local: " in text


def _write(tmp: Path, data: object) -> Path:
    path = tmp / "check-hosts.json"
    path.write_text(json.dumps(data))
    return path


def test_the_ssh_wrapper_passes_the_options_first_and_execs(tmp_path: Path, model: Path) -> None:
    fake = tmp_path / "fake-ssh"
    fake.write_text("#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n")
    fake.chmod(0o755)
    config = _project(tmp_path, model, 'hosts = [{ ssh = "h", ips = ["10.0.0.9"] }]\nremote_dir = "/r"\n'
                      "ssh_options = [\"-o\", \"ProxyCommand=x; touch pwned\", \"-p\", \"22 22\"]\n")
    resolved = load_profile("d", config=config)
    hosts = profile_hosts(resolved.profile.server.distributed, resolved.project_dir)
    plan = build_distributed_plan(resolved, model_path=model, hosts=hosts, ring_port=None, ssh=str(fake),
                                  environ={"PATH": "/usr/bin"})
    assert isinstance(plan.backend, MlxDistributedPart)
    wrapper = plan.backend.files[0]
    path = tmp_path / "ssh"
    path.write_text(wrapper.content)
    path.chmod(wrapper.mode)
    out = subprocess.run([str(path), "-tt", "host", "echo $HOME"], capture_output=True, text=True, check=True,
                         cwd=tmp_path).stdout
    assert out.split("\n")[:-1] == ["[-o]", "[ProxyCommand=x; touch pwned]", "[-p]", "[22 22]", "[-tt]", "[host]",
                                    "[echo $HOME]"]
    assert not (tmp_path / "pwned").exists()


def test_a_remote_host_without_remote_dir_is_a_config_error(tmp_path: Path, model: Path) -> None:
    config = _project(tmp_path, model, 'hosts = ["127.0.0.1", "10.0.0.2"]')
    with pytest.raises(Exception, match="remote_dir"):
        _plan(config)


# --------------------------------------------------------------------------- dry run and check, through the CLI


def _cli(config: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(config), *args])
    return result.exit_code, result.output


def test_the_dry_run_shows_every_rank_and_copy_text_and_json(tmp_path: Path, model: Path) -> None:
    config = _project(tmp_path, model, 'hosts = ["127.0.0.1", { ssh = "mac2.local", ips = ["10.0.0.2"] }]\n'
                      'remote_dir = "/opt/pd"\ncopy_with = "scp"\n')
    code, text = _cli(config, "up", "d", "--dry-run")
    assert code == 0, text
    assert "server:    " in text and "mlx.launch --backend ring --hostfile" in text
    assert "rank 1:  [ssh mac2.local]" in text and "-tt -o LogLevel=QUIET mac2.local" in text
    assert "on this host: scp -q -p -S" in text and "write:   " in text
    assert "model.safetensors -> mac2.local:/opt/pd/models/" in text  # every file, the weights too
    code, out = _cli(config, "up", "d", "--dry-run", "--format", "json")
    assert code == 0, out
    plan = json.loads(out)["plan"] if "plan" in json.loads(out) else json.loads(out)
    part = plan["backend"]
    assert part["name"] == "mlx-distributed" and len(part["ranks"]) == 2
    assert part["ranks"][1]["via"][-1] == "mac2.local" and part["model"].startswith("/opt/pd/models/")
    # the dry run wrote nothing and copied nothing
    assert not (tmp_path / ".punie" / "dist").exists()
    # a base without an index is served from an indexed view (the model's own folder is not written)
    assert not (model / "model.safetensors.index.json").exists()


def test_an_indexed_view_maps_every_weight(tmp_path: Path, model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path / "cache"))
    view = indexed_model(model)
    index = json.loads((view / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {"model.safetensors"} and index["metadata"]["total_size"] > 0
    assert (view / "config.json").resolve() == (model / "config.json").resolve()
    assert indexed_model(model) == view and json.loads(index_json(model)) == index
    assert not (model / "model.safetensors.index.json").exists()


def test_check_names_the_place_of_each_distributed_problem(tmp_path: Path, model: Path) -> None:
    (tmp_path / "hosts.json").write_text('{"hosts": [{"ssh": "127.0.0.1"}, {"ssh": "mac2"}]}')
    config = _project(tmp_path, model, 'hostfile = "hosts.json"\nsharding = "pipeline"\n')
    code, text = _cli(config, "check", "d")
    assert code == 1
    assert re.search(r"punie\.toml:\d+: profiles\.d\.server\.distributed\.hostfile: the ring backend needs an "
                     r"address for every rank; rank 0 \(127\.0\.0\.1\) has none", text), text
    assert "profiles.d.server.distributed.remote_dir: ranks on mac2 need the model copied" in text

    (tmp_path / "hosts.json").write_text('{"hosts": [{"ssh": "127.0.0.1"}, ')
    code, text = _cli(config, "check", "d")
    assert code == 1 and "profiles.d.server.distributed.hostfile:" in text and "not JSON" in text

    config = _project(tmp_path, model, 'ranks = 3\nsharding = "pipeline"\n')
    code, text = _cli(config, "check", "d")
    assert code == 1 and "profiles.d.server.distributed.sharding:" in text
    assert "3 pipeline ranks for 2 layers" in text
    config = _project(tmp_path, model, "ranks = 3\n")
    code, text = _cli(config, "check", "d")
    assert code == 1 and "4 attention heads do not split over 3 ranks" in text
    config = _project(tmp_path, model, "ranks = 2\n")
    code, text = _cli(config, "check", "d")
    assert code == 0, text
    assert "sharding: the base splits over 2 rank(s) by tensor" in text and "ranks: 2 on 127.0.0.1 (ring)" in text


def test_check_warns_about_a_busy_ring_port_and_a_remote_rank_zero(tmp_path: Path, model: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        config = _project(tmp_path, model, f"ring_port = {port}\n")
        code, text = _cli(config, "check", "d")
        assert "profiles.d.server.distributed.ring_port: rank 0's ring port" in text and "in use" in text
    config = _project(tmp_path, model, 'hosts = ["10.0.0.5", "127.0.0.1"]\nremote_dir = "/r"\ncopy_with = "scp"\n')
    code, text = _cli(config, "check", "d")
    assert code == 1 and "profiles.d.server.host: rank 0 (10.0.0.5) serves HTTP on another machine" in text


def test_no_shell_string_is_built_from_the_profile(tmp_path: Path, model: Path) -> None:
    """Every command is an argv list; what reaches a remote shell (ssh's mkdir) is quoted."""
    config = _project(tmp_path, model, 'hosts = ["127.0.0.1", { ssh = "h2", ips = ["10.0.0.2"] }]\n'
                      'remote_dir = "/opt/a+b/c"\ncopy_with = "rsync"\n')
    _, plan = _plan(config)
    assert isinstance(plan.backend, MlxDistributedPart)
    mkdir = next(s for s in plan.backend.steps if s.host == "h2" and "mkdir" in s.argv)
    assert mkdir.argv[-1] == shlex.quote("/opt/a+b/c") and mkdir.argv[-2] == "--"
    rsync = next(s for s in plan.backend.steps if s.argv[0] == "rsync")
    assert rsync.argv[rsync.argv.index("-e") + 1] == "/usr/bin/ssh" and rsync.argv[-1].startswith("h2:/opt/a+b/c")


def test_the_shipped_example_checks_and_plans_three_local_ranks() -> None:
    """examples/mlx-distributed.toml as shipped (the builtin model, the shipped adapter served fused).
    Its real run (measured: fused once, canary 0.0000 from the adapter, "The capital of France is
    Paris.") is too slow for CI on 2 cores; tests/launch/test_mlx_distributed_mlx.py runs the tiny models."""
    config = Path(__file__).resolve().parents[2] / "examples" / "mlx-distributed.toml"
    resolved = load_profile(None, config=config)
    options = resolved.profile.server.distributed
    assert resolved.profile.server.backend == "mlx-distributed" and resolved.profile.adapter
    assert (options.ranks, options.sharding, options.hosts, options.hostfile) == (3, "tensor", [], None)
    from punie.launch.prepare import prepare

    plan = prepare(resolved, check=False, provision=False)
    assert isinstance(plan.backend, MlxDistributedPart) and len(plan.backend.ranks) == 3 and plan.adapter is None
    assert plan.canary is not None  # the shipped adapter's canary, probed on the fused model


@pytest.mark.parametrize(("ranks", "cpus", "environ", "threads"), [
    (2, 4, {}, "2"), (3, 2, {}, "1"), (1, 4, {}, None), (2, 4, {"OPENBLAS_NUM_THREADS": "3"}, None)])
def test_local_ranks_share_the_cores_between_their_blas_threads(tmp_path: Path, model: Path, ranks: int, cpus: int,
                                                                environ: dict, threads: str | None) -> None:
    config = _project(tmp_path, model, f"ranks = {ranks}\n")
    _, plan = _plan(config, blas=BlasChoice("/usr/lib/libblas-fast.so.3", "search"), environ=environ, cpus=cpus)
    assert plan.server_env.get("OPENBLAS_NUM_THREADS") == threads
