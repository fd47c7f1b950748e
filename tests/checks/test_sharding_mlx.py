"""`check_sharding` against the oracle: real ``mlx.launch --backend ring`` runs of mlx_lm's ``sharded_load``.

Each case runs tests/support/sharded_probe.py on N ranks on localhost (ring over TCP, CPU) and
asks whether mlx_lm loads the model and answers one prompt. Punie's findings must say "error"
exactly when it does not, and a sharded answer must equal the one-process answer.
The cases: the tiny fused model (4 heads, 2 kv heads, 2 layers, intermediate 128) over 2 ranks by
tensor and by pipeline (both work), 3 pipeline ranks for 2 layers and 3 tensor ranks for 4 heads
(both fail); a fused model with ONE kv head over 2 tensor ranks (mlx_lm splits the weights without a
word and fails at the first token); the tiny base without an index file (FileNotFoundError).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from punie.adapters.fuse import FuseSpec
from punie.checks.sharding import check_sharding
from punie.launch.fuse import ensure_fused
from punie.launch.stamp import stamp_canary
from tests.support import tiny
from tests.support.ports import free_port_run

pytestmark = [pytest.mark.slow, pytest.mark.mlx]
pytest.importorskip("mlx_lm")

PROBE = Path(__file__).parents[1] / "support" / "sharded_probe.py"
LAUNCH = Path(sys.executable).parent / "mlx.launch"


def _fused(root: Path, base: Path, dataset: Path) -> Path:
    adapter = tiny.train_tiny_adapter(base, root / f"{base.name}-adapter", dataset, iters=6, learning_rate=2e-3)
    canary = stamp_canary(adapter, base)
    # root: a module fixture runs before the per-test isolated PUNIE_CACHE_DIR is set
    return ensure_fused(base, adapter, FuseSpec(), canary=canary, root=root / "fused").path


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path, tiny_dataset: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sharding")
    one_kv = tiny.build_tiny_model(root / "one-kv", **tiny.VLLM_TINY)  # 2 heads, 1 kv head
    no_index = root / "no-index"
    shutil.copytree(tiny_model, no_index)
    return {"fused": _fused(root, tiny_model, tiny_dataset), "one-kv": _fused(root, one_kv, tiny_dataset),
            "no-index": no_index}


def _oracle(model: Path, sharding: str, ranks: int) -> list[dict]:
    argv = [str(LAUNCH), "-n", str(ranks), "--backend", "ring", "-p", str(free_port_run(ranks)), "--python", sys.executable,
            str(PROBE), str(model), sharding]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=tiny.mlx_env(),
                          stdin=subprocess.DEVNULL)
    answers = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"rank"')]
    assert answers, (proc.returncode, proc.stdout, proc.stderr)
    # A model that loads answers on every rank; one that does not fails on some rank, and mlx.launch may
    # stop the others before they write theirs.
    if all(a["ok"] for a in answers):
        assert len(answers) == ranks, (proc.returncode, proc.stdout, proc.stderr)
    return sorted(answers, key=lambda a: a["rank"])


def _alone(model: Path) -> list[list[float]]:
    proc = subprocess.run([sys.executable, str(PROBE), str(model), "tensor"], capture_output=True, text=True,
                          timeout=120, env=tiny.mlx_env())
    answer = json.loads(proc.stdout.splitlines()[-1])
    assert answer["ok"], answer
    return answer["top"]


CASES = [
    ("fused", "tensor", 2, True),
    ("fused", "pipeline", 2, True),
    ("fused", "pipeline", 3, False),
    ("fused", "tensor", 3, False),
    ("one-kv", "tensor", 2, False),
    ("no-index", "pipeline", 2, False),
]


@pytest.mark.parametrize(("model", "sharding", "ranks", "loads"), CASES)
def test_findings_agree_with_mlx_distributed(models: dict[str, Path], model: str, sharding: str, ranks: int,
                                             loads: bool) -> None:
    findings = check_sharding(models[model], sharding, ranks)  # type: ignore[arg-type]
    answers = _oracle(models[model], sharding, ranks)
    oracle_ok = all(a["ok"] for a in answers)
    assert oracle_ok == loads, answers  # the case is what it claims to be
    assert (not [f for f in findings if f.severity == "error"]) == oracle_ok, (findings, answers)
    if oracle_ok:
        alone = _alone(models[model])
        for answer in answers:
            assert [t[0] for t in answer["top"]] == [t[0] for t in alone]
            assert max(abs(a[1] - b[1]) for a, b in zip(answer["top"], alone, strict=True)) < 1e-4
    else:
        codes = {f.code for f in findings}
        expected = {("fused", "pipeline"): "pipeline-ranks", ("fused", "tensor"): "tensor-split",
                    ("one-kv", "tensor"): "tensor-split", ("no-index", "pipeline"): "no-index"}[(model, sharding)]
        assert expected in codes, findings


def test_a_fused_model_carries_everything_sharded_load_needs(models: dict[str, Path]) -> None:
    assert check_sharding(models["fused"], "pipeline", 2) == []
    assert check_sharding(models["fused"], "tensor", 2) == []
    assert [f.code for f in check_sharding(models["no-index"], "tensor", 2)] == ["no-index"]
