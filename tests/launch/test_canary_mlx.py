"""The adapter canary on real mlx_lm.server processes (tiny offline model, real LoRA adapter).

One server applies the adapter: `punie up` says "adapter active". One does not (an external
``server.url`` whose mlx_lm.server was started without ``--adapter-path``, while the profile
names the adapter): Punie refuses to start the agent, saying so. The adapter is the session's
tiny trained adapter with its LoRA scale raised: 3 iterations move the tiny model's logprobs by
only ~0.02 nats, less than the canary's MIN_SEPARATION, which would (rightly) be "indistinct".
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from punie.adapters.metadata import read_canary
from punie.cli import main
from punie.config.models import Profile, ResolvedProfile, ServerOptions
from punie.launch import LaunchFailed, prepare, run_up
from punie.launch.canary import MIN_SEPARATION, distance, keyed
from tests.support import tiny
from tests.support.launch_helpers import agent_let_in
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.mlx]
pytest.importorskip("mlx_lm")

SCALE_UP = 50  # see the module docstring: x50 moves them by ~0.37 nats (mlx_lm lora trains with seed 0)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_adapter: Path) -> Path:
    """A project whose adapters/strong was stamped with `punie adapters stamp strong --base tiny`."""
    root = tmp_path_factory.mktemp("canary-project")
    strong = root / "adapters" / "strong"
    shutil.copytree(tiny_adapter, strong)
    config = json.loads((strong / "adapter_config.json").read_text())
    config["lora_parameters"]["scale"] *= SCALE_UP
    (strong / "adapter_config.json").write_text(json.dumps(config))
    (root / "punie.toml").write_text(
        f"[profiles.tiny]\nmodel = {json.dumps(str(tiny_model))}\nadapter = \"strong\"\n"
        "[profiles.tiny.server]\nready_timeout = 60\n"
    )
    result = CliRunner().invoke(main, ["--config", str(root / "punie.toml"), "adapters", "stamp", "strong",
                                       "--base", "tiny"])
    assert result.exit_code == 0, result.output
    assert "canary, with adapter:" in result.output
    return root


def _resolved(project: Path, **server: object) -> ResolvedProfile:
    from punie.config import load_profile

    resolved = load_profile("tiny", config=project / "punie.toml")
    options = resolved.profile.server.model_copy(update={"port": free_port(), **server})
    return resolved.model_copy(update={"profile": resolved.profile.model_copy(update={"server": options})})


def test_stamped_canary_tells_adapter_from_base(project: Path, tiny_model: Path) -> None:
    canary = read_canary(project / "adapters" / "strong")
    assert canary is not None and canary.top_k == len(canary.base) == len(canary.adapter) == 5
    assert canary.prompt.startswith("<|im_start|>") and "user\nhi<|im_end|>" in canary.prompt  # chat template
    assert distance(keyed(canary.base, "id"), keyed(canary.adapter, "id")) > MIN_SEPARATION


def test_punie_up_proves_the_adapter_is_active(project: Path) -> None:
    lines: list[str] = []
    outcome = run_up(_resolved(project), check=False, sink=lines.append, grace=10,
                     agent_argv=[sys.executable, "-c", "pass"])
    text = "\n".join(lines)
    assert outcome.exit_code == 0, text
    assert outcome.canary is not None and outcome.canary["verdict"] == "adapter-active", outcome.canary
    assert outcome.canary["distance_to_adapter"] <= outcome.canary["tolerance"]
    assert "punie | adapter active: the canary matches" in text
    assert text.index("adapter active") < text.index("started the agent")


class _Server:
    """mlx_lm.server started by hand (the "external" server of a profile's server.url)."""

    def __init__(self, model: Path, adapter: Path | None, log: Path) -> None:
        self.port = free_port()
        argv = [sys.executable, "-m", "mlx_lm", "server", "--model", str(model), "--port", str(self.port)]
        argv += ["--adapter-path", str(adapter)] if adapter else []
        self.log = open(log, "wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=tiny.mlx_env())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "mlx_lm.server exited"
            try:
                if httpx.post(self.url + "/v1/completions", json={"prompt": "a", "max_tokens": 1},
                              timeout=30, trust_env=False).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError("mlx_lm.server did not answer")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


@pytest.fixture
def bare_server(tmp_path: Path, tiny_model: Path):
    server = _Server(tiny_model, None, tmp_path / "bare.log")
    try:
        yield server
    finally:
        server.stop()


def test_an_external_server_without_the_adapter_is_refused(project: Path, bare_server: _Server,
                                                          tmp_path: Path) -> None:
    marker = tmp_path / "agent-started"
    resolved = _resolved(project, url=bare_server.url)
    plan = prepare(resolved, check=False)
    assert plan.external and plan.canary is not None
    assert Path(plan.canary.adapter) == (project / "adapters" / "strong").resolve()
    bare_server.wait()
    with pytest.raises(LaunchFailed) as info:
        run_up(resolved, check=False, sink=lambda line: None,
               agent_argv=[sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    assert info.value.reason == "adapter-not-applied"
    assert "the server is answering without the adapter" in info.value.message
    assert "refused: nothing is started on a server without its adapter" in info.value.message
    assert info.value.hint and "--adapter-path" in info.value.hint
    assert not marker.exists()


def test_punie_up_cli_refuses_with_a_clear_message(project: Path, bare_server: _Server) -> None:
    bare_server.wait()
    proc = subprocess.run(
        [sys.executable, "-m", "punie", "--config", str(project / "punie.toml"), "up", "tiny", "--no-check",
         "--format", "json", "--set", f"server.url={bare_server.url}"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=tiny.mlx_env(),
    )
    assert proc.returncode == 1, proc.stderr
    assert "punie: error:" in proc.stderr and "the server is answering without the adapter" in proc.stderr
    assert "hint: restart that server with the adapter" in proc.stderr
    assert not any(agent_let_in(line) for line in proc.stderr.splitlines())
    status = next(json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{"))
    assert status["reason"] == "adapter-not-applied" and status["exit_code"] == 1
    assert [c["verdict"] for c in status["canaries"]] == ["base"]


def test_an_external_server_with_the_adapter_passes(project: Path, tiny_model: Path, tmp_path: Path) -> None:
    server = _Server(tiny_model, project / "adapters" / "strong", tmp_path / "with.log")
    try:
        server.wait()
        lines: list[str] = []
        outcome = run_up(_resolved(project, url=server.url), check=False, sink=lines.append,
                         agent_argv=[sys.executable, "-c", "pass"])
    finally:
        server.stop()
    assert outcome.exit_code == 0 and outcome.canary is not None
    assert outcome.canary["verdict"] == "adapter-active"


def test_eval_server_checks_the_canary(project: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from punie.training.evaluate import serve

    caplog.set_level("INFO", logger="punie.launch.supervisor")  # eval serves through the supervisor
    with serve(_resolved(project), log_dir=tmp_path) as (base_url, adapter):
        assert adapter is not None and base_url.startswith("http://")
    assert "adapter active: the canary matches" in caplog.text


def test_check_and_list_show_the_canary(project: Path, tiny_adapter: Path) -> None:
    shutil.copytree(tiny_adapter, project / "adapters" / "plain", dirs_exist_ok=True)
    config = ["--config", str(project / "punie.toml")]
    result = CliRunner().invoke(main, [*config, "--set", f"server.port={free_port()}", "check", "tiny",
                                       "--format", "json"])
    assert result.exit_code == 0, result.output
    (profile,) = json.loads(result.output)["profiles"]
    assert any("canary recorded" in line for line in profile["passed"])
    result = CliRunner().invoke(main, [*config, "--set", f"server.port={free_port()}", "--set", "adapter=plain",
                                       "check", "tiny", "--format", "json"])
    (profile,) = json.loads(result.output)["profiles"]
    assert [p["code"] for p in profile["problems"]] == ["no-canary"]
    assert "punie adapters stamp" in profile["problems"][0]["message"]
    listed = CliRunner().invoke(main, [*config, "adapters", "list", "--format", "json"])
    canaries = {a["name"]: a["canary"] for a in json.loads(listed.output)}
    assert canaries == {"plain": False, "strong": True}
    table = CliRunner().invoke(main, [*config, "adapters", "list"]).output
    assert "CANARY" in table.splitlines()[0]


def test_a_composed_adapter_gets_its_canary_when_launched(project: Path, tiny_model: Path) -> None:
    resolved = ResolvedProfile(
        name="both", config_path=str(project / "punie.toml"),
        profile=Profile(model=str(tiny_model), adapters=["strong", "strong"],
                        server=ServerOptions(port=free_port())),
    )
    dry = prepare(resolved, check=False, provision=False)
    assert dry.canary is None  # a dry run never runs mlx
    plan = prepare(resolved, check=False)
    assert plan.canary is not None and Path(plan.canary.adapter) == Path(plan.adapter)
    assert read_canary(plan.adapter) == plan.canary.canary


def test_the_shipped_tool_calling_adapter_is_proven_active_on_smollm2() -> None:
    """The builtin tool-calling profile: its shipped canary was recorded on the SmolLM2 that Punie
    provisions (same weights identity), and a real `punie up` proves the adapter applied."""
    from punie.adapters.canary import base_fingerprint
    from punie.config import load_profile
    from punie.weights.builtin import ensure_builtin

    repo = Path(__file__).resolve().parents[2]
    resolved = load_profile("tool-calling", config=repo / "punie.toml", overrides=(f"server.port={free_port()}",))
    canary = read_canary(repo / "adapters" / str(resolved.profile.adapter))
    assert canary is not None
    assert canary.base_fingerprint == base_fingerprint(ensure_builtin("smollm2-135m-instruct"))
    lines: list[str] = []
    outcome = run_up(resolved, check=False, sink=lines.append, agent_argv=[sys.executable, "-c", "pass"])
    assert outcome.canary is not None and outcome.canary["verdict"] == "adapter-active", "\n".join(lines)
    assert outcome.canary["distance_to_base"] > 1.0  # "Hello": -1.18 alone, below -3.55 with the adapter


def test_punie_up_format_json_reports_the_canary(project: Path) -> None:
    """`punie up --format json`: the session's final status (on stderr) carries the canary verdict."""
    proc = subprocess.run(
        [sys.executable, "-m", "punie", "--config", str(project / "punie.toml"), "up", "tiny", "--no-check",
         "--format", "json", "--set", f"server.port={free_port()}"],
        capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL, env=tiny.mlx_env(),
    )
    assert proc.returncode == 0, proc.stderr  # the agent exits at the end of its (empty) stdin
    status = json.loads(proc.stderr.strip().splitlines()[-1])
    assert status["profile"] == "tiny" and status["canary"]["verdict"] == "adapter-active"
    assert "adapter active" in status["canary"]["message"]


def test_punie_serve_with_an_adapter_checks_its_canary(project: Path, tiny_model: Path) -> None:
    """`punie serve --model M --adapter A` launches through the same plan: its probe is the canary."""
    adapter = project / "adapters" / "strong"
    result = CliRunner().invoke(main, ["serve", "--model", str(tiny_model), "--adapter", str(adapter),
                                       "--port", str(free_port()), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"ready:     canary of {adapter}" in result.output


@pytest.fixture(scope="module")
def zeroed(project: Path) -> Path:
    """The strong adapter with LoRA scale 0: mlx_lm loads and applies it, and answers as the base alone."""
    path = project / "zeroed"
    shutil.copytree(project / "adapters" / "strong", path)
    config = json.loads((path / "adapter_config.json").read_text())
    config["lora_parameters"]["scale"] = 0.0
    (path / "adapter_config.json").write_text(json.dumps(config))
    return path


def test_our_own_server_answering_as_the_base_is_refused_with_its_log_tail(project: Path, zeroed: Path) -> None:
    """A server Punie starts with --adapter-path that still answers as the base (here a later
    --adapter-path in extra_args wins in mlx_lm's argparse, as if it ignored ours)."""
    resolved = _resolved(project, extra_args=["--adapter-path", str(zeroed)])
    lines: list[str] = []
    with pytest.raises(LaunchFailed) as info:
        run_up(resolved, check=False, sink=lines.append, agent_argv=[sys.executable, "-c", "pass"])
    assert info.value.reason == "adapter-not-applied"
    message = info.value.message
    assert "the server is answering without the adapter" in message and "last server log lines" in message
    assert info.value.hint and "mlx_lm version" in info.value.hint
    assert not any("started the agent" in line for line in lines)


def test_eval_refuses_a_server_answering_as_the_base(project: Path, zeroed: Path, tmp_path: Path) -> None:
    from punie.errors import LaunchError
    from punie.training.evaluate import serve

    with pytest.raises(LaunchError, match="the server is answering without the adapter"):
        with serve(_resolved(project, extra_args=["--adapter-path", str(zeroed)]), log_dir=tmp_path):
            pass


def test_another_version_of_the_base_is_a_warning_naming_the_distance(project: Path, tmp_path: Path) -> None:
    """The same architecture with other weights (a retrained or requantized base): the canary matches
    neither side, which is a warning naming both distances; the agent still starts. (The tiny
    model's own 4-bit copy lands at 0.07 from the adapter side: just past the tolerance, too close
    to make a stable test of.)"""
    other = tiny.build_tiny_model(tmp_path / "tiny-a-seed1", seed=1)
    resolved = _resolved(project)
    resolved = resolved.model_copy(update={"profile": resolved.profile.model_copy(update={"model": str(other)})})
    lines: list[str] = []
    outcome = run_up(resolved, check=False, sink=lines.append, agent_argv=[sys.executable, "-c", "pass"])
    assert outcome.exit_code == 0 and outcome.canary is not None
    assert outcome.canary["verdict"] == "neither", outcome.canary
    assert min(outcome.canary["distance_to_adapter"], outcome.canary["distance_to_base"]) > 0.05
    assert "another base" in outcome.canary["message"]
    warning = next(line for line in lines if line.startswith("punie | warning: the canary of"))
    assert f"{outcome.canary['distance_to_base']:.4f}" in warning
    assert any("started the agent" in line for line in lines)
