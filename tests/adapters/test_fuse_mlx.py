"""Fuse and verify with real mlx_lm on tiny offline models.

Two bases. ``dense``: the float32 tiny model with the session's adapter, its LoRA scale raised
x50 so the canary tells it from the base (as in test_canary_mlx). ``q2``: the tiny model
quantized to 2 bits (group 32) with an adapter trained on it, scale x10: the adapter moves the
canary by ~0.23 nats, but each weight's delta is far below a 2-bit quantization step, so
re-quantizing the fused layers to the base's own 2 bits (``mlx_lm fuse``'s default) rounds the
delta away and the fused model answers as the base (mlx-lm issue 1172; measured: ~0.01 nats from
the base, ~0.23 from the adapter), while a de-quantized fuse keeps it exactly. Quantizing the
whole fused model to 2 bits (embeddings too) drifts away from both: refused as well.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.adapters.fuse import INDEX_FILE, MANIFEST_FILE, FuseSpec, canary_digest, read_manifest
from punie.adapters.metadata import read_canary, update_meta
from punie.cli import main
from punie.config import load_profile
from punie.config.models import ResolvedProfile
from punie.launch import prepare, run_up
from punie.launch.canary import MATCH_TOLERANCE, MIN_SEPARATION
from punie.launch.fuse import FuseRefused, ensure_fused
from punie.paths import fused_models_dir
from tests.support import tiny
from tests.support.launch_helpers import agent_let_in
from tests.support.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.mlx]
pytest.importorskip("mlx_lm")


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_adapter: Path,
            tiny_dataset: Path) -> Path:
    root = tmp_path_factory.mktemp("fuse-project")
    tiny.scaled_adapter_copy(tiny_adapter, root / "adapters" / "strong", 50)
    q2 = tiny.build_tiny_model(root / "models" / "q2", quantize_bits=2)
    trained = tiny.train_tiny_adapter(q2, root / "trained" / "q2-adapter", tiny_dataset)
    tiny.scaled_adapter_copy(trained, root / "adapters" / "q2-strong", 10)
    (root / "punie.toml").write_text(f"""
[defaults.server]
ready_timeout = 60

[profiles.tiny]
model = {json.dumps(str(tiny_model))}
adapter = "strong"

[profiles.tiny-fused]
extends = "tiny"
fuse = {{ enabled = true }}

[profiles.q2]
model = {json.dumps(str(q2))}
adapter = "q2-strong"

[profiles.q2-requantized]
extends = "q2"
fuse = {{ enabled = true, bits = "base" }}
""")
    for name, profile in (("strong", "tiny"), ("q2-strong", "q2")):
        result = CliRunner().invoke(main, ["--config", str(root / "punie.toml"), "adapters", "stamp", name,
                                           "--base", profile])
        assert result.exit_code == 0, result.output
    return root


def _resolved(project: Path, name: str) -> ResolvedProfile:
    resolved = load_profile(name, config=project / "punie.toml")
    options = resolved.profile.server.model_copy(update={"port": free_port()})
    return resolved.model_copy(update={"profile": resolved.profile.model_copy(update={"server": options})})


def _fuse(project: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["--config", str(project / "punie.toml"), "adapters", "fuse", *args])
    return result.exit_code, result.output


def test_fuse_writes_a_verified_entry_with_the_index_and_reuses_it(project: Path) -> None:
    code, out = _fuse(project, "--base", "tiny", "--format", "json")
    assert code == 0, out
    first = json.loads(out[out.index("{"):])
    entry = Path(first["path"])
    assert entry.parent == fused_models_dir()
    assert first["check"]["verdict"] == "adapter-active"
    assert first["check"]["distance_to_adapter"] < 1e-3  # dense fuse: the delta is kept exactly
    assert first["check"]["distance_to_base"] > MIN_SEPARATION
    index = json.loads((entry / INDEX_FILE).read_text())  # what mlx.distributed's sharded_load reads
    assert set(index["weight_map"].values()) == {"model.safetensors"}
    manifest = read_manifest(entry)
    assert manifest is not None and set(manifest.files) >= {INDEX_FILE, "model.safetensors", "config.json"}
    assert "quantization" not in json.loads((entry / "config.json").read_text())
    weights_mtime = (entry / "model.safetensors").stat().st_mtime_ns
    manifest_mtime = (entry / MANIFEST_FILE).stat().st_mtime_ns

    events: list[tuple[str, str]] = []
    canary = read_canary(project / "adapters" / "strong")
    assert canary is not None
    resolved = load_profile("tiny", config=project / "punie.toml")
    again = ensure_fused(resolved.profile.model, project / "adapters" / "strong", FuseSpec(), canary=canary,
                         on_event=lambda kind, detail: events.append((kind, detail)))
    assert again.reused and again.path == entry
    assert [kind for kind, _ in events] == ["reused"]  # no child ran: nothing fused, nothing verified
    assert (entry / "model.safetensors").stat().st_mtime_ns == weights_mtime
    assert (entry / MANIFEST_FILE).stat().st_mtime_ns == manifest_mtime

    code, out = _fuse(project, "strong", "--base", "tiny")
    assert code == 0, out
    assert out.startswith("reused ") and str(entry) in out
    assert not [p for p in entry.parent.iterdir() if p.name.startswith(".")]  # no work dir left behind


def test_a_restamped_canary_is_verified_again_on_the_cached_entry(project: Path, tmp_path: Path) -> None:
    model = load_profile("tiny", config=project / "punie.toml").profile.model
    copy = tmp_path / "strong"  # same config and weights: the same cache entry
    shutil.copytree(project / "adapters" / "strong", copy)
    canary = read_canary(copy)
    assert canary is not None
    first = ensure_fused(model, copy, FuseSpec(), canary=canary)
    nudged = canary.model_copy(update={"adapter": [t.model_copy(update={"logprob": t.logprob + 0.001})
                                                   for t in canary.adapter]})
    update_meta(copy, canary=nudged.model_dump(mode="json"))
    events: list[str] = []
    again = ensure_fused(model, copy, FuseSpec(), canary=nudged, on_event=lambda kind, detail: events.append(kind))
    assert events == ["verifying", "reused"] and again.path == first.path and again.reused
    assert 0.0005 < again.check.to_adapter < 0.002  # measured against the canary it has now
    manifest = read_manifest(again.path)
    assert manifest is not None and manifest.check.canary == canary_digest(nudged)


def test_a_corrupted_entry_is_detected_and_fused_again(project: Path) -> None:
    canary = read_canary(project / "adapters" / "strong")
    assert canary is not None
    model = load_profile("tiny", config=project / "punie.toml").profile.model
    adapter = project / "adapters" / "strong"
    entry = ensure_fused(model, adapter, FuseSpec(dtype="float32"), canary=canary).path
    weights = entry / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as fh:  # one flipped byte in the data, same size
        fh.seek(size - 100)
        byte = fh.read(1)
        fh.seek(size - 100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    events: list[tuple[str, str]] = []
    fused = ensure_fused(model, adapter, FuseSpec(dtype="float32"), canary=canary,
                         on_event=lambda kind, detail: events.append((kind, detail)))
    kinds = [kind for kind, _ in events]
    assert kinds == ["corrupt", "fusing", "fused"], events
    assert "model.safetensors's content changed" in events[0][1]
    assert not fused.reused and fused.check.ok

    (entry / INDEX_FILE).unlink()  # a half-copied entry
    events.clear()
    ensure_fused(model, adapter, FuseSpec(dtype="float32"), canary=canary,
                 on_event=lambda kind, detail: events.append((kind, detail)))
    assert events[0][0] == "corrupt" and f"{INDEX_FILE} is missing" in events[0][1]
    assert (entry / INDEX_FILE).is_file()


def test_requantizing_until_the_delta_is_lost_is_refused(project: Path) -> None:
    canary = read_canary(project / "adapters" / "q2-strong")
    assert canary is not None
    model = load_profile("q2", config=project / "punie.toml").profile.model
    before = set(fused_models_dir().iterdir()) if fused_models_dir().exists() else set()
    with pytest.raises(FuseRefused) as info:
        ensure_fused(model, project / "adapters" / "q2-strong", FuseSpec(bits="base"), canary=canary)
    check = info.value.check
    assert check.verdict == "base"
    assert check.separation > 2 * MIN_SEPARATION  # the canary really tells the adapter from the base...
    assert check.to_base < MATCH_TOLERANCE / 2  # ...and the fused model answers as the base
    assert check.to_adapter > MIN_SEPARATION
    message = info.value.render()
    assert "answers as the base alone" in message
    assert f"to the adapter applied on the fly {check.to_adapter:.4f}" in message
    assert f"to the base alone {check.to_base:.4f}" in message
    assert "mlx-lm issue 1172" in message and "without re-quantizing" in message

    with pytest.raises(FuseRefused) as info:  # every layer, embeddings too, to 2 bits: drifts off both
        ensure_fused(model, project / "adapters" / "q2-strong", FuseSpec(bits=2, group_size=32), canary=canary)
    drift = info.value.check
    assert drift.verdict == "neither" and drift.to_adapter > MATCH_TOLERANCE and drift.to_base > MATCH_TOLERANCE
    assert "drifted away from the adapter" in info.value.render() and "or with more bits" in info.value.render()
    after = {p for p in fused_models_dir().iterdir() if not p.name.endswith(".lock")}
    assert after <= before  # nothing refused was cached, no work dir left

    # The same adapter fused without re-quantizing (de-quantized) keeps its delta.
    fused = ensure_fused(model, project / "adapters" / "q2-strong", FuseSpec(), canary=canary)
    assert fused.check.verdict == "adapter-active" and fused.check.to_adapter < 1e-3


def test_a_dry_run_names_the_entry_and_fuses_nothing(project: Path) -> None:
    resolved = _resolved(project, "tiny-fused")
    fuse = resolved.profile.fuse.model_copy(update={"dtype": "bfloat16"})  # an entry no other test makes
    resolved = resolved.model_copy(update={"profile": resolved.profile.model_copy(update={"fuse": fuse})})
    plan = prepare(resolved, check=False, provision=False)
    assert plan.model is not None and Path(plan.model).parent == fused_models_dir()
    assert plan.adapter is None and not Path(plan.model).exists()
    assert f"--model {plan.model}" in plan.render_text()


def test_punie_up_serves_the_fused_model_and_its_canary_passes(project: Path) -> None:
    resolved = _resolved(project, "tiny-fused")
    plan = prepare(resolved, check=False)
    assert plan.adapter is None and plan.model is not None
    assert Path(plan.model).parent == fused_models_dir()
    assert plan.server_argv is not None and "--adapter-path" not in plan.server_argv
    assert plan.server_argv[plan.server_argv.index("--model") + 1] == plan.model
    assert plan.canary is not None and Path(plan.canary.adapter) == (project / "adapters" / "strong").resolve()

    lines: list[str] = []
    outcome = run_up(resolved, check=False, sink=lines.append, grace=10, agent_argv=[sys.executable, "-c", "pass"])
    text = "\n".join(lines)
    assert outcome.exit_code == 0, text
    assert outcome.plan is not None and outcome.plan.model == plan.model
    assert outcome.canary is not None and outcome.canary["verdict"] == "adapter-active", outcome.canary
    assert outcome.canary["distance_to_adapter"] <= MATCH_TOLERANCE


def test_punie_up_refuses_a_fused_model_that_lost_the_adapter(project: Path, tmp_path: Path) -> None:
    marker = tmp_path / "agent-started"
    env = tiny.mlx_env({"PUNIE_CACHE_DIR": os.environ["PUNIE_CACHE_DIR"]})
    proc = subprocess.run(
        [sys.executable, "-m", "punie", "--config", str(project / "punie.toml"), "up", "q2-requantized",
         "--no-check", "--set", f"server.port={free_port()}"],
        capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL, env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    assert "fused model refused" in proc.stderr and "answers as the base alone" in proc.stderr
    assert "to the adapter applied on the fly" in proc.stderr and "to the base alone" in proc.stderr
    assert "hint:" in proc.stderr and "without re-quantizing" in proc.stderr
    assert not any(agent_let_in(x) for x in (proc.stdout + proc.stderr).splitlines()) and not marker.exists()


def test_a_composition_fuses_too(project: Path, tiny_model: Path) -> None:
    toml = project / "punie.toml"
    text = toml.read_text()
    try:
        toml.write_text(text + f'\n[profiles.composed]\nmodel = {json.dumps(str(tiny_model))}\n'
                        'adapters = ["strong", { path = "strong", weight = 0.5 }]\nfuse = { enabled = true }\n')
        resolved = _resolved(project, "composed")
        plan = prepare(resolved, check=False)
    finally:
        toml.write_text(text)
    assert plan.adapter is None and plan.model is not None and Path(plan.model).parent == fused_models_dir()
    assert plan.canary is not None and "/.punie/composed/" in plan.canary.adapter
    manifest = read_manifest(Path(plan.model))
    assert manifest is not None and manifest.adapter == plan.canary.adapter
    assert manifest.check.verdict == "adapter-active" and manifest.check.distance_to_adapter < 1e-3
