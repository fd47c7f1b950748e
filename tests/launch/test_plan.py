"""build_plan: a pure value describing what `punie up` starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punie.config.models import AgentOptions, Profile, ResolvedProfile, ServerOptions
from punie.launch import LaunchPlan, build_plan
from punie.launch.guard import guarded_argv


def _resolved(tmp: Path, name: str = "demo", **server: object) -> ResolvedProfile:
    return ResolvedProfile(name=name, config_path=str(tmp / "punie.toml"),
                           profile=Profile(model="m", server=ServerOptions(**server),
                                           agent=AgentOptions(max_turns=7)))


def test_server_argv_maps_every_option_to_mlx_lm_flags(tmp_path: Path) -> None:
    res = _resolved(tmp_path, host="127.0.0.1", port=8123, temperature=0.2, top_p=0.9, max_tokens=64,
                    chat_template_args={"enable_thinking": False}, draft_model="/d",
                    extra_args=["--log-level", "DEBUG"])
    plan = build_plan(res, model_path=tmp_path / "m", adapter_path=tmp_path / "a", python="/py",
                      environ={"HF_HOME": "/hf"})
    assert plan.server_argv == (
        "/py", "-m", "mlx_lm", "server", "--model", str(tmp_path / "m"), "--adapter-path", str(tmp_path / "a"),
        "--host", "127.0.0.1", "--port", "8123", "--temp", "0.2", "--top-p", "0.9", "--max-tokens", "64",
        "--chat-template-args", '{"enable_thinking": false}', "--draft-model", "/d", "--log-level", "DEBUG",
    )
    assert plan.server_env == {"HF_HUB_CACHE": "/hf/hub", "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    assert "/hf/hub" in plan.ensure_dirs
    assert plan.base_url == "http://127.0.0.1:8123/v1" and plan.server_url == "http://127.0.0.1:8123"
    assert plan.server_log == str(tmp_path / ".punie" / "logs" / "demo-server.log")
    assert plan.agent_log == str(tmp_path / ".punie" / "logs" / "demo-agent.log")
    assert plan.cwd == str(tmp_path)
    assert plan.agent_argv[:6] == ("/py", "-m", "punie", "agent", "--base-url", plan.base_url)
    assert plan.agent_argv[6] == "--options"
    assert AgentOptions.model_validate_json(plan.agent_argv[7]).max_turns == 7


def test_minimal_plan_has_no_optional_flags(tmp_path: Path) -> None:
    plan = build_plan(_resolved(tmp_path), model_path=tmp_path / "m", adapter_path=None, python="py", environ={})
    assert plan.server_argv == ("py", "-m", "mlx_lm", "server", "--model", str(tmp_path / "m"),
                                "--host", "127.0.0.1", "--port", "8080")
    assert plan.adapter is None and plan.restart.mode == "no"


def test_hub_id_model_is_not_forced_offline_and_hub_cache_follows_env(tmp_path: Path) -> None:
    plan = build_plan(_resolved(tmp_path), model_path=Path("org/model"), adapter_path=None,
                      environ={"HF_HUB_CACHE": "/cache/hub"})
    assert "HF_HUB_OFFLINE" not in plan.server_env
    assert plan.server_env["HF_HUB_CACHE"] == "/cache/hub"


def test_wildcard_bind_is_reached_on_loopback(tmp_path: Path) -> None:
    plan = build_plan(_resolved(tmp_path, host="0.0.0.0", port=9000, allow_remote=True),
                      model_path=tmp_path, adapter_path=None)
    assert plan.base_url == "http://127.0.0.1:9000/v1"
    assert plan.server_argv is not None and "0.0.0.0" in plan.server_argv
    v6 = build_plan(_resolved(tmp_path, host="::1", port=9000), model_path=tmp_path, adapter_path=None)
    assert v6.base_url == "http://[::1]:9000/v1"


def test_external_server_plan_starts_nothing(tmp_path: Path) -> None:
    plan = build_plan(_resolved(tmp_path, url="http://gpu-box:8080/v1/", ready_timeout=5),
                      model_path=None, adapter_path=None)
    assert plan.external and plan.server_argv is None and plan.server_log is None
    assert plan.base_url == "http://gpu-box:8080/v1"
    assert "external" in plan.render_text()
    assert plan.to_json()["external"] is True


def test_restart_policy_and_backoff(tmp_path: Path) -> None:
    plan = build_plan(_resolved(tmp_path, restart="on-failure", max_restarts=4, restart_backoff=0.5),
                      model_path=tmp_path, adapter_path=None)
    assert plan.restart.mode == "on-failure" and plan.restart.max_restarts == 4
    assert [plan.restart.delay(n) for n in (1, 2, 3)] == [0.5, 1.0, 2.0]


def test_plan_is_frozen(tmp_path: Path) -> None:
    plan = build_plan(_resolved(tmp_path), model_path=tmp_path, adapter_path=None)
    with pytest.raises(Exception):
        plan.port = 1  # type: ignore[misc]


def test_text_rendering_quotes_arguments_for_display(tmp_path: Path) -> None:
    res = _resolved(tmp_path, chat_template_args={"a": "b c"})
    text = build_plan(res, model_path=tmp_path / "my model", adapter_path=None, python="py").render_text()
    assert "--model '" + str(tmp_path / "my model") + "'" in text
    assert "--chat-template-args '{\"a\": \"b c\"}'" in text
    assert "1-token chat completion" in text


def test_guard_wraps_the_command_without_a_shell() -> None:
    argv = guarded_argv(["echo", "a b"], parent_pid=42, python="py")
    assert argv[:4] == ["py", "-I", "-S", "-c"] and argv[5:] == ["42", "-1", "auto", "5.0", "--", "echo", "a b"]


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@settings(max_examples=60, deadline=None)
@given(
    port=st.integers(1, 65535),
    temperature=st.none() | st.floats(0, 5, allow_nan=False),
    top_p=st.none() | st.floats(0.01, 1),
    max_tokens=st.none() | st.integers(1, 10**6),
    extra=st.lists(_text, max_size=3),
    template_args=st.dictionaries(_text, st.booleans() | st.integers() | _text, max_size=3),
)
def test_plan_round_trips_and_keeps_arguments_intact(
    tmp_path_factory: pytest.TempPathFactory, port: int, temperature: float | None, top_p: float | None,
    max_tokens: int | None, extra: list[str], template_args: dict[str, object],
) -> None:
    tmp = tmp_path_factory.getbasetemp()
    res = _resolved(tmp, port=port, temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                    extra_args=extra, chat_template_args=template_args)
    plan = build_plan(res, model_path=tmp / "m", adapter_path=None, python="py", environ={})
    assert LaunchPlan.model_validate_json(plan.model_dump_json()) == plan
    argv = list(plan.server_argv or ())
    assert argv[len(argv) - len(extra):] == extra  # passed through verbatim, never shell-split
    if template_args:
        assert json.loads(argv[argv.index("--chat-template-args") + 1]) == template_args
    if temperature is not None:
        assert float(argv[argv.index("--temp") + 1]) == temperature
    assert json.loads(json.dumps(plan.to_json()))["port"] == port
