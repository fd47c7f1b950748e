"""The public API's type hints hold: mypy --strict on `punie.api` (with its submodules) and on a typed script using it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

USAGE = '''
from __future__ import annotations

import anyio
import punie.api as punie


def gate(path: str) -> float:
    profiles: list[punie.ResolvedProfile] = punie.load_profiles(path, overrides=["server.port=9000"])
    report: punie.Report = punie.check(profiles)
    if not report.ok:
        problems: list[punie.Problem] = report.problems
        raise SystemExit(len(problems))
    result: punie.Evaluation = punie.evaluate(profiles[0], baseline=True, gate="better", samples=2,
                                              on_event=punie.print_progress)
    scores: dict[str, float] = result.cases
    low, high = result.interval
    overall: punie.PairedComparison = result.comparison.overall
    outcomes: list[punie.CaseOutcome] = result.outcomes
    passed: bool | None = result.gate_passed
    return result.improvement + sum(scores.values()) + low + high + overall.difference.low + len(outcomes) + (
        result.p_value if passed else 0.0)


async def serve_one(name: str) -> str:
    async with punie.serve(name) as server:
        url: str = server.base_url
        pid: int | None = server.pid
        return f"{url} {pid}"


def adapters() -> list[str]:
    return [info.name for info in punie.list_adapters(".")] + [punie.best_adapter().path]


anyio.run(serve_one, "demo")
'''


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One mypy cache for the module's runs: the second one reads what the first analysed (the
    libraries behind punie.api are most of the ~70 s) instead of analysing it all again. Fresh per
    session, so nothing stale is ever read."""
    return tmp_path_factory.mktemp("mypy-cache")


@pytest.mark.slow
def test_mypy_strict_accepts_the_public_api_and_its_use(tmp_path: Path, mypy_cache: Path) -> None:
    pytest.importorskip("mypy")
    usage = tmp_path / "usage.py"
    usage.write_text(USAGE, encoding="utf-8")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
           "--cache-dir", str(mypy_cache), str(REPO / "src" / "punie" / "api"), str(usage)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_mypy_rejects_a_wrong_use(tmp_path: Path, mypy_cache: Path) -> None:
    """The check above can fail: a wrong type through the public surface is reported."""
    pytest.importorskip("mypy")
    bad = tmp_path / "bad.py"
    bad.write_text("import punie.api as punie\nx: str = punie.check().ok\ny: str = punie.load_profile(3)\n",
                   encoding="utf-8")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir", str(mypy_cache),
           str(bad)]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1, result.stdout
    assert "load_profile" in result.stdout and "incompatible type" in result.stdout
