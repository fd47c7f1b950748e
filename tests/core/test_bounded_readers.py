"""Every file Punie reads from a user's tree goes through one bounded reader (issue 25, item 1).

FIFOs, devices, sockets, directories and symlinks to /dev/zero named like the files Punie
reads are refused at once (never a blocked open or an endless read); a 5,000-digit number
or a 200,000-deep nesting is a finding naming the file, never exit 3 or a RecursionError.
Checked on the readers themselves and through the commands: `punie check`, `punie adapters
list`, `punie up --dry-run`, and the real agent's `session/list` over ACP.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import struct
import sys
from pathlib import Path

import pytest
from acp import spawn_agent_process

from punie.agent.sessions import SessionRecord, SessionStore, sessions_dir
from punie.errors import CorruptFileError
from punie.jsonio import (
    MAX_NUMBER_DIGITS,
    JSONLimitError,
    load_json_file,
    parse_json,
    read_file_bytes,
    read_text_file,
)
from punie.training.dataset import check_split
from punie.weights.fingerprint import base_identity
from punie.weights.headers import read_model_shapes
from punie.weights.safetensors import read_header
from tests.agent.test_acp_stdio import RecordingClient, _agent_args
from tests.support.corpus import lora_adapter
from tests.support.fake_openai import serve
from tests.support.launch_helpers import run_punie

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses FIFOs and /dev")
DEEP = "[" * 200_000 + "]" * 200_000
HUGE_INT = "9" * 5000


def _special(kind: str, path: Path) -> Path:
    """Put a non-regular file of ``kind`` at ``path``; returns it (a bound socket is kept open)."""
    if path.exists() or path.is_symlink():
        path.unlink() if not path.is_dir() or path.is_symlink() else shutil.rmtree(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    elif kind == "null":
        path.symlink_to("/dev/null")
    elif kind == "dir":
        path.mkdir()
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        _SOCKETS.append(sock)
    return path


_SOCKETS: list[socket.socket] = []


@linux
@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "zero", "null", "dir", "socket"])
def test_the_readers_refuse_what_is_not_a_regular_file_at_once(tmp_path: Path, kind: str) -> None:
    path = _special(kind, tmp_path / "x.json")
    for read in (lambda: read_file_bytes(path), lambda: read_text_file(path), lambda: load_json_file(path),
                 lambda: read_header(path)):
        with pytest.raises(CorruptFileError) as info:
            read()
        assert str(path) in str(info.value)
        assert "regular file" in str(info.value) or "directory" in str(info.value)


def test_size_number_and_depth_caps_name_the_file(tmp_path: Path) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"a": "x" * 2000}))
    with pytest.raises(JSONLimitError, match="the limit is 100"):
        load_json_file(big, max_bytes=100)
    for text, fragment in ((f'{{"n": {HUGE_INT}}}', "a number of 5000 characters"),
                           (f'{{"n": {HUGE_INT}.5e3}}', "a number of"),
                           (f'{{"n": -{HUGE_INT}}}', "a number of"),
                           (DEEP, "nested too deeply"),
                           ("[" * 65 + "]" * 65, "more than 64 levels"),
                           ('{"a": ' * 70 + "1" + "}" * 70, "more than 64 levels")):
        path = tmp_path / "doc.json"
        path.write_text(text)
        with pytest.raises(JSONLimitError, match=fragment) as info:
            load_json_file(path, expect=None)
        assert info.value.where == str(path)
    # at the cap, and digits inside strings, are fine
    assert parse_json(f'{{"n": {"9" * MAX_NUMBER_DIGITS}, "s": "{HUGE_INT}"}}', where="w")["s"] == HUGE_INT
    assert parse_json('{"nan": NaN, "inf": 1e400}', where="w")["inf"] == float("inf")


def _header_file(path: Path, header: bytes) -> Path:
    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


@pytest.mark.parametrize("header", [
    b'{"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, ' + HUGE_INT.encode() + b"]}}",
    b'{"t": {"dtype": "F32", "shape": [' + HUGE_INT.encode() + b'], "data_offsets": [0, 4]}}',
    DEEP.encode(),
    b'{"__metadata__": ' + b'{"a": ' * 3000 + b'"x"' + b"}" * 3000 + b"}",
])
def test_safetensors_headers_with_huge_numbers_or_deep_nesting_are_corrupt_files(tmp_path: Path,
                                                                                  header: bytes) -> None:
    path = _header_file(tmp_path / "model.safetensors", header)
    with pytest.raises(CorruptFileError, match="corrupt safetensors file") as info:
        read_header(path)
    assert info.value.where == str(path)


def test_datasets_refuse_deep_lines_huge_numbers_and_fifos(tmp_path: Path) -> None:
    split = tmp_path / "train.jsonl"
    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    split.write_text("\n".join([json.dumps(row), DEEP, f'{{"n": {HUGE_INT}}}', json.dumps(row)]) + "\n")
    errors: list[str] = []
    info = check_split(split, errors)
    assert info is not None and info.rows == 2
    assert any(f"{split}:2:" in e and "nested too deeply" in e for e in errors), errors
    assert any(f"{split}:3:" in e and "a number of 5000" in e for e in errors), errors
    if sys.platform.startswith("linux"):
        _special("fifo", split)
        errors = []
        assert check_split(split, errors) is None and "FIFO" in errors[0]


@linux
@pytest.mark.timeout(120)
def test_model_files_as_fifos_or_dev_zero_are_findings(tmp_path: Path, tiny_model: Path) -> None:
    for name, kind in (("config.json", "fifo"), ("config.json", "zero"), ("model.safetensors", "fifo"),
                       ("model.safetensors.index.json", "fifo"), ("tokenizer.json", "zero")):
        model = tmp_path / f"m-{name}-{kind}"
        shutil.copytree(tiny_model, model)
        _special(kind, model / name)
        if name == "tokenizer.json":
            with pytest.raises(CorruptFileError, match="not a regular file"):
                base_identity(model)
            continue
        if name == "model.safetensors.index.json":  # mlx_lm ignores the index: a warning
            shapes = read_model_shapes(model)
            assert [p.code for p in shapes.problems] == ["corrupt-file"]
            assert "FIFO" in shapes.problems[0].message
            continue
        with pytest.raises(CorruptFileError, match="not a regular file") as info:
            read_model_shapes(model)
        assert name in str(info.value)


def _project(tmp_path: Path, tiny_model: Path, extra: str = "") -> tuple[Path, Path]:
    adapter = lora_adapter(tmp_path / "adapters" / "a")
    config = tmp_path / "punie.toml"
    config.write_text(f'[profiles.p]\nmodel = "{tiny_model}"\nadapter = "adapters/a"\n{extra}')
    return config, adapter


@linux
@pytest.mark.slow
@pytest.mark.parametrize("target,kind", [("punie-adapter.json", "fifo"), ("adapter_config.json", "fifo"),
                                         ("adapter_config.json", "zero"), ("adapters.safetensors", "fifo"),
                                         ("adapters.safetensors", "zero")])
def test_check_adapters_list_and_dry_run_answer_with_a_fifo_or_dev_zero_in_the_adapter(
        tmp_path: Path, tiny_model: Path, target: str, kind: str) -> None:
    config, adapter = _project(tmp_path, tiny_model)
    _special(kind, adapter / target)
    optional = target == "punie-adapter.json"  # Punie's metadata: unreadable is a warning, not an error
    check = run_punie(config, "check", "--format", "json")
    assert check.returncode == (0 if optional else 1), check.stderr
    problems = [p for prof in json.loads(check.stdout)["profiles"] for p in prof["problems"]]
    assert any(target in (p["where"] or "") and "regular file" in p["message"] for p in problems), problems
    listed = run_punie(config, "adapters", "list", "--format", "json")
    assert listed.returncode in (0, 1) and "internal error" not in listed.stderr, listed.stderr
    assert json.loads(listed.stdout)  # the list is printed, the bad adapter in it
    dry = run_punie(config, "up", "p", "--dry-run")
    assert dry.returncode == (0 if optional else 1) and "internal error" not in dry.stderr, dry.stderr
    assert "regular file" in dry.stderr


@pytest.mark.slow
def test_check_reports_a_5000_digit_integer_in_a_header_as_a_finding_not_exit_3(tmp_path: Path,
                                                                                 tiny_model: Path) -> None:
    config, adapter = _project(tmp_path, tiny_model)
    _header_file(adapter / "adapters.safetensors",
                 b'{"model.layers.0.self_attn.q_proj.lora_a": {"dtype": "F32", "shape": [' + HUGE_INT.encode()
                 + b', 4], "data_offsets": [0, 4]}}')
    (adapter / "punie-adapter.json").write_text(DEEP)
    proc = run_punie(config, "check", "--format", "json")
    assert proc.returncode == 1, proc.stderr
    problems = [p for prof in json.loads(proc.stdout)["profiles"] for p in prof["problems"]]
    assert any("adapters.safetensors" in (p["where"] or "") and "a number of 5000" in p["message"]
               for p in problems), problems


@linux
@pytest.mark.timeout(120)
def test_a_fifo_in_the_profiles_file_place_is_a_config_error(tmp_path: Path) -> None:
    config = _special("fifo", tmp_path / "punie.toml")
    proc = run_punie(config, "check")
    assert proc.returncode == 2 and "FIFO" in proc.stderr, proc.stderr


def _session_files(cwd: Path) -> Path:
    root = sessions_dir(cwd)
    SessionStore(root).save(SessionRecord(session_id="good", cwd=str(cwd), title="the good one"))
    (root / "deep.json").write_text(DEEP)
    (root / "huge.json").write_text(f'{{"session_id": "huge", "cwd": "{cwd}", "n": {HUGE_INT}}}')
    (root / "typed.json").write_text(json.dumps({"session_id": 5, "cwd": ["x"]}))
    (root / "array.json").write_text("[]")
    if sys.platform.startswith("linux"):
        _special("fifo", root / "pipe.json")
        _special("zero", root / "zero.json")
        _special("dir", root / "dir.json")
    return root


@pytest.mark.timeout(60)
def test_session_list_skips_every_bad_file_and_keeps_the_good_one(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    root = _session_files(tmp_path)
    listed = SessionStore(root).list()
    assert [r.session_id for r in listed] == ["good"]
    assert asyncio.run(SessionStore(root).alist())[0].title == "the good one"
    for name in ("deep.json", "huge.json", "typed.json", "array.json"):
        assert name in caplog.text
    assert asyncio.run(SessionStore(root).aload("deep")) is None
    assert SessionStore(root).load("good") is not None


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_the_real_agent_lists_sessions_over_acp_despite_fifos_and_deep_files(tmp_path: Path) -> None:
    _session_files(tmp_path)

    async def run(url: str) -> list[str]:
        async with spawn_agent_process(lambda _a: RecordingClient(), sys.executable, *_agent_args(url),
                                       env=dict(os.environ), cwd=tmp_path) as (conn, _proc):
            await conn.initialize(protocol_version=1)
            listed = await asyncio.wait_for(conn.list_sessions(cwd=str(tmp_path)), 60)
            again = await asyncio.wait_for(conn.list_sessions(cwd=str(tmp_path)), 60)  # still serving
            return [s.session_id for s in listed.sessions] + [s.session_id for s in again.sessions]

    with serve([]) as fake:
        assert asyncio.run(run(fake.url)) == ["good", "good"]


@linux
@pytest.mark.timeout(120)
def test_editing_a_profiles_file_that_is_a_fifo_is_a_config_error(tmp_path: Path) -> None:
    from punie.config.edit.files import _read
    from punie.errors import ConfigError

    fifo = _special("fifo", tmp_path / "punie.toml")
    with pytest.raises(ConfigError, match="FIFO"):
        _read(fifo, "punie.toml", create=False)
