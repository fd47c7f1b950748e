"""Dataset validation for `punie train`: every problem reported with file:line before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from punie.errors import TrainingError
from punie.training.dataset import dataset_hash, resolve_data_dir, shipped_datasets, validate_dataset

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def _write(folder: Path, split: str, lines: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{split}.jsonl"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def _good(folder: Path, rows: int = 3) -> Path:
    for split in ("train", "valid"):
        _write(folder, split, [json.dumps(CHAT)] * rows)
    return folder


def test_good_chat_dataset_passes(tmp_path: Path) -> None:
    info = validate_dataset(_good(tmp_path))
    assert info.splits["train"].rows == 3 and info.splits["train"].format == "chat"
    assert "test" not in info.splits
    assert len(info.hash) == 16


def test_errors_name_file_and_line_and_are_all_listed(tmp_path: Path) -> None:
    _write(tmp_path, "train", [
        json.dumps(CHAT),
        "{not json",
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        "",
        json.dumps({"foo": 1}),
    ])
    _write(tmp_path, "valid", [json.dumps(CHAT), json.dumps({"prompt": "a", "completion": "b"})])
    with pytest.raises(TrainingError) as caught:
        validate_dataset(tmp_path)
    text = str(caught.value)
    train, valid = tmp_path / "train.jsonl", tmp_path / "valid.jsonl"
    assert f"{train}:2: not valid JSON" in text
    assert f"{train}:3: messages[0].role: 'robot' is not one of" in text
    assert f"{train}:4: empty line" in text
    assert f"{train}:5: needs 'messages'" in text
    assert f"{valid}:2: is in completions format but the file's first row is chat" in text
    assert "5 problem(s)" in text


def test_missing_valid_split_says_mlx_needs_it(tmp_path: Path) -> None:
    _write(tmp_path, "train", [json.dumps(CHAT)])
    with pytest.raises(TrainingError, match=r"valid.jsonl: missing \(mlx_lm lora needs a validation split\)"):
        validate_dataset(tmp_path)


def test_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="does not exist"):
        validate_dataset(tmp_path / "nope")


def test_tool_calls_only_on_assistant_and_well_formed(tmp_path: Path) -> None:
    bad_calls = {"messages": [
        {"role": "user", "content": "x", "tool_calls": []},
        {"role": "assistant", "tool_calls": [{"function": {"name": "read_file", "arguments": "{broken"}}]},
    ]}
    good_calls = {"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [{"function": {"name": "read_file", "arguments": {"path": "a"}}}]},
        {"role": "tool", "content": "text"},
        {"role": "assistant", "content": "done"},
    ], "tools": []}
    _write(tmp_path, "train", [json.dumps(good_calls), json.dumps(bad_calls)])
    _write(tmp_path, "valid", [json.dumps(good_calls)])
    with pytest.raises(TrainingError) as caught:
        validate_dataset(tmp_path)
    text = str(caught.value)
    assert "train.jsonl:2: messages[0]: only assistant messages may have tool_calls" in text
    assert "train.jsonl:2: messages[1].tool_calls[0].arguments: not valid JSON" in text
    assert "train.jsonl:1" not in text


def test_tools_are_named_and_calls_use_them(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "read_file", "parameters": {"type": "object"}}}]
    row = {"messages": [
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read_fil", "arguments": '{"path": "a"}'}}]},
    ], "tools": [*tools, {"type": "function", "function": {"description": "no name"}}]}
    _write(tmp_path, "train", [json.dumps(row)])
    _write(tmp_path, "valid", [json.dumps(CHAT)])
    with pytest.raises(TrainingError) as caught:
        validate_dataset(tmp_path)
    text = str(caught.value)
    assert "train.jsonl:1: tools[1]: needs a function 'name' string" in text
    assert "train.jsonl:1: messages[1].tool_calls[0]: tool 'read_fil' is not in the row's 'tools'" in text


def test_mlx_lm_renders_the_shipped_rows_with_their_tools() -> None:
    """mlx_lm's ChatDataset passes a row's `tools` to the chat template: each shipped row is in
    that format, its calls name the agent's tools and its arguments are objects."""
    from punie.agent.runner import DEFAULT_INSTRUCTIONS
    from punie.config.models import ALL_TOOLS

    folder = resolve_data_dir("tool-calling")
    calls = 0
    for split in ("train", "valid"):
        for line in (folder / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            assert [t["function"]["name"] for t in row["tools"]] == list(ALL_TOOLS)
            assert row["messages"][0] == {"role": "system", "content": DEFAULT_INSTRUCTIONS}
            for message in row["messages"]:
                assert "<tool_call>" not in (message.get("content") or "")
                for call in message.get("tool_calls", []):
                    assert call["function"]["name"] in ALL_TOOLS
                    assert isinstance(call["function"]["arguments"], dict)
                    calls += 1
    assert calls >= 50


def test_error_list_is_capped(tmp_path: Path) -> None:
    _write(tmp_path, "train", ["nope"] * 50)
    _write(tmp_path, "valid", [json.dumps(CHAT)])
    with pytest.raises(TrainingError, match=r"and 30 more"):
        validate_dataset(tmp_path)


def test_dataset_hash_follows_content(tmp_path: Path) -> None:
    _good(tmp_path)
    first = dataset_hash(tmp_path)
    assert dataset_hash(tmp_path) == first
    _write(tmp_path, "valid", [json.dumps(CHAT)] * 4)
    assert dataset_hash(tmp_path) != first


def test_shipped_dataset_is_valid_and_found_by_name(tmp_path: Path) -> None:
    assert "tool-calling" in shipped_datasets()
    folder = resolve_data_dir("tool-calling", cwd=tmp_path)
    info = validate_dataset(folder)
    assert info.splits["train"].rows >= 30 and info.splits["valid"].rows >= 5
    with pytest.raises(TrainingError, match="did you mean 'tool-calling'"):
        resolve_data_dir("tool-caling", cwd=tmp_path)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["messages", "role", "content", "prompt", "completion", "text", "tool_calls", "tools"]),
        inner, max_size=4),
    max_leaves=12,
)
_lines = st.one_of(st.text(max_size=30).filter(lambda s: "\n" not in s and "\r" not in s),
                   _json_values.map(json.dumps))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(train=st.lists(_lines, max_size=6), valid=st.lists(_lines, min_size=1, max_size=3))
def test_random_lines_raise_only_training_error(tmp_path_factory: pytest.TempPathFactory, train: list[str],
                                                valid: list[str]) -> None:
    folder = tmp_path_factory.mktemp("random")
    _write(folder, "train", train)
    _write(folder, "valid", valid)
    try:
        info = validate_dataset(folder)
    except TrainingError as exc:
        assert ".jsonl" in str(exc)
    else:
        # What passes is what mlx_lm can read: one JSON object per line.
        for split in ("train", "valid"):
            for line in (folder / f"{split}.jsonl").read_text().splitlines():
                assert isinstance(json.loads(line), dict)
        assert info.splits["valid"].rows == len(valid)
