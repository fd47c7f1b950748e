"""The safetensors header reader: valid files, and every kind of corrupt file as CorruptFileError."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from punie.errors import CorruptFileError, PunieError
from punie.weights.safetensors import (
    MAX_HEADER_BYTES,
    parse_header,
    read_header,
    write_safetensors,
)


def _raw(header: object, data: bytes = b"") -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body + data


def test_round_trip_of_written_file(tmp_path: Path) -> None:
    path = write_safetensors(
        tmp_path / "a.safetensors",
        {"x.lora_a": ("F32", (64, 4)), "x.lora_b": ("BF16", (4, 96)), "e": ("U32", (0,))},
        metadata={"format": "mlx"},
    )
    header = read_header(path)
    assert header.shape("x.lora_a") == (64, 4)
    assert header.tensors["x.lora_b"].dtype == "BF16"
    assert header.metadata == {"format": "mlx"}
    assert header.tensors["x.lora_b"].end - header.tensors["x.lora_b"].start == 4 * 96 * 2
    assert path.stat().st_size >= 8 + 64 * 4 * 4 + 4 * 96 * 2


def test_reads_a_real_mlx_file(tiny_adapter: Path) -> None:
    header = read_header(tiny_adapter / "adapters.safetensors")
    assert header.shape("model.layers.0.self_attn.q_proj.lora_a") == (64, 4)
    assert header.shape("model.layers.1.mlp.down_proj.lora_b") == (4, 64)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "shorter than the 8-byte"),
        (b"\x01\x02", "shorter than the 8-byte"),
        (struct.pack("<Q", MAX_HEADER_BYTES + 1) + b"{}", "exceeds"),
        (struct.pack("<Q", 50) + b"{}", "larger than the file"),
        (struct.pack("<Q", 4) + b"nope", "not valid JSON"),
        (struct.pack("<Q", 2) + b"\xff\xfe", "not valid JSON"),
        (_raw([1, 2]), "not a JSON object"),
        (_raw({"t": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "unknown dtype"),
        (_raw({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
        (_raw({"t": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4), "shape"),
        (_raw({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, b"\0" * 4), "data_offsets"),
        (_raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4), "outside"),
        (_raw({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 8), "needs 8"),
        (_raw({"t": "x"}), "not an object"),
        (_raw({"__metadata__": {"a": 1}}), "__metadata__"),
        (
            _raw({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                  "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
            "overlaps",
        ),
    ],
)
def test_corrupt_files_are_reported(tmp_path: Path, data: bytes, fragment: str) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(CorruptFileError, match=fragment) as info:
        read_header(path)
    assert str(path) in info.value.render()


def test_truncated_real_file_is_corrupt(tmp_path: Path, tiny_adapter: Path) -> None:
    data = (tiny_adapter / "adapters.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="outside|larger than the file"):
        read_header(path)


def test_huge_declared_header_is_not_allocated(tmp_path: Path) -> None:
    path = tmp_path / "huge.safetensors"
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    with pytest.raises(CorruptFileError, match="exceeds"):
        read_header(path)


def _check_only_punie_errors(data: bytes) -> None:
    try:
        header = parse_header(data)
    except PunieError as exc:
        assert isinstance(exc, CorruptFileError)
    else:
        for info in header.tensors.values():
            assert 0 <= info.start <= info.end <= len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_corrupt_file_error(data: bytes) -> None:
    _check_only_punie_errors(data)


_entry = st.fixed_dictionaries(
    {
        "dtype": st.sampled_from(["F32", "F16", "U32", "BOOL", "X", 3]),
        "shape": st.lists(st.integers(-2, 5), max_size=3) | st.just("s"),
        "data_offsets": st.lists(st.integers(-4, 64), min_size=0, max_size=3),
    }
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=5), _entry | st.integers(), max_size=4), st.binary(max_size=64),
       st.integers(0, 200))
@pytest.mark.slow
def test_random_headers_and_truncations_raise_only_corrupt_file_error(header: dict, data: bytes, cut: int) -> None:
    raw = _raw(header, data)
    _check_only_punie_errors(raw)
    _check_only_punie_errors(raw[:cut])
    # a length prefix that lies about the JSON that follows
    _check_only_punie_errors(struct.pack("<Q", max(len(raw) - 8 - cut, 0)) + raw[8:])


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8),
                       st.tuples(st.sampled_from(["F32", "BF16", "U8", "I64"]),
                                 st.lists(st.integers(0, 6), max_size=3).map(tuple)), max_size=5))
def test_write_then_read_round_trips(tmp_path_factory: pytest.TempPathFactory, tensors: dict) -> None:
    path = tmp_path_factory.mktemp("rt") / "x.safetensors"
    write_safetensors(path, tensors)
    header = read_header(path)
    assert {name: (t.dtype, t.shape) for name, t in header.tensors.items()} == tensors
