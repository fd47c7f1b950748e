"""Read (and, for tests and tools, write) safetensors headers without touching tensor data.

The format: 8 bytes little-endian header length N, N bytes of JSON
``{name: {"dtype", "shape", "data_offsets": [start, end]}, "__metadata__": {...}}``,
then the data section. Every field is validated, so a truncated file, a
non-JSON header or offsets that lie about the data are reported as
`CorruptFileError`, never as a crash or a huge allocation.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from punie.errors import CorruptFileError
from punie.jsonio import open_regular, parse_json

#: A header larger than this is refused (real headers are a few hundred KB).
MAX_HEADER_BYTES = 100 * 1024 * 1024

#: Bytes per element of each dtype safetensors knows.
DTYPE_SIZES: dict[str, int] = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in a header: dtype, shape and its byte range in the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


@dataclass(frozen=True)
class SafetensorsHeader:
    """A validated header: tensors by name, metadata, and the file it came from.

    Tensor offsets are relative to the data section, which starts at byte ``data_start``.
    """

    path: Path
    tensors: dict[str, TensorInfo]
    metadata: dict[str, str] = field(default_factory=dict)
    data_start: int = 8

    def shape(self, name: str) -> tuple[int, ...] | None:
        info = self.tensors.get(name)
        return info.shape if info else None


def _corrupt(path: Path | str, message: str) -> CorruptFileError:
    return CorruptFileError(f"corrupt safetensors file: {message}", where=str(path))


def parse_header(data: bytes, *, file_size: int | None = None, path: Path | str = "<bytes>") -> SafetensorsHeader:
    """Parse a header from the first bytes of a file (``data`` may be the whole file).

    ``file_size`` is the full size of the file; it defaults to ``len(data)``.
    Raises CorruptFileError for anything that is not a valid header.
    """
    size = len(data) if file_size is None else file_size
    if size < 8 or len(data) < 8:
        raise _corrupt(path, f"file is {size} bytes, shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", data[:8])
    if length > MAX_HEADER_BYTES:
        raise _corrupt(path, f"header length {length} exceeds the {MAX_HEADER_BYTES}-byte limit")
    if length > size - 8:
        raise _corrupt(path, f"header length {length} is larger than the file ({size} bytes): truncated?")
    if len(data) < 8 + length:
        raise _corrupt(path, "header is truncated")
    try:
        # every value is then validated to its exact shape, which bounds the nesting: no depth walk
        doc = parse_json(data[8 : 8 + length], where=str(path), max_depth=None)
    except CorruptFileError as exc:
        raise _corrupt(path, f"header is {exc.message}") from None
    if not isinstance(doc, dict):
        raise _corrupt(path, "header is not a JSON object")
    data_size = size - 8 - length
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _corrupt(path, "__metadata__ must map names to strings")
    tensors: dict[str, TensorInfo] = {}
    for name, entry in doc.items():
        tensors[name] = _tensor(path, name, entry, data_size)
    _check_overlaps(path, tensors)
    return SafetensorsHeader(path=Path(path), tensors=tensors, metadata=dict(metadata), data_start=8 + length)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _tensor(path: Path | str, name: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _corrupt(path, f"{name}: entry is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_SIZES:
        raise _corrupt(path, f"{name}: unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _corrupt(path, f"{name}: shape {shape!r} is not a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise _corrupt(path, f"{name}: data_offsets {offsets!r} is not [start, end]")
    start, end = offsets
    if not 0 <= start <= end <= data_size:
        raise _corrupt(path, f"{name}: data_offsets [{start}, {end}] outside the {data_size}-byte data section")
    expected = math.prod(shape) * DTYPE_SIZES[dtype]
    if end - start != expected:
        raise _corrupt(path, f"{name}: {end - start} bytes for {dtype}{list(shape)} which needs {expected}")
    return TensorInfo(name=name, dtype=dtype, shape=tuple(shape), start=start, end=end)


def _check_overlaps(path: Path | str, tensors: Mapping[str, TensorInfo]) -> None:
    last_end, last_name = 0, None
    for info in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if info.start < last_end and info.end > info.start:
            raise _corrupt(path, f"{info.name}: data overlaps {last_name}")
        if info.end > last_end:
            last_end, last_name = info.end, info.name


def read_header(path: str | os.PathLike[str]) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file; never reads tensor data.

    Raises CorruptFileError for malformed files and AdapterError-compatible
    CorruptFileError for unreadable ones (missing files raise FileNotFoundError).
    """
    path = Path(path)
    with open_regular(path) as (fh, size):
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise _corrupt(path, f"file is {size} bytes, shorter than the 8-byte header length")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES or length > size - 8:
            return parse_header(prefix, file_size=size, path=path)  # raises with the right message
        body = fh.read(length)
    return parse_header(prefix + body, file_size=size, path=path)


_NP_CODES = {"float32": "F32", "float16": "F16", "float64": "F64", "int8": "I8", "uint8": "U8", "int16": "I16",
             "uint16": "U16", "int32": "I32", "uint32": "U32", "int64": "I64", "uint64": "U64", "bool": "BOOL"}


def write_safetensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, object],
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write a safetensors file; the one writer of the format in Punie.

    Each value is a numpy array (written as is, little-endian; other dtypes as
    float32) or a ``(dtype, shape)`` pair, written zero-filled without
    allocating it (synthetic models and adapters whose shapes are all that
    matters). Names are written sorted, the header padded to 8 bytes.
    """
    header: dict[str, object] = {}
    if metadata is not None:
        header["__metadata__"] = dict(metadata)
    arrays: list[object] = []
    offset = 0
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
            dtype, shape = value[0], list(value[1])
            nbytes = math.prod(shape) * DTYPE_SIZES[dtype]
            arrays.append(nbytes)
        else:
            import numpy as np

            arr = np.ascontiguousarray(value)
            if arr.dtype.name not in _NP_CODES:
                arr = arr.astype(np.float32)
            arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
            dtype, shape, nbytes = _NP_CODES[arr.dtype.name], list(arr.shape), arr.nbytes
            arrays.append(arr)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    path = Path(path)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for item in arrays:
            if isinstance(item, int):
                if item:
                    fh.seek(item, os.SEEK_CUR)
            else:
                fh.write(memoryview(item.reshape(-1)).cast("B"))  # type: ignore[attr-defined]
        fh.truncate(8 + len(raw) + offset)
    return path
