"""A base model's identity from its files, in milliseconds, without reading all weights.

``weights`` hashes, for every weight file mlx_lm loads: its size, its whole
safetensors header, and 16 samples of 4 KiB spread evenly over its data
section; then every tokenizer file in full. ``shapes`` hashes tensor names,
dtypes and shapes only. So a copy of the same model under another path has the
same identity, and two models with one config and different weights do not
(unless they differ only between samples: a deliberate, documented limit).
"""

from __future__ import annotations

import hashlib
import json
import struct
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from punie.errors import CorruptFileError, ModelError
from punie.jsonio import load_json_file, open_regular, parse_json

SCHEME = "punie-base-1"
SAMPLES = 16
SAMPLE_BYTES = 4096
#: Tokenizer files hashed in full (those mlx_lm's tokenizer loading reads).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "merges.txt",
                   "special_tokens_map.json", "added_tokens.json", "chat_template.jinja", "chat_template.json")
_MAX_TOKENIZER_BYTES = 64 * 1024 * 1024
#: The marker of a dense copy of a quantized model (`punie.launch.dense`): {"origin": WEIGHTS, ...}.
DENSE_MARKER = "punie-dense.json"


class BaseIdentity(BaseModel):
    """Who a base model is, from its files (not its path).

    ``weights`` changes with any sampled weight byte, any header or tokenizer
    file; ``shapes`` only with tensor names, dtypes and shapes. Equal
    ``shapes`` and different ``weights``: the same architecture, other weights.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    scheme: str = Field(SCHEME, description="How the fingerprints were computed.")
    weights: str = Field(description="sha256 over headers, sampled weight bytes and tokenizer files.")
    shapes: str = Field(description="sha256 over tensor names, dtypes and shapes only.")
    config: str | None = Field(None, description="sha256 prefix of the canonical config.json.")
    spec: str | None = Field(None, description="The model spec or path it was computed from (for messages).")
    origin: str | None = Field(None, description="A dense copy's original: the quantized model's ``weights`` "
                               "it was dequantized from (punie-dense.json).")

    @property
    def lineage(self) -> str:
        """The weights this model stands for: its origin's for a dense copy, else its own."""
        return self.origin or self.weights

    def same_weights(self, other: BaseIdentity) -> bool:
        """One model: the same weights, or a dense copy and the quantized model it was made from."""
        return self.scheme == other.scheme and (self.weights == other.weights or self.lineage == other.lineage)

    def same_shapes(self, other: BaseIdentity) -> bool:
        return self.scheme == other.scheme and self.shapes == other.shapes


def config_fingerprint(model_dir: str | Path) -> str:
    """sha256 (16 hex digits) of the canonical JSON (sorted keys) of a model's ``config.json``."""
    path = Path(model_dir) / "config.json"
    config = load_json_file(path, missing=ModelError)
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8", errors="surrogatepass")).hexdigest()[:16]


def _sample_file(path: Path, weights: hashlib._Hash, shapes: hashlib._Hash) -> None:
    with open_regular(path) as (fh, size):
        prefix = fh.read(8)
        if len(prefix) < 8:
            raise CorruptFileError("file is shorter than the 8-byte header length", where=str(path))
        (length,) = struct.unpack("<Q", prefix)
        if length > size - 8:
            raise CorruptFileError(f"header length {length} is larger than the file", where=str(path))
        header = fh.read(length)
        weights.update(f"{path.name}:{size}:".encode())
        weights.update(header)
        data_start, data_size = 8 + length, size - 8 - length
        step = max(data_size // SAMPLES, 1)
        for i in range(SAMPLES):
            offset = data_start + min(i * step, max(data_size - SAMPLE_BYTES, 0))
            fh.seek(offset)
            weights.update(fh.read(SAMPLE_BYTES))
    try:
        doc = parse_json(header, where=str(path))
    except CorruptFileError:
        doc = {}
    if isinstance(doc, dict):
        for name in sorted(k for k in doc if k != "__metadata__"):
            entry = doc[name]
            if isinstance(entry, dict):
                shapes.update(f"{name}:{entry.get('dtype')}:{entry.get('shape')};".encode())


def _signature(model_dir: Path, files: list[Path]) -> tuple[object, ...]:
    parts: list[object] = [str(model_dir)]
    for p in [*files, *(model_dir / n for n in (*TOKENIZER_FILES, "config.json", DENSE_MARKER))]:
        try:
            st = p.stat()
        except OSError:
            continue
        parts.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(parts)


def base_identity(model_dir: str | Path, files: list[Path] | None = None, *, spec: str | None = None) -> BaseIdentity:
    """The identity of the model in ``model_dir`` (``files``: its weight files, default what mlx_lm globs).

    Cached per process by path, sizes and modification times.
    """
    model_dir = Path(model_dir).resolve()
    if files is None:
        from punie.weights.headers import weight_files

        files = weight_files(model_dir)
    if not files:
        raise ModelError("no weight files to fingerprint", where=str(model_dir))
    identity = _cached(model_dir, tuple(files), _signature(model_dir, files))
    return identity.model_copy(update={"spec": spec}) if spec else identity


@lru_cache(maxsize=64)
def _cached(model_dir: Path, files: tuple[Path, ...], _signature: tuple[object, ...]) -> BaseIdentity:
    weights, shapes = hashlib.sha256(SCHEME.encode()), hashlib.sha256(SCHEME.encode())
    for path in sorted(files, key=lambda p: p.name):
        try:
            _sample_file(path, weights, shapes)
        except FileNotFoundError as exc:
            raise ModelError(f"cannot read: {exc.strerror or exc}", where=str(path)) from None
    for name in TOKENIZER_FILES:
        path = model_dir / name
        try:
            with open_regular(path) as (fh, _):
                data = fh.read(_MAX_TOKENIZER_BYTES)
        except FileNotFoundError:
            continue
        weights.update(f"{name}:{len(data)}:".encode())
        weights.update(data)
    try:
        config = config_fingerprint(model_dir)
    except (ModelError, CorruptFileError):
        config = None
    return BaseIdentity(scheme=SCHEME, weights=weights.hexdigest()[:32], shapes=shapes.hexdigest()[:32],
                        config=config, origin=_dense_origin(model_dir))


def _dense_origin(model_dir: Path) -> str | None:
    """The original's weights fingerprint named by a dense copy's marker (None: not a dense copy)."""
    try:
        marker = json.loads((model_dir / DENSE_MARKER).read_text())
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(marker, dict) or marker.get("exact") is not True:  # a rounded copy is another model
        return None
    origin = marker.get("origin")
    return origin if isinstance(origin, str) and origin else None
