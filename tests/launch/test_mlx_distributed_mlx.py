"""`punie up` of mlx-distributed profiles with real ranks: mlx.launch, ring over TCP on localhost.

The tiny models of tests/support/tiny.py: the 2-layer, 4-head base with the session's adapter
(LoRA scale x50 so its canary tells it from the base) served FUSED by 2 ranks, by tensor and by
pipeline, its canary checked by the readiness probe; a 3-layer, 6-head, 3-kv-head base served by
3 ranks both ways; a 2-bit base whose fused model, re-quantized to the base's bits, answers as the
base: refused before any rank starts. Then how the group stops: SIGKILL and SIGTERM of `punie up`
leave no rank; a rank killed mid-run restarts the group under restart = on-failure, and once the
restarts are spent stops it with the rank named.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from punie.cli import main
from punie.config import load_profile
from punie.config.models import ResolvedProfile
from punie.launch import run_up
from punie.launch.backends.mlx_distributed import MlxDistributedPart
from punie.launch.canary import MATCH_TOLERANCE
from punie.paths import fused_models_dir
from tests.support import tiny
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.mlx]
pytest.importorskip("mlx_lm")

#: A stand-in agent: one chat completion against the served model, its answer written to a file.
AGENT = """
import json, sys, urllib.request
base, out = sys.argv[1], sys.argv[2]
body = json.dumps({"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}).encode()
req = urllib.request.Request(base + "/chat/completions", body, {"Content-Type": "application/json"})
with urllib.request.urlopen(req, timeout=180) as resp:
    open(out, "w").write(resp.read().decode())
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_adapter: Path,
            tiny_dataset: Path) -> Path:
    root = tmp_path_factory.mktemp("dist-project")
    tiny.scaled_adapter_copy(tiny_adapter, root / "adapters" / "strong", 50)
    three = tiny.build_tiny_model(root / "models" / "three", layers=3, heads=6, kv_heads=3, hidden=96,
                                  intermediate=192)
    q2 = tiny.build_tiny_model(root / "models" / "q2", quantize_bits=2)
    trained = tiny.train_tiny_adapter(q2, root / "trained" / "q2-adapter", tiny_dataset)
    tiny.scaled_adapter_copy(trained, root / "adapters" / "q2-strong", 10)
    (root / "agent.py").write_text(AGENT)
    (root / "punie.toml").write_text(f"""
[defaults.server]
ready_timeout = 120
backend = "mlx-distributed"
liveness_interval = 1

[profiles.tiny]
model = {json.dumps(str(tiny_model))}
adapter = "strong"
server.backend = "mlx"

[profiles.fused2]
model = {json.dumps(str(tiny_model))}
adapter = "strong"
server.distributed = {{ ranks = 2 }}

[profiles.base2]
model = {json.dumps(str(tiny_model))}
server.distributed = {{ ranks = 2 }}

[profiles.three]
model = {json.dumps(str(three))}
server.distributed = {{ ranks = 3 }}

[profiles.q2]
model = {json.dumps(str(q2))}
adapter = "q2-strong"
server.backend = "mlx"

[profiles.q2-dist]
model = {json.dumps(str(q2))}
adapter = "q2-strong"
fuse = {{ bits = "base" }}
""")
    for name, profile in (("strong", "tiny"), ("q2-strong", "q2")):
        result = CliRunner().invoke(main, ["--config", str(root / "punie.toml"), "adapters", "stamp", name,
                                           "--base", profile])
        assert result.exit_code == 0, result.output
    return root


def _resolved(project: Path, name: str, **distributed: object) -> ResolvedProfile:
    resolved = load_profile(name, config=project / "punie.toml")
    server = resolved.profile.server
    options = server.distributed.model_copy(update=distributed)
    server = server.model_copy(update={"port": free_port(), "distributed": options})
    return resolved.model_copy(update={"profile": resolved.profile.model_copy(update={"server": server})})


def _agent(project: Path, resolved: ResolvedProfile, out: Path) -> list[str]:
    return [sys.executable, str(project / "agent.py"), f"http://127.0.0.1:{resolved.profile.server.port}/v1",
            str(out)]


@pytest.mark.parametrize("sharding", ["tensor", "pipeline"])
def test_two_ranks_serve_the_fused_adapter_and_its_canary_passes(project: Path, tmp_path: Path,
                                                                 sharding: str) -> None:
    resolved = _resolved(project, "fused2", sharding=sharding)
    lines: list[str] = []
    answer = tmp_path / "answer.json"
    outcome = run_up(resolved, sink=lines.append, grace=10, agent_argv=_agent(project, resolved, answer))
    text = "\n".join(lines)
    assert outcome.exit_code == 0, text
    plan = outcome.plan
    assert plan is not None and isinstance(plan.backend, MlxDistributedPart) and plan.adapter is None
    assert Path(plan.model or "").parent == fused_models_dir()  # the adapter, fused (mlx_lm refuses adapters)
    assert [r.rank for r in plan.backend.ranks] == [0, 1] and plan.backend.sharding == sharding
    assert ("--pipeline" in (plan.server_argv or ())) == (sharding == "pipeline")
    assert outcome.canary is not None and outcome.canary["verdict"] == "adapter-active", outcome.canary
    assert outcome.canary["distance_to_adapter"] <= MATCH_TOLERANCE
    assert json.loads(answer.read_text())["choices"][0]["message"]["content"] is not None


@pytest.mark.parametrize("sharding", ["tensor", "pipeline"])
def test_three_ranks_serve_a_base(project: Path, tmp_path: Path, sharding: str) -> None:
    resolved = _resolved(project, "three", sharding=sharding)
    lines: list[str] = []
    answer = tmp_path / "answer.json"
    outcome = run_up(resolved, sink=lines.append, grace=10, agent_argv=_agent(project, resolved, answer))
    assert outcome.exit_code == 0, "\n".join(lines)
    assert outcome.plan is not None and isinstance(outcome.plan.backend, MlxDistributedPart)
    assert len(outcome.plan.backend.ranks) == 3
    assert (Path(outcome.plan.model or "") / "model.safetensors.index.json").is_file()  # the indexed view
    data = json.loads(answer.read_text())
    assert data["usage"]["completion_tokens"] >= 1


def test_a_requantized_fused_model_that_answers_as_the_base_is_refused(project: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "punie", "--config", str(project / "punie.toml"), "up", "q2-dist",
         "--set", f"server.port={free_port()}"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, cwd=tmp_path,
        env=tiny.mlx_env({"PUNIE_CACHE_DIR": os.environ["PUNIE_CACHE_DIR"]}),
    )
    assert proc.returncode == 1, proc.stderr
    assert "fused model refused" in proc.stderr and "answers as the base alone" in proc.stderr
    assert "to the adapter applied on the fly" in proc.stderr and "without re-quantizing" in proc.stderr
    assert "started mlx.launch" not in proc.stderr  # no rank was started


# --------------------------------------------------------------------------- stopping every rank


def _start(project: Path, profile: str, *extra: str) -> tuple[subprocess.Popen[str], list[str], threading.Event]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "punie", "--config", str(project / "punie.toml"), "up", profile,
         "--set", f"server.port={free_port()}", *extra],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project,
        env=tiny.mlx_env({"PUNIE_CACHE_DIR": os.environ["PUNIE_CACHE_DIR"]}))
    lines: list[str] = []
    changed = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in iter(proc.stderr.readline, ""):
            lines.append(line)
            changed.set()
        changed.set()

    threading.Thread(target=read, daemon=True).start()
    return proc, lines, changed


def _wait_line(lines: list[str], changed: threading.Event, text: str, count: int = 1, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while sum(text in line for line in lines) < count:
        assert time.monotonic() < deadline, "".join(lines)
        changed.wait(1.0)
        changed.clear()


def _ranks(pid: int) -> list[psutil.Process]:
    """The rank processes under ``pid`` (mlx.launch's children running the rank script), rank 0 first."""
    found = []
    for p in psutil.Process(pid).children(recursive=True):
        try:
            argv = p.cmdline()
        except psutil.Error:  # gone, or a zombie of the group stopped a moment ago
            continue
        if argv[1:2] and argv[1].endswith("mlx_dist_server.py"):
            found.append(p)
    return sorted(found, key=lambda p: int(p.environ().get("MLX_RANK", "-1")))  # mlx.launch sets MLX_RANK


def _gone(procs: list[psutil.Process], timeout: float = 30) -> list[int]:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    return [p.pid for p in alive if p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_stopping_punie_up_leaves_no_rank(project: Path, signum: int) -> None:
    proc, lines, changed = _start(project, "base2")
    try:
        _wait_line(lines, changed, "agent ready (")
        ranks = _ranks(proc.pid)
        assert len(ranks) == 2, [p.cmdline() for p in psutil.Process(proc.pid).children(recursive=True)]
        launcher = ranks[0].parent()
        os.kill(proc.pid, signum)
        rc = proc.wait(timeout=180)
        assert rc == (-9 if signum == signal.SIGKILL else 0), "".join(lines)
        assert _gone([*ranks, launcher]) == []  # the orphan guard took mlx.launch and both ranks
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_killed_rank_restarts_the_group_then_stops_it_with_the_rank_named(project: Path) -> None:
    proc, lines, changed = _start(project, "base2", "--set", "server.restart=on-failure",
                                  "--set", "server.max_restarts=1", "--set", "server.restart_backoff=0.2")
    try:
        _wait_line(lines, changed, "agent ready (")
        first = _ranks(proc.pid)
        os.kill(first[1].pid, signal.SIGKILL)
        _wait_line(lines, changed, "restart 1/1")
        assert _gone(first) == []  # the whole group went down with it
        _wait_line(lines, changed, "server ready", count=2)
        second = _ranks(proc.pid)
        assert len(second) == 2 and not {p.pid for p in second} & {p.pid for p in first}
        os.kill(second[0].pid, signal.SIGKILL)  # rank 0 this time; no restart left
        rc = proc.wait(timeout=180)
        text = "".join(lines)
        assert rc == 1, text
        assert "Node with rank 0 exited with code -9" in text and "\x1b[" not in text.split("punie: error:")[-1]
        assert _gone(second) == []
    finally:
        if proc.poll() is None:
            proc.kill()
