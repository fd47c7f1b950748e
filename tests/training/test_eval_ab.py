"""`punie eval A --vs B`: the paired A/B through the real eval path, its gate, report and records.

Each profile is a scripted OpenAI server (tests/support/fake_openai.py) that answers every prompt
of the suite right or wrong as the test decides, so the statistics' outcome is known in advance;
everything else (the suite runner over HTTP, scoring, statistics, the report files, the CLI's
exit codes, punie-adapter.json) is the real code.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from punie.cli import main
from punie.training.suite import EvalCase, Suite
from tests.support.fake_openai import Reply, serve, text_reply, tool_call_reply

TOOLS = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}}
         for n in ("read_file", "list_files", "run_command")]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_suite(per_category: int = 6, name: str = "ab") -> tuple[Suite, dict[str, tuple[Reply, Reply]]]:
    """A suite of three categories and, per prompt, its (right, wrong) answer."""
    cases: list[EvalCase] = []
    answers: dict[str, tuple[Reply, Reply]] = {}
    for i in range(per_category):
        read = EvalCase(id=f"read-{i}", prompt=f"Show me docs/file{i}.md", expect_tool="read_file",
                        expect_args=[f"docs/file{i}.md"])
        answers[read.prompt] = (tool_call_reply(("read_file", {"path": f"docs/file{i}.md"})), text_reply("I can't."))
        listing = EvalCase(id=f"list-{i}", prompt=f"What is in pkg{i}/?", expect_tool="list_files",
                           expect_args=[f"pkg{i}"])
        answers[listing.prompt] = (tool_call_reply(("list_files", {"path": f"pkg{i}"})),
                                   tool_call_reply(("read_file", {"path": "README"})))
        plain = EvalCase(id=f"plain-{i}", prompt=f"What is {i} plus 2?", no_tool=True, expect_keywords=[str(i + 2)])
        answers[plain.prompt] = (text_reply(f"It is {i + 2}."), tool_call_reply(("run_command", {"command": "bc"})))
        cases += [read, listing, plain]
    return Suite(name=name, system="sys", max_tokens=16, tools=TOOLS, cases=cases), answers


def answering(answers: dict[str, tuple[Reply, Reply]], right: Callable[[str], bool]) -> Callable[[dict[str, Any]],
                                                                                                  Reply]:
    """A reply source: the right answer to the prompts ``right`` accepts, the wrong one to the others."""

    def reply(body: dict[str, Any]) -> Reply:
        prompt = body["messages"][-1]["content"]
        good, bad = answers[prompt]
        return good if right(prompt) else bad

    return reply


@contextmanager
def two_profiles(tmp_path: Path, candidate: Callable[[dict[str, Any]], Reply],
                 baseline: Callable[[dict[str, Any]], Reply], *, extra: str = "", requests: int = 400
                 ) -> Iterator[tuple[Path, Any, Any]]:
    """``demo`` (the candidate) and ``plain`` (the baseline), each on its scripted server."""
    with ExitStack() as stack:
        cand = stack.enter_context(serve([candidate] * requests))
        base = stack.enter_context(serve([baseline] * requests))
        config = tmp_path / "punie.toml"
        config.write_text(f'[profiles.demo]\nmodel = "m"\nserver.url = "{cand.url}"\n{extra}'
                          f'[profiles.plain]\nmodel = "m"\nserver.url = "{base.url}"\n{extra}')
        yield config, cand, base


def run_eval(config: Path, suite_file: Path, *args: str) -> Result:
    return CliRunner().invoke(main, ["--config", str(config), "eval", "demo", "--vs", "plain", "--suite",
                                     str(suite_file), *args])


def write_suite(tmp_path: Path, suite: Suite) -> Path:
    path = tmp_path / f"{suite.name}.json"
    path.write_text(suite.model_dump_json())
    return path


@pytest.mark.slow
def test_gate_better_passes_when_the_candidate_is_significantly_better(tmp_path: Path) -> None:
    suite, answers = make_suite()
    wrong_for_baseline = {c.prompt for c in suite.cases[::2]}  # the baseline fails 9 of 18
    with two_profiles(tmp_path, answering(answers, lambda p: True),
                      answering(answers, lambda p: p not in wrong_for_baseline)) as (config, cand, base):
        result = run_eval(config, write_suite(tmp_path, suite), "--gate", "better", "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    overall = report["greedy"]["overall"]
    assert overall["record"] == {"wins": 9, "ties": 9, "losses": 0}
    assert overall["difference"]["low"] > 0 and overall["verdict"] == "better"
    assert overall["mcnemar"]["candidate_only"] == 9 and overall["mcnemar"]["p_value"] == pytest.approx(2 / 2**9)
    assert report["gate"] == {"gate": "better", "passed": True, "reason": report["gate"]["reason"]}
    assert set(report["greedy"]["categories"]) == {"read_file", "list_files", "no-tool"}
    assert len(cand.requests) == len(base.requests) == len(suite.cases)  # the same prompts, once each, greedy
    # asked concurrently: the same prompts on both sides, in any order
    assert sorted(json.dumps(r["messages"]) for r in cand.requests) == sorted(
        json.dumps(r["messages"]) for r in base.requests)
    assert all(r["temperature"] == 0.0 for r in cand.requests + base.requests)


@pytest.mark.slow
def test_gate_better_fails_when_the_candidate_is_not_significantly_better(tmp_path: Path) -> None:
    """Two wins and a loss in 18 cases: a positive mean, an interval across 0, exit 1 with the reason."""
    suite, answers = make_suite()
    prompts = [c.prompt for c in suite.cases]
    cand_wrong, base_wrong = {prompts[0]}, {prompts[1], prompts[2]}
    candidate = answering(answers, lambda p: p not in cand_wrong)
    baseline = answering(answers, lambda p: p not in base_wrong)
    with two_profiles(tmp_path, candidate, baseline) as (config, _, _):
        result = run_eval(config, write_suite(tmp_path, suite), "--gate", "better")
    assert result.exit_code == 1, result.output + result.stderr
    assert "punie: error: gate better failed: not significantly better" in result.stderr
    summary = next(line for line in result.stdout.splitlines() if line.startswith("suite ab:"))
    assert "inconclusive" in summary and "(+0.06)" in summary  # the report is printed before the exit
    assert "gate better: FAILED" in result.stdout
    with two_profiles(tmp_path, candidate, baseline) as (config, _, _):
        not_worse = run_eval(config, write_suite(tmp_path, suite), "--gate", "not-worse")
    assert not_worse.exit_code == 0, not_worse.output + not_worse.stderr


@pytest.mark.slow
def test_the_gate_exit_code_of_the_punie_process(tmp_path: Path) -> None:
    """The installed entry point, in its own process: exit 1 and the reason on stderr, the JSON
    report on stdout; exit 0 for the gate that passes on the same answers."""
    import os
    import subprocess

    suite, answers = make_suite(per_category=3)
    suite_file = write_suite(tmp_path, suite)
    same = answering(answers, lambda p: "plus" not in p)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUNIE_")}
    with two_profiles(tmp_path, same, same) as (config, _, _):
        runs = {gate: subprocess.run(
            [sys.executable, "-m", "punie", "--config", str(config), "eval", "demo", "--vs", "plain", "--suite",
             str(suite_file), "--gate", gate, "--format", "json"],
            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120) for gate in ("better", "not-worse")}
    better, not_worse = runs["better"], runs["not-worse"]
    assert better.returncode == 1, better.stderr
    assert "punie: error: gate better failed: not significantly better: mean difference +0.000" in better.stderr
    assert json.loads(better.stdout)["gate"]["passed"] is False
    assert not_worse.returncode == 0, not_worse.stderr
    assert json.loads(not_worse.stdout)["greedy"]["overall"]["record"] == {"wins": 0, "ties": 9, "losses": 0}


def test_gate_not_worse_fails_when_the_candidate_is_significantly_worse(tmp_path: Path) -> None:
    suite, answers = make_suite()
    worse = {c.prompt for c in suite.cases if c.id.startswith(("read", "list"))}
    with two_profiles(tmp_path, answering(answers, lambda p: p not in worse),
                      answering(answers, lambda p: True)) as (config, _, _):
        result = run_eval(config, write_suite(tmp_path, suite), "--gate", "not-worse", "--format", "json")
    assert result.exit_code == 1
    assert "gate not-worse failed: significantly worse" in result.stderr
    report = json.loads(result.stdout)
    assert report["greedy"]["overall"]["verdict"] == "worse"
    assert report["greedy"]["categories"]["no-tool"]["verdict"] == "inconclusive"
    assert report["greedy"]["categories"]["read_file"]["difference"]["high"] < 0


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_report_files_name_every_category_and_the_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    suite, answers = make_suite(per_category=4)
    with two_profiles(tmp_path, answering(answers, lambda p: True),
                      answering(answers, lambda p: "plus" in p)) as (config, _, _):
        result = run_eval(config, write_suite(tmp_path, suite), "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    report = json.loads(result.stdout)
    folder = tmp_path / ".punie" / "eval"
    (stem,) = {p.stem for p in folder.iterdir()}
    assert stem.startswith("demo-vs-plain-")
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".md", ".png"]
    assert report["saved_to"] == str(folder / f"{stem}.json")
    assert report["files"] == [str(folder / f"{stem}.md"), str(folder / f"{stem}.png")]
    width, height = _png_size((folder / f"{stem}.png").read_bytes())
    assert width > 400 and height > 100
    text = (folder / f"{stem}.md").read_text()
    for category in ("read_file", "list_files", "no-tool"):
        assert f"| {category} | 4 |" in text
    assert f"![Per-category scores and differences]({stem}.png)" in text
    assert "Verdict: **better**" in text and "McNemar exact p" in text
    assert all(f"| {c.id} |" in text for c in suite.cases)


@pytest.mark.slow
def test_without_matplotlib_the_report_says_how_to_get_the_chart(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from punie.training.report import NO_CHART

    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    suite, answers = make_suite(per_category=2)
    with two_profiles(tmp_path, answering(answers, lambda p: True), answering(answers, lambda p: False)) as (
            config, _, _):
        result = run_eval(config, write_suite(tmp_path, suite))
    assert result.exit_code == 0, result.output + result.stderr
    folder = tmp_path / ".punie" / "eval"
    assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".md"]
    (md,) = folder.glob("*.md")
    text = md.read_text()
    assert NO_CHART in text and "punie[report]" in text and "![" not in text
    assert "| no-tool | 2 |" in text


@pytest.mark.slow
def test_samples_are_asked_at_the_profiles_temperature_and_compared(tmp_path: Path) -> None:
    suite, answers = make_suite(per_category=3)
    with two_profiles(tmp_path, answering(answers, lambda p: True), answering(answers, lambda p: "plus" in p),
                      extra="agent.temperature = 0.8\nserver.top_p = 0.9\n") as (config, cand, base):
        result = run_eval(config, write_suite(tmp_path, suite), "--samples", "2", "--format", "json")
    assert result.exit_code == 0, result.output + result.stderr
    for fake in (cand, base):
        # each case once greedy and twice sampled; asked concurrently, so in any order
        greedy = [r["messages"][-1]["content"] for r in fake.requests if r["temperature"] == 0.0]
        sampled = [r["messages"][-1]["content"] for r in fake.requests if r["temperature"] == 0.8]
        assert len(greedy) + len(sampled) == len(fake.requests)
        assert sorted(greedy) == sorted(c.prompt for c in suite.cases)
        assert sorted(sampled) == sorted(c.prompt for c in suite.cases for _ in range(2))
        assert all(r.get("top_p") == 0.9 for r in fake.requests if r["temperature"] == 0.8)
        assert all("seed" not in r for r in fake.requests if r["temperature"] == 0.0)
    # Sample j of case i has one seed on both sides (common random numbers), a different one elsewhere.
    seeds = [sorted((r["messages"][-1]["content"], r.get("seed")) for r in fake.requests if r["temperature"] == 0.8)
             for fake in (cand, base)]
    assert seeds[0] == seeds[1] and len({seed for _, seed in seeds[0]}) == 2 * len(suite.cases)
    report = json.loads(result.stdout)
    assert report["samples"] == 2 and report["candidate"]["temperature"] == 0.8
    assert [len(s) for s in report["candidate"]["sampled"]] == [2] * len(suite.cases)
    sampled = report["sampled"]
    assert sampled["mode"] == "sampled" and sampled["overall"]["n"] == len(suite.cases)
    assert sampled["overall"]["candidate_mean"] == 1.0
    # Progress on stderr: every answer of both sides, numbered, with an ETA.
    planned = 2 * len(suite.cases) * 3
    assert f"({planned}/{planned}, ETA 0s)" in result.stderr
    assert "plain: case 1/9 read-0 sample 2" in result.stderr


def test_samples_at_temperature_zero_are_refused(tmp_path: Path) -> None:
    suite, answers = make_suite(per_category=1)
    with two_profiles(tmp_path, answering(answers, lambda p: True), answering(answers, lambda p: True),
                      extra="agent.temperature = 0\n") as (config, cand, _):
        result = run_eval(config, write_suite(tmp_path, suite), "--samples", "3")
    assert result.exit_code == 2
    assert "samples at temperature 0" in result.stderr and "agent.temperature" in result.stderr
    assert cand.requests == []


def test_the_api_returns_the_ab_and_reports_progress(tmp_path: Path) -> None:
    import punie.api as punie

    suite, answers = make_suite(per_category=4)
    events: list[Any] = []
    with two_profiles(tmp_path, answering(answers, lambda p: True),
                      answering(answers, lambda p: "docs" in p)) as (config, _, _):
        profiles = punie.load_profiles(config)
        result = punie.evaluate(profiles[0], baseline=profiles[1], suite=write_suite(tmp_path, suite),
                                gate="better", on_event=events.append)
    assert isinstance(result.comparison, punie.Comparison)
    assert result.verdict == "better" and result.gate_passed is True
    low, high = result.interval
    assert 0 < low <= result.improvement <= high
    assert result.p_value < 0.05
    assert {o.category for o in result.outcomes} == {"read_file", "list_files", "no-tool"}
    assert sum(o.outcome == "win" for o in result.outcomes) == 8
    answered = [e for e in events if e.kind == "case"]
    assert [e.done for e in answered] == list(range(1, 2 * len(suite.cases) + 1))
    assert all(e.planned == 2 * len(suite.cases) and e.eta_seconds is not None for e in answered)
    assert answered[-1].eta_seconds == 0.0
    assert re.search(r"case \d+/12 \S+ \d\.\d\d \(24/24, ETA 0s\)", answered[-1].describe())
    labels = {e.label for e in answered}
    assert len(labels) == 2
    for label in labels:  # every case answered once on each side (in the order the answers came)
        assert sorted(e.index for e in answered if e.label == label) == list(range(12))
    assert result.report.saved_to is None  # no results_dir: nothing written


@pytest.mark.slow
def test_the_same_seed_gives_the_same_report(tmp_path: Path) -> None:
    suite, answers = make_suite(per_category=4)
    outputs = []
    for _ in range(2):
        with two_profiles(tmp_path, answering(answers, lambda p: "pkg" not in p),
                          answering(answers, lambda p: "plus" not in p)) as (config, _, _):
            result = run_eval(config, write_suite(tmp_path, suite), "--seed", "7", "--format", "json")
        assert result.exit_code == 0, result.output + result.stderr
        outputs.append(json.loads(result.stdout)["greedy"])
    assert outputs[0] == outputs[1]
    assert outputs[0]["overall"]["difference"]["seed"] == 7


def _fake_adapter(project: Path, name: str) -> Path:
    folder = project / "adapters" / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"model": "m", "num_layers": 2,
                                                            "lora_parameters": {"rank": 4, "scale": 10.0}}))
    (folder / "adapters.safetensors").write_bytes(b"x" * 64)
    return folder


@pytest.mark.slow
def test_best_ranks_by_the_lower_bound_recorded_by_eval(tmp_path: Path) -> None:
    """``lucky`` has the higher mean on a small suite, ``steady`` the higher lower bound on a big one:
    best is steady. An old record with a mean only ranks below both."""
    from punie.adapters.registry import read_meta, resolve_adapter, update_meta

    small, small_answers = make_suite(per_category=2, name="small")  # 6 cases
    big, big_answers = make_suite(per_category=10, name="big")  # 30 cases
    _fake_adapter(tmp_path, "lucky")
    _fake_adapter(tmp_path, "steady")
    old = _fake_adapter(tmp_path, "old")
    update_meta(old, score=0.99)  # recorded before intervals existed
    lucky_wrong = {small.cases[0].prompt}  # 5 of 6 right: mean 0.83, lower bound 0.5
    steady_wrong = {c.prompt for c in big.cases[:6]}  # 24 of 30 right: mean 0.8, lower bound about 0.65
    runs = [("lucky", small, answering(small_answers, lambda p: p not in lucky_wrong), small_answers),
            ("steady", big, answering(big_answers, lambda p: p not in steady_wrong), big_answers)]
    for adapter, suite, candidate, answers in runs:
        with two_profiles(tmp_path, candidate, answering(answers, lambda p: False),
                          extra=f'adapter = "{adapter}"\n') as (config, _, _):
            result = run_eval(config, write_suite(tmp_path, suite), "--record")
        assert result.exit_code == 0, result.output + result.stderr
    metas = {name: read_meta(tmp_path / "adapters" / name) for name in ("lucky", "steady", "old")}
    lucky, steady = metas["lucky"], metas["steady"]
    assert lucky is not None and steady is not None and lucky.score_interval and steady.score_interval
    assert lucky.score > steady.score  # by the mean, lucky would win
    assert steady.score_interval[0] > lucky.score_interval[0]
    entry = steady.eval["suites"]["big"] if steady.eval else {}
    assert entry["interval"] == list(steady.score_interval) and entry["difference"]["low"] > 0
    assert 0 <= entry["mcnemar_p"] < 0.05
    assert resolve_adapter("best", tmp_path) == (tmp_path / "adapters" / "steady").resolve()
    listed = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), "adapters", "list"])
    assert listed.exit_code == 0, listed.output
    low, high = steady.score_interval
    assert f"0.80 [{low:.2f}, {high:.2f}]" in next(x for x in listed.stdout.splitlines() if x.startswith("steady"))
    shutil.rmtree(tmp_path / "adapters" / "steady")
    shutil.rmtree(tmp_path / "adapters" / "lucky")
    assert resolve_adapter("best", tmp_path) == old.resolve()  # mean-only records still count


@pytest.mark.slow
@pytest.mark.mlx
@pytest.mark.timeout(300)
def test_samples_are_reproducible_on_a_real_mlx_server(tmp_path: Path, tiny_model: Path) -> None:
    """The seeds `ask_suite` sends make mlx_lm.server's samples repeatable: the same seed draws the
    same answers, another seed others (a random tiny model at temperature 1 says something else)."""
    import punie.api as punie
    from punie.training.evaluate import ask_suite
    from punie.training.evaluate import serve as serve_profile

    suite = Suite(name="two", max_tokens=8, cases=[
        EvalCase(id="a", prompt="Say something.", expect_keywords=["x"]),
        EvalCase(id="b", prompt="Say something else.", expect_keywords=["y"])])
    profile = punie.load_profile("t", {"profiles": {"t": {"model": str(tiny_model),
                                                          "server": {"ready_timeout": 120}}}})
    with serve_profile(profile, log_dir=tmp_path) as (url, adapter):
        assert adapter is None

        def texts(seed: int) -> list[list[str]]:
            greedy, sampled = ask_suite(url, suite, label="t", samples=3, temperature=1.0, seed=seed)
            assert all(r.error is None for r in greedy + [r for s in sampled for r in s])
            return [[r.text for r in answers] for answers in sampled]

        first, again, other = texts(1), texts(1), texts(2)
    assert first == again
    assert first != other
    assert len({t for answers in first for t in answers}) > 1  # sampled, not the greedy answer repeated
