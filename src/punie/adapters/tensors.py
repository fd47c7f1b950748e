"""Tensor data of safetensors files as numpy arrays: read one tensor, write a whole file.

Headers go through `punie.weights.safetensors` (the one validating reader and
writer); this module adds reading the data: float tensors read as float32.
numpy is imported on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from punie.errors import AdapterError, CorruptFileError
from punie.jsonio import open_regular
from punie.weights.safetensors import TensorInfo, read_header

if TYPE_CHECKING:
    import numpy as np

__all__ = ["load_tensor", "numpy_module", "tensor_index"]


def tensor_index(path: Path) -> dict[str, TensorInfo]:
    """Tensor names, dtypes, shapes and byte offsets of a safetensors file, from its start
    (not from the data section, as in the header), ready to seek to.

    The header goes through Punie's one validating reader, so offsets are known to
    lie inside the file before any tensor is read.
    """
    try:
        header = read_header(path)
    except OSError as exc:
        raise AdapterError(f"cannot read: {exc.strerror or exc}", where=str(path)) from exc
    start = header.data_start
    return {
        name: TensorInfo(name, t.dtype, t.shape, start + t.start, start + t.end) for name, t in header.tensors.items()
    }


_NP_DTYPES = {"F32": "<f4", "F16": "<f2", "F64": "<f8"}


def load_tensor(path: Path, info: TensorInfo) -> np.ndarray:
    """Read one tensor as float32 (F32, F16, BF16 and F64 are supported)."""
    np = numpy_module()
    count = 1
    for d in info.shape:
        count *= d
    with open_regular(path) as (fh, _):
        fh.seek(info.start)
        raw = fh.read(info.end - info.start)
    width = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8}.get(info.dtype)
    if width is None:
        raise AdapterError(
            f"tensor '{info.name}' has dtype {info.dtype}; only F32, F16, BF16 and F64 can be composed",
            where=str(path),
        )
    if len(raw) != count * width:
        raise CorruptFileError(
            f"tensor '{info.name}' has {len(raw)} bytes, its shape {list(info.shape)} needs {count * width}",
            where=str(path),
        )
    if info.dtype == "BF16":
        # bfloat16 is the upper half of a float32.
        bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        arr = bits.view(np.float32)
    else:
        arr = np.frombuffer(raw, dtype=_NP_DTYPES[info.dtype]).astype(np.float32)
    return arr.reshape(info.shape)


def numpy_module() -> Any:
    # Imported on first use: most commands never compose, and numpy costs start-up time.
    import numpy

    return numpy
