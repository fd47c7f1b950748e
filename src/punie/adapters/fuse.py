"""The fused-model cache: an adapter merged into its base's weights, once, keyed by what it is made of.

A fused model is a plain mlx model directory (what ``mlx_lm fuse`` writes, with
``model.safetensors.index.json``, which mlx.distributed's ``sharded_load`` needs).
It lives under ``<cache>/fused/<key>/`` (`punie.paths.fused_models_dir`) where
the key hashes

- the base's weights fingerprint (`punie.weights.fingerprint`: another quantization
  or fine-tune of the base is another key),
- the adapter's content (``adapter_config.json`` and ``adapters.safetensors`` bytes;
  not ``punie-adapter.json``, whose eval scores change without changing the weights),
- the output options (`FuseSpec`: dtype, re-quantization bits and group size).

Each entry carries ``punie-fused.json`` (`FusedManifest`): what it was made from,
the size and sha256 of every file (so a corrupted or half-copied entry is detected
before it is served) and the verification (the fused model's canary top-k and its
distances to the adapter's recorded canary). Entries are written to a temporary
sibling and renamed into place under an exclusive lock on ``<key>.lock``, so
concurrent `punie up`s fuse once and a reader never sees half an entry.

This module is pure file handling; fusing itself (mlx_lm in a child process) and
the verdict are `punie.launch.fuse`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from punie.adapters.canary import Canary, TopToken
from punie.adapters.files import CONFIG_FILE, WEIGHTS_FILE
from punie.config.atomic import replace_dir, write_atomic
from punie.config.models import FuseOptions
from punie.errors import AdapterError, ConfigError
from punie.jsonio import load_model_file
from punie.limits import CHUNK_BYTES
from punie.paths import fused_models_dir
from punie.weights.headers import INDEX_FILE  # the weight index mlx_lm's save writes; sharded_load reads it

logger = logging.getLogger(__name__)

#: Bumped when what an entry holds changes, so older entries are not reused.
FORMAT_VERSION = "punie-fuse-1"
MANIFEST_FILE = "punie-fused.json"
#: Length of the key's hex prefix naming an entry.
KEY_CHARS = 20


class FuseSpec(BaseModel):
    """How the fused weights are written: dtype of the non-quantized ones, and re-quantization.

    ``bits`` None: dense (every quantized layer of the base is de-quantized), which keeps
    the adapter's delta exactly; ``"base"``: each fused layer re-quantized with the base's own
    bits and group size (``mlx_lm fuse``'s default: the size of the base); N: the whole dense
    fused model quantized to N bits (``mlx_lm convert -q``). Re-quantizing rounds the delta
    away, more the fewer the bits.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    dtype: Literal["float16", "bfloat16", "float32"] | None = None
    bits: int | Literal["base"] | None = None
    group_size: int | None = None

    @classmethod
    def of(cls, options: FuseOptions, *, where: str | None = None) -> FuseSpec:
        """The spec of a profile's ``fuse`` options."""
        if options.group_size is not None and not isinstance(options.bits, int):
            raise ConfigError("group_size applies only with bits (re-quantization)", where=where,
                              hint="set fuse.bits too, or remove fuse.group_size")
        return cls(dtype=options.dtype, bits=options.bits, group_size=options.group_size)

    def describe(self) -> str:
        if self.bits is None:
            quant = "dense (de-quantized)"
        elif self.bits == "base":
            quant = "re-quantized like the base"
        else:
            quant = f"re-quantized to {self.bits} bits, group {self.group_size or 64}"
        return f"{quant}, {self.dtype or 'base dtype'}"

    def child_args(self) -> list[str]:
        """The options of ``python -m punie.adapters.fuse_mlx``."""
        if self.bits is None:
            args = ["--dequantize"]
        elif self.bits == "base":
            args = ["--keep-quantization"]
        else:
            args = ["--bits", str(self.bits)]
        if isinstance(self.bits, int) and self.group_size is not None:
            args += ["--group-size", str(self.group_size)]
        if self.dtype:
            args += ["--dtype", self.dtype]
        return args


class FileDigest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int
    sha256: str


class FuseCheckRecord(BaseModel):
    """The verification of a fused model: its canary top-k against the adapter's recorded canary."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    canary: str = Field(description="canary_digest of the canary it was checked against.")
    top: list[TopToken] = Field(description="Top-k first-token logprobs of the fused model, from disk.")
    verdict: str
    distance_to_adapter: float
    distance_to_base: float
    separation: float
    engine: str | None = None


class FusedManifest(BaseModel):
    """``punie-fused.json`` in a fused-model cache entry."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str = FORMAT_VERSION
    key: str
    base_model: str = Field(description="The base model directory it was fused from.")
    base_weights: str = Field(description="The base's weights fingerprint.")
    adapter: str = Field(description="The adapter directory it was fused from.")
    adapter_hash: str
    spec: FuseSpec
    created: str
    files: dict[str, FileDigest]
    check: FuseCheckRecord


def adapter_content_hash(adapter_dir: str | Path) -> str:
    """sha256 over the adapter's ``adapter_config.json`` and ``adapters.safetensors`` bytes."""
    digest = hashlib.sha256(b"punie-adapter-content-1")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        path = Path(adapter_dir) / name
        try:
            with open(path, "rb") as fh:
                digest.update(f"{name}:{os.fstat(fh.fileno()).st_size}:".encode())
                while chunk := fh.read(CHUNK_BYTES):
                    digest.update(chunk)
        except FileNotFoundError:
            raise AdapterError(f"no {name}: not an mlx_lm adapter directory", where=str(adapter_dir)) from None
        except OSError as exc:
            raise AdapterError(f"cannot read: {exc.strerror or exc}", where=str(path)) from exc
    return digest.hexdigest()


def canary_digest(canary: Canary) -> str:
    """What a verification was done against: the canary's prompt and both recorded top-k lists."""
    doc = canary.model_dump(mode="json", include={"prompt", "top_k", "base", "adapter"})
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def fuse_key(base_weights: str, adapter_hash: str, spec: FuseSpec) -> str:
    """The cache key of a fused model (hex sha256)."""
    doc = {"format": FORMAT_VERSION, "base": base_weights, "adapter": adapter_hash,
           "spec": spec.model_dump(mode="json")}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def entry_dir(key: str, root: Path | None = None) -> Path:
    """The cache entry of ``key``."""
    return (fused_models_dir() if root is None else root) / key[:KEY_CHARS]


def file_digests(directory: Path) -> dict[str, FileDigest]:
    """Size and sha256 of every file of an entry but its manifest (names relative to it)."""
    out: dict[str, FileDigest] = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name == MANIFEST_FILE:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK_BYTES):
                digest.update(chunk)
        out[name] = FileDigest(size=path.stat().st_size, sha256=digest.hexdigest())
    return out


def read_manifest(entry: Path) -> FusedManifest | None:
    """An entry's manifest; None when there is no entry. CorruptFileError when unreadable."""
    return load_model_file(entry / MANIFEST_FILE, FusedManifest)


def integrity_problem(entry: Path, manifest: FusedManifest) -> str | None:
    """Why an entry's files are not what its manifest recorded (None: intact).

    Sizes first (cheap), then every file's sha256.
    """
    if manifest.format != FORMAT_VERSION:
        return f"made by another Punie ({manifest.format})"
    if INDEX_FILE not in manifest.files:
        return f"no {INDEX_FILE}"
    for name, want in manifest.files.items():
        try:
            size = (entry / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if size != want.size:
            return f"{name} has {size} bytes, {want.size} were written"
    present = {p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file()}
    extra = present - {*manifest.files, MANIFEST_FILE}
    if extra:
        return f"unexpected file(s): {', '.join(sorted(extra))}"
    found = file_digests(entry)
    for name, want in manifest.files.items():
        if found[name].sha256 != want.sha256:
            return f"{name}'s content changed (sha256 {found[name].sha256[:12]}, {want.sha256[:12]} was written)"
    return None


def write_manifest(directory: Path, manifest: FusedManifest) -> None:
    """Write ``punie-fused.json`` atomically."""
    write_atomic(directory / MANIFEST_FILE, json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n",
                 new_mode=0o666)


@contextlib.contextmanager
def entry_lock(entry: Path) -> Iterator[None]:
    """Hold the exclusive lock of a cache entry (``<key>.lock`` beside it): one fuser per key.

    Temporary directories of this entry left by a killed fuser are removed once it is held.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(entry.parent / f"{entry.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        for stale in entry.parent.glob(f".{entry.name}.*"):
            logger.debug("removing %s, left by a fuse that did not finish", stale)
            shutil.rmtree(stale, ignore_errors=True)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def new_work_dir(entry: Path) -> Path:
    """A temporary sibling of ``entry`` to write the fused model into (renamed by `commit`)."""
    return Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))


def commit(work: Path, entry: Path) -> Path:
    """Move a finished work directory into place (replacing a bad entry); call under `entry_lock`."""
    return replace_dir(work, entry, mode=0o755)


def discard(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def manifest_json(manifest: FusedManifest) -> dict[str, Any]:
    return manifest.model_dump(mode="json")
