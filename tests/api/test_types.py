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


BAD = "import punie.api as punie\nx: str = punie.check().ok\ny: str = punie.load_profile(3)\n"


@pytest.fixture(scope="module")
def mypy_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """ONE mypy --strict run over punie.api, the typed use and the wrong use (each run spends most of its
    ~70 s on the libraries behind punie.api: one analysis serves both tests). Its result and the wrong
    use's path."""
    pytest.importorskip("mypy")
    root = tmp_path_factory.mktemp("mypy")
    usage, bad = root / "usage.py", root / "bad.py"
    usage.write_text(USAGE, encoding="utf-8")
    bad.write_text(BAD, encoding="utf-8")
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--no-incremental",
           "--cache-dir", str(root / "cache"), str(REPO / "src" / "punie" / "api"), str(usage), str(bad)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO), bad


def _errors(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if ": error:" in line]


@pytest.mark.slow
def test_mypy_strict_accepts_the_public_api_and_its_use(mypy_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    result, bad = mypy_run
    elsewhere = [line for line in _errors(result.stdout) if not line.startswith(str(bad))]
    assert elsewhere == [], result.stdout + result.stderr
    assert "in 1 file" in result.stdout.splitlines()[-1], result.stdout  # the wrong use's, no other


@pytest.mark.slow
def test_mypy_rejects_a_wrong_use(mypy_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """The check above can fail: a wrong type through the public surface is reported."""
    result, bad = mypy_run
    assert result.returncode == 1, result.stdout + result.stderr
    wrong = [line for line in _errors(result.stdout) if line.startswith(str(bad))]
    assert any("load_profile" in line and "incompatible type" in line for line in wrong), result.stdout
    assert any(line.startswith(f"{bad}:2:") for line in wrong), result.stdout  # bool is no str
