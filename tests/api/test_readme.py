"""The README's Python API example, run as written on the builtin model.

It must print exactly what ``punie eval tool-calling --suite tool-calling-smoke`` reports (same suite, same baseline, same
scores per case: temperature 0 on the same model), and the shipped adapter must beat its
baseline on real tool calls: the measurement `punie eval` is for.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.launch_helpers import reap

REPO = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    """The first ```python block of the README's "Python API" section."""
    section = (REPO / "README.md").read_text(encoding="utf-8").split("## Python API", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_example_is_the_evaluation_example() -> None:
    code = readme_example()
    compile(code, "README.md", "exec")
    assert "punie.evaluate(" in code and "improvement" in code and "interval" in code


def _run_both(*commands: list[str]) -> list[tuple[int, str, str]]:
    """Run the commands side by side (each server is single-threaded on CPU: two fit on two cores)."""
    procs = [subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for cmd in commands]
    try:
        outputs = [proc.communicate(timeout=1200) for proc in procs]
    finally:
        for proc in procs:
            reap(proc)
    return [(proc.returncode, out, err) for proc, (out, err) in zip(procs, outputs, strict=True)]


@pytest.mark.slow
@pytest.mark.mlx
@pytest.mark.timeout(1500)
def test_the_readme_example_prints_what_punie_eval_prints() -> None:
    from punie.weights.builtin import ensure_builtin

    ensure_builtin("smollm2-135m-instruct")  # once per session (PUNIE_CACHE_DIR is a session temp dir)
    (rc, printed, err), (cli_rc, cli_out, cli_err) = _run_both(
        [sys.executable, "-c", readme_example()],
        [sys.executable, "-m", "punie", "eval", "tool-calling", "--suite", "tool-calling-smoke", "--format", "json"],
    )
    assert rc == 0, err[-3000:]
    assert "case 1/" in err and "ETA" in err  # the example's progress, on stderr
    assert cli_rc == 0, cli_err[-3000:]
    report = json.loads(cli_out)
    base, cand = report["baseline"], report["candidate"]
    overall = report["greedy"]["overall"]
    diff = overall["difference"]
    expected = [f"suite {report['suite']}: adapter {cand['score']:.2f} vs baseline {base['score']:.2f} "
                f"({report['delta']:+.2f})",
                f"95% CI [{diff['low']:+.2f}, {diff['high']:+.2f}]: {overall['verdict']}, "
                f"McNemar p = {overall['mcnemar']['p_value']:.3g}"]
    expected += [f"  {c['id']}: {b['score']:.2f} -> {c['score']:.2f}"
                 for b, c in zip(base["cases"], cand["cases"], strict=True)]
    assert printed.splitlines() == expected
    assert cand["score"] > base["score"] + 0.2, report  # the adapter really calls tools
    assert sum(1 for c in cand["cases"] if c["score"] > 0) >= 3  # across the suite, not one lucky case
