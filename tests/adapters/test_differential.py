"""Differential tests: `punie check`'s verdict on every corpus pair equals what mlx_lm itself does.

The corpus (tests/support/corpus.py) is built once per run; the oracle
(tests/support/oracle.py) loads each pair with mlx_lm and generates one token,
all pairs in one subprocess. Where Punie is deliberately stricter than mlx_lm,
`STRICTER` lists the pair and the reason; nothing else may differ.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from punie.adapters.fit import fit_adapter
from punie.adapters.inspect import inspect_adapter
from punie.errors import PunieError
from punie.findings import Finding
from punie.weights.headers import read_model_shapes
from tests.support.corpus import Pair, build_corpus
from tests.support.oracle import run_oracle

pytestmark = [pytest.mark.mlx, pytest.mark.slow]

#: Pairs mlx_lm loads but Punie refuses on purpose, with the reason.
STRICTER: dict[str, str] = {
    "nl5@dense": "num_layers 5 on a 2-layer model: mlx_lm silently wraps all layers; the config is wrong",
    "empty@dense": "an adapter with no tensors changes nothing: certainly a broken save, not an adapter",
    "overlap@dense": "two tensors claim the same bytes of adapters.safetensors: mx.load reads them, but the "
                     "file is corrupt (safetensors forbids overlapping offsets)",
}


def punie_verdict(model: Path, adapter: Path) -> tuple[bool, list[Finding]]:
    """Punie's verdict from headers only: (loads, the errors found)."""
    try:
        shapes = read_model_shapes(model)
    except PunieError as exc:
        return False, [Finding("error", "model", exc.where or str(model), exc.message)]
    inspection = inspect_adapter(adapter)
    findings = [*shapes.problems, *inspection.findings, *fit_adapter(inspection, shapes)]
    errors = [f for f in findings if f.severity == "error"]
    return not errors, errors


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Pair], dict[str, dict]]:
    pytest.importorskip("mlx_lm")
    root = tmp_path_factory.mktemp("differential")
    pairs = build_corpus(root)
    truth = run_oracle([{"id": p.id, "model": str(p.model), "adapter": str(p.adapter)} for p in pairs],
                       root / "oracle")
    return pairs, truth


def test_corpus_covers_every_kind(corpus: tuple[list[Pair], dict[str, dict]]) -> None:
    pairs, truth = corpus
    assert len(pairs) >= 60
    ids = {p.id for p in pairs}
    for kind in ("@q4", "@q8", "@mixed36", "@mixtral-hf", "@mixtral-stacked", "@sharded", "dora", "keys-",
                 "nl", "full-", "truncated", "peft", "checkpoints-only", "deep-json"):
        assert any(kind in i for i in ids), kind
    oks = [truth[p.id]["ok"] for p in pairs]
    assert 15 < sum(oks) < len(oks) - 15  # both verdicts well represented


def test_verdicts_agree_with_mlx_lm(corpus: tuple[list[Pair], dict[str, dict]]) -> None:
    pairs, truth = corpus
    disagree = []
    for pair in pairs:
        ok, errors = punie_verdict(pair.model, pair.adapter)
        expected = truth[pair.id]["ok"] and pair.id not in STRICTER
        if ok != expected:
            disagree.append(f"{pair.id}: mlx_lm {'loads' if truth[pair.id]['ok'] else 'refuses'} "
                            f"({truth[pair.id]['error']}), punie {'ok' if ok else [e.code for e in errors]}")
    assert not disagree, "\n".join(disagree)


def test_stricter_cases_are_really_loaded_by_mlx_lm(corpus: tuple[list[Pair], dict[str, dict]]) -> None:
    _, truth = corpus
    for pid in STRICTER:
        assert truth[pid]["ok"], f"{pid} is refused by mlx_lm too: remove it from STRICTER"


def test_punie_check_end_to_end_agrees(corpus: tuple[list[Pair], dict[str, dict]], tmp_path: Path) -> None:
    """The same verdicts through profiles and `check_profiles`, the path `punie check` and `punie up` take."""
    import json

    from punie.checks import check_profiles
    from punie.config import load_profiles

    pairs, truth = corpus
    names = {f"p{i}": pair for i, pair in enumerate(pairs)}
    lines = []
    for name, pair in names.items():
        lines.append(f"[profiles.{name}]\nmodel = {json.dumps(str(pair.model))}\n"
                     f"adapter = {json.dumps(str(pair.adapter))}\n")
    (tmp_path / "punie.toml").write_text("".join(lines))
    report = check_profiles(load_profiles(config=str(tmp_path / "punie.toml")))
    disagree = []
    for prof in report.profiles:
        pair = names[prof.name]
        expected = truth[pair.id]["ok"] and pair.id not in STRICTER
        errors = [p.code for p in prof.problems if p.severity == "error" and p.code not in ("port", "host")]
        if (not errors) != expected:
            disagree.append(f"{pair.id}: mlx_lm {truth[pair.id]}, punie check {errors}")
    assert not disagree, "\n".join(disagree)
