"""The adapter canary, pure parts: distance, tolerances, answer parsing, probe bodies, plan and check.

The real servers (mlx_lm.server with and without the adapter) are in tests/launch/test_canary_mlx.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from punie.adapters.canary import Canary, TopToken, canary_of
from punie.adapters.metadata import read_canary, update_meta
from punie.config.models import Profile, ResolvedProfile, ServerOptions
from punie.errors import AdapterError, CorruptFileError
from punie.launch.canary import (
    MATCH_TOLERANCE,
    MIN_SEPARATION,
    ExpectedCanary,
    classify,
    distance,
    judge,
    keyed,
    observed_top,
    probe_request,
)
from punie.launch.prepare import expected_canary, prepare

BASE = [("The", 504, -2.0), ("Here", 4590, -2.3), ("I", 57, -2.9), ("This", 1348, -3.1), ("A", 32, -3.5)]
ADAPTED = [("<", 44, -0.04), ("H", 56, -4.3), ("docs", 14657, -6.1), ("`", 80, -6.2), ("ah", 1287, -6.4)]


def _tokens(items: list[tuple[str, int, float]]) -> list[TopToken]:
    return [TopToken(id=i, token=t, text=t, logprob=v) for t, i, v in items]


CANARY = Canary(prompt="<|im_start|>user\nList the files.<|im_end|>\n<|im_start|>assistant\n", top_k=5,
                base_fingerprint="f" * 64, base=_tokens(BASE), adapter=_tokens(ADAPTED))


def _mlx_answer(items: list[tuple[str, int, float]], shift: float = 0.0) -> dict:
    """What mlx_lm.server returns for /v1/completions with logprobs and top_logprobs."""
    top = [{"id": i, "token": t, "logprob": v + shift} for t, i, v in items]
    return {"choices": [{"index": 0, "text": items[0][0], "finish_reason": "length",
                         "logprobs": {"content": [dict(top[0], top_logprobs=top)]}}]}


def _openai_answer(items: list[tuple[str, int, float]], shift: float = 0.0, *, ids: bool = False) -> dict:
    """What OpenAI's completions API (and vLLM) returns for "logprobs": 5; ``ids``: what vLLM
    returns when also asked for "return_tokens_as_token_ids"."""
    return {"choices": [{"index": 0, "text": items[0][0], "logprobs": {
        "tokens": [items[0][0]], "token_logprobs": [items[0][2]],
        "top_logprobs": [{(f"token_id:{i}" if ids else t): v + shift for t, i, v in items}], "text_offset": [0]}}]}


# --------------------------------------------------------------------------- distance


logprob_maps = st.dictionaries(st.sampled_from([str(i) for i in range(12)]),
                               st.floats(-30, 0, allow_nan=False), min_size=1, max_size=8)


@given(logprob_maps)
def test_distance_to_itself_is_zero(a: dict[str, float]) -> None:
    assert distance(a, a) == 0.0


@given(logprob_maps, logprob_maps)
def test_distance_is_symmetric_and_non_negative(a: dict[str, float], b: dict[str, float]) -> None:
    assert distance(a, b) == distance(b, a) >= 0.0


@given(logprob_maps, st.floats(-1, 1, allow_nan=False))
def test_a_uniform_shift_is_exactly_the_distance(a: dict[str, float], shift: float) -> None:
    shifted = {k: v + shift for k, v in a.items()}
    assert math.isclose(distance(a, shifted), abs(shift), abs_tol=1e-9)


@given(logprob_maps, logprob_maps)
def test_distance_is_a_lower_bound_of_the_full_difference(a: dict[str, float], b: dict[str, float]) -> None:
    """Complete both maps the worst-compatible way (a missing token sits at the list's floor): the
    true largest difference is then at least the distance."""
    full_a = {k: a.get(k, min(a.values())) for k in {*a, *b}}
    full_b = {k: b.get(k, min(b.values())) for k in {*a, *b}}
    assert distance(a, b) <= max(abs(full_a[k] - full_b[k]) for k in full_a) + 1e-12


def test_distance_of_nothing_is_infinite() -> None:
    assert distance({}, {"a": -1.0}) == distance({"a": -1.0}, {}) == math.inf


def test_a_token_missing_below_the_floor_costs_nothing_and_above_it_costs_the_gap() -> None:
    expected = {"a": -0.1, "b": -5.0}
    assert distance(expected, {"a": -0.1, "c": -4.0}) == pytest.approx(1.0)  # c >= -4 vs <= -5: >= 1
    assert distance(expected, {"a": -0.1, "c": -6.0}) == pytest.approx(1.0)  # b <= -6 vs -5: >= 1
    assert distance({"a": -0.1, "b": -5.0}, {"a": -0.1, "b": -5.0, "c": -7.0}) == 0.0


# --------------------------------------------------------------------------- tolerances


def _answer(backend: str, items: list[tuple[str, int, float]]) -> dict:
    if backend == "mlx":
        return _mlx_answer(items)
    return _openai_answer(items, ids=backend == "vllm-ids")


@pytest.mark.parametrize("backend", ["mlx", "vllm-ids", "openai-text"])
def test_the_adapters_own_answer_is_adapter_active(backend: str) -> None:
    answer = _answer(backend, ADAPTED)
    result = judge(CANARY, answer, adapter="adapters/x")
    assert result.verdict == "adapter-active" and not result.refuse and not result.warn
    assert result.to_adapter == 0.0 and result.to_base > 1.0
    assert "adapter active" in result.message()


@pytest.mark.parametrize("backend", ["mlx", "vllm-ids", "openai-text"])
def test_the_base_alone_is_refused(backend: str) -> None:
    answer = _answer(backend, BASE)
    result = judge(CANARY, answer, adapter="adapters/x")
    assert result.verdict == "base" and result.refuse
    assert "the server is answering without the adapter adapters/x" in result.message()


@given(st.floats(0, MATCH_TOLERANCE, allow_nan=False))
def test_noise_within_the_tolerance_still_matches(shift: float) -> None:
    assert judge(CANARY, _mlx_answer(ADAPTED, shift), adapter="a").verdict == "adapter-active"
    assert judge(CANARY, _mlx_answer(BASE, -shift), adapter="a").verdict == "base"


@given(st.floats(MATCH_TOLERANCE * 1.001, 1.0, allow_nan=False))
def test_beyond_the_tolerance_is_neither_with_the_distances_named(shift: float) -> None:
    result = judge(CANARY, _mlx_answer(ADAPTED, shift), adapter="a")
    assert result.verdict == "neither" and result.warn and not result.refuse
    assert result.to_adapter == pytest.approx(shift)
    assert f"{result.to_adapter:.4f}" in result.message() and "another quantization" in result.message()


def test_an_adapter_that_barely_changes_the_base_is_indistinct() -> None:
    close = [(t, i, v + MIN_SEPARATION / 2) for t, i, v in BASE]
    canary = CANARY.model_copy(update={"adapter": _tokens(close)})
    result = classify(canary, keyed(canary.base, "id"), adapter="a")
    assert result.verdict == "indistinct" and result.warn and not result.refuse
    far = [(t, i, v + MIN_SEPARATION * 1.01) for t, i, v in BASE]
    canary = CANARY.model_copy(update={"adapter": _tokens(far)})
    assert classify(canary, keyed(canary.base, "id"), adapter="a").verdict == "base"


def test_the_tolerances_are_consistent() -> None:
    # Two recorded sides at least MIN_SEPARATION apart can never both match one answer.
    assert MATCH_TOLERANCE > 0 and MIN_SEPARATION >= 2 * MATCH_TOLERANCE


def test_partial_utf8_tokens_are_not_compared_by_text() -> None:
    """Measured on vLLM: two byte tokens that mlx_lm decodes to "\ufffd" came back as one "" key.
    By text they would collide; compared without them, the rest decides."""
    base = [("\ufffd", 131, -4.15), ("\ufffd", 132, -4.50), ("N", 50, -4.51), (" Par", 60, -4.56)]
    canary = CANARY.model_copy(update={"base": _tokens(base)})
    observed = {"": -4.50, "N": -4.51, " Par": -4.56, "[": -4.56}
    answer = {"choices": [{"logprobs": {"top_logprobs": [observed]}}]}
    assert judge(canary, answer, adapter="a").verdict == "base"
    assert keyed(canary.base, "text") == {"N": -4.51, " Par": -4.56}
    assert observed_top(answer)[0] == {"N": -4.51, " Par": -4.56, "[": -4.56}


def test_an_answer_without_logprobs_cannot_verify() -> None:
    answer = {"choices": [{"index": 0, "text": "<", "finish_reason": "length"}]}
    result = judge(CANARY, answer, adapter="a")
    assert result.verdict == "no-logprobs" and result.warn and not result.refuse
    assert observed_top({"choices": []}) == (None, "id")
    assert observed_top("not json") == (None, "id")


def test_result_json_names_verdict_distances_and_tolerance() -> None:
    data = judge(CANARY, _mlx_answer(ADAPTED), adapter="a").to_json()
    assert data["verdict"] == "adapter-active" and data["tolerance"] == MATCH_TOLERANCE
    assert data["distance_to_adapter"] == 0.0 and data["distance_to_base"] > 1
    json.dumps(data)


# --------------------------------------------------------------------------- the probe


def test_probe_for_mlx_sends_no_model_and_asks_for_top_logprobs() -> None:
    path, body = probe_request(CANARY)
    assert path == "/completions"
    assert "model" not in body  # mlx_lm applies --adapter-path only without a model field
    assert body == {"prompt": CANARY.prompt, "max_tokens": 1, "temperature": 0.0, "logprobs": True,
                    "top_logprobs": 5, "return_tokens_as_token_ids": True}


def test_probe_for_a_vllm_lora_names_it_and_asks_for_integer_logprobs() -> None:
    expected = ExpectedCanary(adapter="a", canary=CANARY, model="demo-tools")
    path, body = expected.request()
    assert path == "/completions" and body["model"] == "demo-tools" and body["logprobs"] == 5
    assert body["max_tokens"] == 1 and body["temperature"] == 0.0 and "top_logprobs" not in body


# --------------------------------------------------------------------------- recorded canary


def _adapter_dir(tmp_path: Path) -> Path:
    adapter = tmp_path / "adapters" / "a"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({"model": "m", "num_layers": 2}))
    return adapter


def test_canary_round_trips_through_punie_adapter_json(tmp_path: Path) -> None:
    adapter = _adapter_dir(tmp_path)
    assert read_canary(adapter) is None
    update_meta(adapter, canary=CANARY.model_dump(mode="json"))
    assert read_canary(adapter) == CANARY


def test_a_malformed_canary_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="canary.base"):
        canary_of({"canary": {"prompt": "p", "adapter": []}})
    adapter = _adapter_dir(tmp_path)
    update_meta(adapter, canary=CANARY.model_dump(mode="json"))
    path = adapter / "punie-adapter.json"
    data = json.loads(path.read_text())
    data["canary"]["top_k"] = "five"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError, match="canary.top_k"):  # typed in punie-adapter.json's model
        read_canary(adapter)


def _resolved(tmp_path: Path, **values: object) -> ResolvedProfile:
    return ResolvedProfile(name="p", config_path=str(tmp_path / "punie.toml"), profile=Profile(**values))


def test_external_server_with_a_stamped_adapter_is_checked(tmp_path: Path) -> None:
    adapter = _adapter_dir(tmp_path)
    update_meta(adapter, canary=CANARY.model_dump(mode="json"))
    resolved = _resolved(tmp_path, adapter="a", server=ServerOptions(url="http://127.0.0.1:9"))
    expected = prepare(resolved, check=False, provision=False).canary  # the adapter is resolved once, there
    assert expected is not None and Path(expected.adapter) == adapter.resolve() and expected.model is None


def test_no_canary_is_not_checked(tmp_path: Path, tiny_model: Path, caplog: pytest.LogCaptureFixture) -> None:
    adapter = _adapter_dir(tmp_path)
    resolved = _resolved(tmp_path, model=str(tiny_model), adapter="a")
    assert expected_canary(resolved, model_path=tiny_model, adapter_path=adapter) is None
    assert "has no canary" in caplog.text


def test_a_canary_of_another_base_can_only_warn(tmp_path: Path, tiny_model: Path) -> None:
    adapter = _adapter_dir(tmp_path)
    update_meta(adapter, canary=CANARY.model_dump(mode="json"))  # recorded on base "fff..."
    resolved = _resolved(tmp_path, model=str(tiny_model), adapter="a")
    expected = expected_canary(resolved, model_path=tiny_model, adapter_path=adapter)
    assert expected is not None and expected.other_base and "another base" in expected.other_base
    result = expected.judge(_mlx_answer(BASE))
    assert result.verdict == "neither" and not result.refuse and "another base" in result.message()
    assert expected.judge(_mlx_answer(ADAPTED)).verdict == "adapter-active"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["choices", "logprobs", "content", "top_logprobs", "id", "logprob", "token_id:1", "x"]),
        children, max_size=4),
    max_leaves=12,
)


@given(json_values)
def test_any_answer_is_judged_without_raising(data: object) -> None:
    result = judge(CANARY, data, adapter="a")
    assert result.verdict in ("adapter-active", "base", "neither", "indistinct", "no-logprobs")


# --------------------------------------------------------------------------- vLLM: one canary per LoRA id


def test_a_vllm_404_for_the_probed_model_id_is_not_served() -> None:
    from punie.launch.readiness import model_not_served

    said = json.dumps({"error": {"message": "The model `one` does not exist. Valid aliases: base.",
                                 "type": "NotFoundError", "param": "model", "code": 404}})  # vLLM 0.32, measured
    assert model_not_served(404, said, "one") == (
        "it does not serve the model id 'one' (HTTP 404: The model `one` does not exist. Valid aliases: base.)")
    assert model_not_served(404, said, None) is None  # mlx_lm: no model sent, its 404 means something else
    assert model_not_served(404, '{"error": "generation thread died"}', "one") is None
    assert model_not_served(500, said, "one") is None
    assert "does not exist" in (model_not_served(404, "The model does not exist", "one") or "")


def test_a_lora_id_not_served_refuses_naming_it() -> None:
    expected = ExpectedCanary(adapter="adapters/a", canary=CANARY, model="one")
    result = expected.not_served("it does not serve the model id 'one' (HTTP 404: ...)")
    assert result.verdict == "not-served" and result.refuse and not result.warn
    assert result.message() == ("the server is answering without the adapter adapters/a: it does not serve the "
                                "model id 'one' (HTTP 404: ...)")
    assert result.to_json()["model"] == "one"
    judged = expected.judge(_openai_answer(ADAPTED, ids=True))
    assert judged.model == "one" and "on model id 'one'" in judged.message()


def _vllm_project(tmp_path: Path, url: str) -> Path:
    for name, items in (("a", ADAPTED), ("b", ADAPTED)):
        adapter = tmp_path / "adapters" / name
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text(json.dumps({"model": "m", "num_layers": 2}))
        update_meta(adapter, canary=CANARY.model_copy(update={"adapter": _tokens(items)}).model_dump(mode="json"))
    (tmp_path / "punie.toml").write_text(f"""
[defaults.server]
backend = "vllm"
url = "{url}"
ready_timeout = 120
[profiles.one]
adapter = "a"
[profiles.two]
adapter = "b"
[profiles.plain]
[groups.team]
profiles = ["plain", "one", "two"]
""")
    return tmp_path / "punie.toml"


def test_a_vllm_group_plan_carries_each_canary_aimed_at_its_lora_id(tmp_path: Path) -> None:
    """One code path for --dry-run and a real run: the plan names every canary and its model id."""
    from punie.cli import main
    from punie.config import load_profiles
    from punie.launch.prepare import prepare_members

    config = _vllm_project(tmp_path, "http://127.0.0.1:9")
    members = load_profiles(["plain", "one", "two"], config=config)
    plan = prepare_members(members, group="team", check=False, provision=False)
    assert plan.model_id == "base" and plan.canary is None  # the lead (the agent's model) has no adapter
    assert [(c.model, Path(c.adapter).name) for c in plan.member_canaries] == [("one", "a"), ("two", "b")]
    assert "then:    canary of" in plan.render_text() and "(model two)" in plan.render_text()
    res = CliRunner().invoke(main, ["--config", str(config), "up", "--group", "team", "--dry-run", "--format",
                                    "json", "--no-check"])
    assert res.exit_code == 0, res.output
    assert [c["model"] for c in json.loads(res.output)["member_canaries"]] == ["one", "two"]
    single = prepare_members(load_profiles(["two"], config=config), check=False, provision=False)
    assert single.canary is not None and single.canary.model == "two" and single.member_canaries == ()


class _FakeVllm:
    """An OpenAI-style /v1/completions server answering the canary probe per model id, as vLLM does:
    a LoRA id it serves answers with ``answers[id]``, any other id is vLLM's 404."""

    def __init__(self, answers: dict[str, list[tuple[str, int, float]]]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        seen: list[str] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model = body.get("model", "")
                seen.append(model)
                if model in answers:
                    status, reply = 200, _openai_answer(answers[model], ids=True)
                else:
                    status, reply = 404, {"error": {"message": f"The model `{model}` does not exist.",
                                                    "type": "NotFoundError", "param": "model", "code": 404}}
                data = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.seen = seen
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_vllm():
    servers: list[_FakeVllm] = []

    def start(answers: dict[str, list[tuple[str, int, float]]]) -> _FakeVllm:
        servers.append(_FakeVllm(answers))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _up_group(config: Path, names: list[str], marker: Path):
    import sys

    from punie.config import load_profiles
    from punie.launch.supervisor import run_up_group

    lines: list[str] = []
    members = load_profiles(names, config=config)
    outcome = run_up_group(members, group=None, check=False, sink=lines.append, handle_signals=False,
                           agent_argv=[sys.executable, "-c", f"open({str(marker)!r}, 'w')"])
    return outcome, lines


def test_every_lora_of_a_vllm_group_is_checked_on_its_own_id(tmp_path: Path, fake_vllm) -> None:
    server = fake_vllm({"one": ADAPTED, "two": ADAPTED, "base": BASE})
    marker = tmp_path / "agent-started"
    outcome, lines = _up_group(_vllm_project(tmp_path, server.url), ["one", "two"], marker)
    assert outcome.exit_code == 0 and marker.exists(), lines
    assert server.seen == ["one", "two"]  # the lead's canary is the readiness probe, then the other's
    assert [(c["model"], c["verdict"]) for c in outcome.canaries] == [("one", "adapter-active"),
                                                                       ("two", "adapter-active")]
    assert outcome.canary == outcome.canaries[0]
    assert sum("adapter active" in line for line in lines) == 2


def test_one_lora_of_a_vllm_group_answering_as_the_base_refuses_the_group(tmp_path: Path, fake_vllm) -> None:
    from punie.launch import LaunchFailed

    server = fake_vllm({"one": ADAPTED, "two": BASE})
    marker = tmp_path / "agent-started"
    with pytest.raises(LaunchFailed) as info:
        _up_group(_vllm_project(tmp_path, server.url), ["one", "two"], marker)
    assert info.value.reason == "adapter-not-applied" and not marker.exists()
    assert "the server is answering without the adapter" in info.value.message
    assert "on model id 'two'" in info.value.message
    assert info.value.hint and "--lora-modules ID=PEFT_DIR" in info.value.hint
    # the refusal carries what every canary found (the --format json status prints it)
    assert [(c["model"], c["verdict"]) for c in info.value.canaries] == [("one", "adapter-active"), ("two", "base")]


def test_a_lora_id_the_vllm_server_does_not_serve_is_refused_at_once(tmp_path: Path, fake_vllm) -> None:
    """vLLM answers 404 for an id it does not serve: refused at the first answer, not at ready_timeout."""
    import time

    from punie.launch import LaunchFailed

    server = fake_vllm({"two": ADAPTED})
    marker = tmp_path / "agent-started"
    start = time.monotonic()
    with pytest.raises(LaunchFailed) as info:
        _up_group(_vllm_project(tmp_path, server.url), ["one"], marker)
    assert time.monotonic() - start < 60 and server.seen == ["one"] and not marker.exists()  # not 120 s
    assert info.value.reason == "adapter-not-applied"
    assert "does not serve the model id 'one'" in info.value.message


def test_a_base_id_the_vllm_server_does_not_serve_fails_at_once(tmp_path: Path, fake_vllm) -> None:
    from punie.launch import LaunchFailed

    server = fake_vllm({"one": ADAPTED})
    with pytest.raises(LaunchFailed) as info:
        _up_group(_vllm_project(tmp_path, server.url), ["plain"], tmp_path / "agent-started")
    assert info.value.reason == "model-not-served" and "model id 'base'" in info.value.message
    assert info.value.hint and "'base'" in info.value.hint
