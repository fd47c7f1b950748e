"""The adapter canary through `punie up` on real vLLM servers (marker ``vllm``): a LoRA id vs the base.

Two vLLM starts in all (20-60 s each on 2 cores), both by the real `punie up --group` CLI process:

1. The group's server really applies both LoRAs: each profile's canary, recorded with mlx_lm in its
   adapter's punie-adapter.json, matches what vLLM answers on the profile's own LoRA id ("adapter
   active" in the log and in the ``--format json`` status), and the agent starts. While it runs, the
   same server is used as an external ``server.url`` by three more `punie up` processes: one whose
   LoRA id it serves (active), one whose LoRA id it does not serve, and one whose requests go to the
   base model's id; both of those are refused before their agent starts.
2. The group's server loads a PEFT export whose module names do not match the base (vLLM accepts
   it and silently answers as the base: vLLM issues 34186, 55193): the first LoRA is proven active,
   the second answers as the base, and Punie refuses to start the agent, quoting the server log.

The adapters are the ones tests/launch/test_vllm.py trains (6 iterations): measured separations between
base and adapter top-5 are ~2.2 and ~1.5 nats, and vLLM (float32, CPU) answers within ~1e-6 nats
of mlx_lm's recorded logprobs, so MATCH_TOLERANCE (0.05) accepts the adapter and rejects the base
with a wide margin on both sides.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.launch.canary import MATCH_TOLERANCE
from tests.support import tiny
from tests.support.launch_helpers import agent_let_in
from tests.support.ports import free_port
from tests.support.vllm_env import server_processes, vllm_python

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.mlx, pytest.mark.timeout(600)]
pytest.importorskip("mlx_lm")

PROFILES = """
[profiles.one]
model = "model"
adapter = "alpha"

[profiles.two]
model = "model"
adapter = "beta"

# Only ever pointed at the group's server (server.url): it serves no LoRA of this id.
[profiles.lost]
model = "model"
adapter = "alpha"

# Its requests name the base model's id on a Punie vLLM server ("base"): they get the base alone.
[profiles.base]
model = "model"
adapter = "alpha"

[groups.team]
profiles = ["one", "two"]
"""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The head_dim-64 tiny model and two adapters trained with mlx_lm, canaries stamped by the CLI."""
    from punie.cli import main

    python = vllm_python()
    root = tmp_path_factory.mktemp("vllm-canary")
    tiny.build_vllm_assets(root)
    (root / "punie.toml").write_text(tiny.vllm_defaults_toml(python, ready_timeout=300, max_model_len=512) + PROFILES)
    for adapter, profile in (("alpha", "one"), ("beta", "two")):
        result = CliRunner().invoke(main, ["--config", str(root / "punie.toml"), "adapters", "stamp", adapter,
                                           "--base", profile])
        assert result.exit_code == 0, result.output
    return root


def _project(built: Path, where: Path) -> Path:
    """A fresh project (its own .punie/: logs, PEFT exports) with the built model and adapters."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "model").symlink_to(built / "model")
    shutil.copytree(built / "adapters", where / "adapters")
    shutil.copy(built / "punie.toml", where / "punie.toml")
    return where


def _punie(project: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "punie", "--config", str(project / "punie.toml"), *args]


def _status(stderr: str) -> dict:
    """The session's final status: `punie up --format json` prints it last on stderr."""
    return next(json.loads(line) for line in reversed(stderr.splitlines()) if line.startswith("{"))


class _Up:
    """`punie up` as a real process whose agent (ACP on stdio) waits on a pipe we hold: it runs
    until we close its stdin. Its stderr is read as it comes."""

    def __init__(self, argv: list[str]) -> None:
        self.lines: list[str] = []
        self.agent_started = threading.Event()
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, env=tiny.mlx_env())
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            if agent_let_in(line):
                self.agent_started.set()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    def wait_agent(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.agent_started.wait(0.5):
            assert self.proc.poll() is None, f"punie up exited with {self.proc.returncode}:\n{self.stderr[-4000:]}"
            assert time.monotonic() < deadline, f"no agent after {timeout:g}s:\n{self.stderr[-4000:]}"

    def finish(self, timeout: float = 120) -> int:
        """Close the agent's stdin (it exits, and punie up stops the server)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        rc = self.proc.wait(timeout)
        self.reader.join(10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _gone(port: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := server_processes(port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def test_each_lora_id_is_proven_active_and_servers_without_the_adapter_are_refused(
        built: Path, tmp_path: Path) -> None:
    project = _project(built, tmp_path / "project")
    port = free_port()
    started = time.monotonic()
    up = _Up(_punie(project, "up", "--group", "team", "--format", "json", "--set", f"server.port={port}"))
    try:
        up.wait_agent(timeout=420)
        ready = time.monotonic() - started
        url = f"server.url=http://127.0.0.1:{port}"
        nested = {name: subprocess.run(_punie(project, "up", name, "--no-check", "--format", "json", "--set", url),
                                       capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL,
                                       env=tiny.mlx_env())
                  for name in ("one", "lost", "base")}
        rc = up.finish()
    finally:
        up.kill()
    text = up.stderr
    assert rc == 0, text[-4000:]
    # The group's own server: each profile's canary on its own LoRA id, before the agent starts.
    adapters = project / "adapters"
    for name, adapter in (("one", "alpha"), ("two", "beta")):
        line = next((x for x in up.lines if "adapter active" in x and f"model id {name!r}" in x), None)
        assert line is not None and str(adapters / adapter) in line, text[-4000:]
        assert up.lines.index(line) < next(i for i, x in enumerate(up.lines) if agent_let_in(x))
    status = _status(text)
    assert status["profile"] == "team" and status["exit_code"] == 0
    assert status["canary"]["model"] == "one" and status["canary"]["verdict"] == "adapter-active"
    seen = {c["model"]: c for c in status["canaries"]}
    assert set(seen) == {"one", "two"}
    for canary in seen.values():
        # Measured: vLLM's float32 logprobs are within ~1e-6 nats of mlx_lm's; the base is 1.5-2.2 away.
        assert canary["verdict"] == "adapter-active" and canary["distance_to_adapter"] < 1e-3, canary
        assert canary["distance_to_base"] > 20 * MATCH_TOLERANCE, canary
    # The same server as an external server.url: the LoRA id it serves is active...
    one = nested["one"]
    assert one.returncode == 0, one.stderr[-3000:]
    assert "adapter active" in one.stderr and "started the agent" in one.stderr
    assert _status(one.stderr)["canary"]["verdict"] == "adapter-active"
    # ...a LoRA id it does not serve is refused before any agent starts...
    lost = nested["lost"]
    assert lost.returncode == 1, lost.stderr[-3000:]
    assert "the server is answering without the adapter" in lost.stderr
    assert "does not serve the model id 'lost'" in lost.stderr and "does not exist" in lost.stderr
    assert "hint: restart that vLLM server with each profile's LoRA" in lost.stderr
    assert not any(agent_let_in(x) for x in lost.stderr.splitlines())
    assert _status(lost.stderr)["reason"] == "adapter-not-applied"
    # ...and requests that reach the base model's id are refused: its logprobs are the base's.
    base = nested["base"]
    assert base.returncode == 1, base.stderr[-3000:]
    assert "the server is answering without the adapter" in base.stderr
    assert "match the base model alone" in base.stderr and not any(agent_let_in(x) for x in base.stderr.splitlines())
    assert _status(base.stderr)["reason"] == "adapter-not-applied"
    assert not _gone(port), "vLLM processes outlived punie up"
    print(f"group ready with both canaries checked in {ready:.1f}s")


def _misnamed_export(source: Path, cache: Path) -> Path:
    """Put, where Punie caches the PEFT export of ``source``, one whose module names vLLM cannot match
    (``base_model.model.decoder.layers...`` instead of ``base_model.model.model.layers...``): vLLM loads
    it without a word and answers as the base (a broken converter, or a stale cache)."""
    from safetensors.numpy import load_file, save_file

    from punie.adapters.peft import PEFT_WEIGHTS, ensure_exported

    target = ensure_exported(source, cache)
    tensors = load_file(str(target / PEFT_WEIGHTS))
    renamed = {k.replace("base_model.model.model.", "base_model.model.decoder."): v for k, v in tensors.items()}
    assert renamed.keys() != tensors.keys()
    save_file(renamed, str(target / PEFT_WEIGHTS), metadata={"format": "pt"})
    return target


def test_a_lora_vllm_serves_as_the_base_refuses_the_group_with_the_log_tail(built: Path, tmp_path: Path) -> None:
    from punie.launch.vllm import PEFT_CACHE
    from punie.paths import state_dir

    project = _project(built, tmp_path / "project")
    broken = _misnamed_export(project / "adapters" / "beta", state_dir(project) / PEFT_CACHE)
    port = free_port()
    proc = subprocess.run(_punie(project, "up", "--group", "team", "--format", "json", "--set", f"server.port={port}"),
                          capture_output=True, text=True, timeout=480, stdin=subprocess.DEVNULL, env=tiny.mlx_env())
    text = proc.stderr
    assert proc.returncode == 1, text[-4000:]
    assert str(broken) in text  # vLLM was given the broken export, and loaded it
    adapters = project / "adapters"
    assert f"adapter active: the canary matches {adapters / 'alpha'} on model id 'one'" in text
    assert f"the server is answering without the adapter {adapters / 'beta'} on model id 'two'" in text
    assert "match the base model alone" in text
    assert "refused: nothing is started on a server without its adapter" in text
    assert "last server log lines" in text and "team-server.log" in text
    assert "hint: vLLM loaded the LoRA but answers as the base" in text
    assert not any(agent_let_in(x) for x in text.splitlines())
    status = _status(text)
    assert status["reason"] == "adapter-not-applied" and status["exit_code"] == 1
    assert [(c["model"], c["verdict"]) for c in status["canaries"]] == [("one", "adapter-active"), ("two", "base")]
    assert not _gone(port), "vLLM processes outlived punie up"
