"""vLLM for real (marker ``vllm``): `punie up` on vLLM profiles, logprobs equal mlx_lm's, no leftovers.

Needs the vLLM environment of scripts/setup-vllm.sh (.venv-vllm, or
$PUNIE_VLLM_PYTHON). Without it these tests are skipped, unless
PUNIE_REQUIRE_VLLM=1 (CI) makes that a failure. Two servers in all: one with
two profiles' LoRAs (tensor_parallel_size 1, `punie up --group`), one with
tensor_parallel_size 2 (`punie up PROFILE`).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.support import tiny
from tests.support.ports import free_port
from tests.support.vllm_env import vllm_python as _vllm_python

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.mlx, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).parents[1] / "support" / "vllm_probe.py"
PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def vllm_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project: the head_dim-64 tiny model, two adapters trained with mlx_lm, vLLM profiles."""
    python = _vllm_python()
    root = tmp_path_factory.mktemp("vllm-project")
    tiny.build_vllm_assets(root)
    # max_model_len 4096: the agent's tool prompt on a byte-level tokenizer
    (root / "punie.toml").write_text(tiny.vllm_defaults_toml(python, ready_timeout=900, max_model_len=4096) + """
[profiles.one]
model = "model"
adapter = "alpha"

[profiles.two]
model = "model"
adapter = "beta"

[groups.team]
profiles = ["one", "two"]
""")
    return root


def _prompt_ids(model: Path) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model / "tokenizer.json")).encode(PROMPT).ids


def _mlx_top5(model: Path, adapter: Path | None, ids: list[int]) -> dict[int, float]:
    import mlx.core as mx
    from mlx_lm import load

    m, _ = load(str(model), adapter_path=str(adapter) if adapter else None)
    logits = m(mx.array([ids]))[0, -1].astype(mx.float32)
    logp = logits - mx.logsumexp(logits)
    values = logp.tolist()
    top = sorted(range(len(values)), key=lambda i: -values[i])[:5]
    return {i: values[i] for i in top}


def _as_ids(top: dict[str, float]) -> dict[int, float]:
    return {int(k.removeprefix("token_id:")): v for k, v in top.items()}


def _assert_close(vllm: dict[int, float], mlx: dict[int, float], what: str) -> None:
    assert set(vllm) == set(mlx), f"{what}: top-5 tokens differ: vLLM {vllm} mlx_lm {mlx}"
    for token, value in mlx.items():
        assert abs(vllm[token] - value) < 1e-3, f"{what}: token {token}: vLLM {vllm[token]} mlx_lm {value}"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            stat = fh.read()
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return stat[:120] + " | " + fh.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return "gone"


def _up_group(project: Path, names: list[str], *, group: str, tmp_path: Path, ask: str | None = None) -> dict:
    """`punie up --group` with the probe as the agent; returns what it recorded, after checking the stop."""
    from punie.config import load_profiles
    from punie.launch.supervisor import run_up_group

    port = free_port()
    overrides = [f"server.port={port}"]
    members = load_profiles(names, config=str(project / "punie.toml"), overrides=overrides)
    out = tmp_path / "probe.json"
    ids = _prompt_ids(project / "model")
    wanted = [*names, "base"]
    lines: list[str] = []
    if ask:
        wanted = [f"--ask={project / 'punie.toml'}|{ask}|{port}", *wanted]
    outcome = run_up_group(members, group=group, agent_argv=[
        sys.executable, str(PROBE), f"http://127.0.0.1:{port}/v1", str(out), json.dumps(ids), *wanted,
    ], grace=20, sink=lines.append)
    assert outcome.exit_code == 0, (outcome.message, lines[-30:])
    assert outcome.plan.backend.name == "vllm"
    result = json.loads(out.read_text())
    result["ids"] = ids
    assert result["server_pids"], "the vLLM server process was not found while it ran"
    left = {pid: _describe(pid) for pid in result["server_tree"] if _alive(pid)}
    assert not left, f"vLLM processes left after stop: {left}"
    return result


def test_group_of_two_profiles_on_one_vllm_server_matches_mlx(vllm_project: Path, tmp_path: Path) -> None:
    r = _up_group(vllm_project, ["one", "two"], group="team", tmp_path=tmp_path, ask="two")
    # `punie ask --profile two` reaches the group's server and gets an answer from its LoRA's id
    assert r["ask"]["rc"] == 0, r["ask"]
    assert "answer" in json.loads(r["ask"]["stdout"])
    served = {m["id"]: m.get("parent") for m in r["models"]}
    assert served == {"base": None, "one": "base", "two": "base"}
    model = vllm_project / "model"
    want = {"one": _mlx_top5(model, vllm_project / "adapters" / "alpha", r["ids"]),
            "two": _mlx_top5(model, vllm_project / "adapters" / "beta", r["ids"]),
            "base": _mlx_top5(model, None, r["ids"])}
    got = {k: _as_ids(v) for k, v in r["logprobs"].items()}
    for name in ("one", "two", "base"):
        _assert_close(got[name], want[name], name)
    # Each answers with its own numbers: the adapters really differ from each other and from the base.
    for x, y in (("one", "two"), ("one", "base"), ("two", "base")):
        common = set(want[x]) & set(want[y])
        assert not common or max(abs(want[x][t] - want[y][t]) for t in common) > 5e-2, (x, y)


def test_tensor_parallel_2_single_profile_matches_mlx_and_dies_with_a_killed_punie_up(
        vllm_project: Path, tmp_path: Path) -> None:
    """`punie up` of one profile with TP=2 (vLLM's CPU workers), SIGKILLed once the probe has its answers:
    the orphan guard must take the server and all its workers down with it."""
    import subprocess
    import time

    port = free_port()
    out = tmp_path / "probe.json"
    ids = _prompt_ids(vllm_project / "model")
    overrides = [f"server.port={port}", "server.vllm.tensor_parallel_size=2",
                 'server.vllm.env={VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND="0|1"}']
    probe = [sys.executable, str(PROBE), f"http://127.0.0.1:{port}/v1", str(out), json.dumps(ids), "one", "base"]
    script = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from punie.config import load_profile\nfrom punie.launch import run_up\n"
        f"r = load_profile('one', config={str(vllm_project / 'punie.toml')!r}, overrides={overrides!r})\n"
        "plan = run_up(r, dry_run=True).plan\n"
        "assert plan.model_id == 'one' and plan.agent_argv[-2:] == ('--model-name', 'one'), plan.agent_argv\n"
        f"run_up(r, agent_argv={probe!r}, grace=20)\n"
    )
    log = open(tmp_path / "up.log", "w")
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "PROBE_HOLD": "1"},
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while not out.exists():
            assert proc.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "vLLM did not answer within 900 s"
            time.sleep(0.5)
    finally:
        proc.kill()  # SIGKILL: punie up gets no chance to stop anything itself
        proc.wait()
        log.close()
    r = json.loads(out.read_text())
    assert r["server_pids"] and len(r["server_tree"]) >= 3, f"expected vLLM's TP workers: {r['server_tree']}"
    deadline = time.monotonic() + 60
    while (left := [pid for pid in r["server_tree"] if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"vLLM processes outlived a killed punie up: { {p: _describe(p) for p in left} }"
    model = vllm_project / "model"
    _assert_close(_as_ids(r["logprobs"]["one"]), _mlx_top5(model, vllm_project / "adapters" / "alpha", ids),
                  "one (TP=2)")
    _assert_close(_as_ids(r["logprobs"]["base"]), _mlx_top5(model, None, ids), "base (TP=2)")
