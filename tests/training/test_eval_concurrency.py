"""An eval asks its cases concurrently so that the server batches them (issue 20: eval speed), and
nothing else changes: results in the suite's order, every answer reported once, the same scores."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from punie.training.evaluate import EVAL_CONCURRENCY, ask_suite
from punie.training.suite import EvalCase, Suite
from tests.support.fake_openai import Reply, serve, text_reply


def _suite(n: int) -> Suite:
    return Suite(name="echo", max_tokens=8,
                 cases=[EvalCase(id=f"c{i}", prompt=f"say word{i}", expect_keywords=[f"word{i}"]) for i in range(n)])


class _InFlight:
    """A reply source that counts the requests in flight, holding each until ``hold`` are in at once
    (or ``patience`` passes), and answers with the word the prompt asks for."""

    def __init__(self, hold: int, patience: float = 20.0) -> None:
        self.hold, self.patience = hold, patience
        self.now = self.most = 0
        self.lock = threading.Lock()
        self.full = threading.Event()

    def __call__(self, body: dict[str, Any]) -> Reply:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
            if self.now >= self.hold:
                self.full.set()
        self.full.wait(self.patience)
        time.sleep(0.01)
        with self.lock:
            self.now -= 1
        prompt = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        return text_reply(prompt.split()[-1])


def test_cases_are_in_flight_together_and_come_back_in_order() -> None:
    source = _InFlight(hold=4, patience=90)  # long: a loaded machine is no reason to wait it out
    suite = _suite(12)
    seen: list[tuple[int, int | None]] = []
    with serve([source] * 12) as fake:
        started = time.monotonic()
        greedy, sampled = ask_suite(fake.url, suite, label="t", concurrency=4,
                                    on_answer=lambda i, s, r, sec: seen.append((i, s)))
        took = time.monotonic() - started
    assert source.most == 4  # never more than asked for, and really 4 at once (else the hold times out)
    assert took < source.patience  # nobody waited out the hold
    assert [r.id for r in greedy] == [c.id for c in suite.cases]
    assert [r.score for r in greedy] == [1.0] * 12  # each answer scored against its own case
    assert sorted(seen) == [(i, None) for i in range(12)] and sampled == []


def test_concurrency_one_asks_one_at_a_time() -> None:
    source = _InFlight(hold=2, patience=0.05)  # would wait for a second request that never comes
    with serve([source] * 5) as fake:
        greedy, _ = ask_suite(fake.url, _suite(5), label="t", concurrency=1)
    assert source.most == 1
    assert [r.score for r in greedy] == [1.0] * 5


def test_samples_keep_their_seeds_and_places() -> None:
    bodies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def source(body: dict[str, Any]) -> Reply:
        with lock:
            bodies.append(body)
        prompt = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        return text_reply(f"{prompt.split()[-1]} seed={body.get('seed')}")

    suite = _suite(3)
    with serve([source] * 9) as fake:
        greedy, sampled = ask_suite(fake.url, suite, label="t", samples=2, temperature=0.7, seed=5, concurrency=3)
    assert [r.id for r in greedy] == ["c0", "c1", "c2"]
    assert [[r.id for r in answers] for answers in sampled] == [["c0", "c0"], ["c1", "c1"], ["c2", "c2"]]
    seeds = {int(r.text.split("seed=")[1]) for answers in sampled for r in answers}
    assert len(seeds) == 6  # every sample its own seed, carried back into its own place
    assert all(b["temperature"] == 0.0 and "seed" not in b for b in bodies if "seed" not in b)


def test_a_bad_concurrency_is_refused() -> None:
    from punie.errors import UsageError

    with pytest.raises(UsageError):
        ask_suite("http://127.0.0.1:9/v1", _suite(1), label="t", concurrency=0)


@pytest.mark.slow
@pytest.mark.mlx
@pytest.mark.timeout(600)
def test_batched_greedy_answers_are_the_sequential_ones_on_a_real_mlx_server(tmp_path: Path,
                                                                            tiny_model: Path) -> None:
    """mlx_lm.server batches the concurrent greedy requests; the answers are the ones it gives one by
    one (the A/B's scores do not depend on the concurrency)."""
    import punie.api as punie
    from punie.training.evaluate import serve as serve_profile
    from punie.training.suite import load_suite

    suite = load_suite("tool-calling-smoke")
    profile = punie.load_profile("t", {"profiles": {"t": {"model": str(tiny_model),
                                                          "server": {"ready_timeout": 120}}}})
    with serve_profile(profile, log_dir=tmp_path) as (url, _):
        one, _ = ask_suite(url, suite, label="t", concurrency=1)
        many, _ = ask_suite(url, suite, label="t", concurrency=EVAL_CONCURRENCY)
    assert all(r.error is None for r in one + many)
    assert [r.text for r in many] == [r.text for r in one]
    assert [r.score for r in many] == [r.score for r in one]


def test_the_concurrency_comes_from_the_environment_when_set() -> None:
    from punie.errors import UsageError
    from punie.training.evaluate import eval_concurrency

    assert eval_concurrency({}) == EVAL_CONCURRENCY
    assert eval_concurrency({"PUNIE_EVAL_CONCURRENCY": "1"}) == 1
    assert eval_concurrency({"PUNIE_EVAL_CONCURRENCY": " 16 "}) == 16
    for bad in ("0", "-2", "many", "1.5"):
        with pytest.raises(UsageError, match="PUNIE_EVAL_CONCURRENCY"):
            eval_concurrency({"PUNIE_EVAL_CONCURRENCY": bad})


def test_punie_eval_concurrency_one_in_the_environment_asks_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_EVAL_CONCURRENCY", "1")
    source = _InFlight(hold=2, patience=0.05)
    with serve([source] * 4) as fake:
        greedy, _ = ask_suite(fake.url, _suite(4), label="t")
    assert source.most == 1 and [r.score for r in greedy] == [1.0] * 4
