"""A fast BLAS for the mlx children Punie starts on a Linux CPU (never for Punie's own process).

``mlx[cpu]`` on Linux bundles the single-threaded reference BLAS: a dense float32 matmul
runs at ~6 GFLOP/s where OpenBLAS, preloaded into the process, gives ~180 GFLOP/s on the
same two cores (../shared/notes/mlx-facts.md, "Speed on a CPU"). Every mlx child (the
server, ``mlx_lm lora``, the canary, the dense copy) gets its environment from
`mlx_child_env`, the one place that adds ``LD_PRELOAD`` (prepended to any existing one).

Which library: ``PUNIE_BLAS`` (wins) or the profile's ``server.blas``:

- ``auto`` (default): the system's OpenBLAS (Debian/Ubuntu ``libopenblas0-pthread``,
  Fedora ``openblas``), searched under /usr/lib, /usr/lib64, /usr/local/lib;
- ``off``: the bundled BLAS (the old path; benchmarks compare against it);
- a file: that library; a directory: searched like /usr/lib.

macOS (Metal, Accelerate) and CUDA builds are left alone. What the child really mapped
is read from ``/proc/PID/maps`` (`mapped_blas`), so reports say what happened, not
what was meant. Where nothing is found, everything works as before and `hint_once`
gives the one line saying what to install.
"""

from __future__ import annotations

import functools
import glob
import importlib.metadata
import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from punie import envvars

logger = logging.getLogger(__name__)

AUTO = "auto"
OFF = "off"
#: Where ``auto`` looks.
SEARCH_ROOTS: tuple[str, ...] = ("/usr/lib", "/usr/lib64", "/usr/local/lib")
#: Library paths under a root, best first: threaded OpenBLAS before the serial one.
PATTERNS: tuple[str, ...] = (
    "*/openblas-pthread/libblas.so.3",  # Debian/Ubuntu libopenblas0-pthread
    "openblas-pthread/libblas.so.3",
    "*/openblas-openmp/libblas.so.3",  # Debian/Ubuntu libopenblas0-openmp
    "libopenblasp.so.0",  # Fedora openblas-threads
    "*/libopenblas.so.0",
    "libopenblas.so.0",  # Fedora openblas, Arch
    "libopenblas.so",
)
INSTALL_HINT = ("for fast mlx on this CPU install OpenBLAS: `apt-get install libopenblas0-pthread` "
                "(Debian/Ubuntu) or `dnf install openblas` (Fedora)")


@dataclass(frozen=True)
class BlasChoice:
    """The BLAS an mlx child gets: ``path`` to preload, or None with ``reason`` (and whether a hint helps)."""

    path: str | None
    source: str  # "PUNIE_BLAS", "server.blas" or "search"
    reason: str | None = None
    hint: bool = False  # nothing found where a fast BLAS would help: tell what to install

    def describe(self) -> str:
        """One line for a plan or a log."""
        if self.path:
            return f"{self.path} (preloaded, from {self.source})"
        return f"bundled ({self.reason})"


def applies(platform: str | None = None) -> str | None:
    """None when a preloaded BLAS helps mlx here; else why not (macOS, CUDA build, no mlx)."""
    platform = platform or sys.platform
    if platform != "linux":
        return f"not on Linux ({platform}: mlx uses Metal/Accelerate)"
    return "the CUDA build of mlx" if _cuda_build() else None


@functools.cache
def _cuda_build() -> bool:
    names = {(d.metadata["Name"] or "").lower().replace("_", "-") for d in importlib.metadata.distributions()}
    return any(n.startswith("mlx-cuda") for n in names)


def search(roots: tuple[str, ...] | list[str] = SEARCH_ROOTS) -> str | None:
    """The first OpenBLAS library under ``roots`` (PATTERNS order), None if there is none."""
    for pattern in PATTERNS:
        for root in roots:
            for hit in sorted(glob.glob(os.path.join(glob.escape(root), pattern))):
                if os.path.isfile(hit):
                    return hit
    return None


def find_blas(setting: str | None = None, environ: Mapping[str, str] | None = None,
              *, platform: str | None = None) -> BlasChoice:
    """The BLAS for mlx children: ``PUNIE_BLAS`` if set, else ``setting`` (server.blas), else auto."""
    env = os.environ if environ is None else environ
    value, source = env.get(envvars.BLAS), envvars.BLAS
    if not value:
        value, source = setting or AUTO, ("server.blas" if setting and setting != AUTO else "search")
    value = value.strip()
    if value.lower() == OFF:
        return BlasChoice(None, source, f"{OFF} by {source}")
    if (why := applies(platform)) is not None:
        return BlasChoice(None, source, why)
    if value.lower() == AUTO:
        found = search()
        return BlasChoice(found, source) if found else BlasChoice(None, source, "no OpenBLAS found", hint=True)
    path = Path(value).expanduser()
    if path.is_dir():
        found = search([str(path)])
        return BlasChoice(found, source) if found else BlasChoice(None, source, f"no OpenBLAS in {path}", hint=True)
    if path.is_file():
        return BlasChoice(str(path), source)
    return BlasChoice(None, source, f"{source} names {path}, which does not exist", hint=True)


def preload_env(choice: BlasChoice, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables to add to a child's environment for ``choice`` (empty: nothing to preload)."""
    if not choice.path:
        return {}
    env = os.environ if environ is None else environ
    current = [p for p in env.get("LD_PRELOAD", "").replace(" ", ":").split(":") if p and p != choice.path]
    return {"LD_PRELOAD": ":".join([choice.path, *current])}


def mlx_child_env(environ: Mapping[str, str] | None = None, setting: str | None = None) -> dict[str, str]:
    """``environ`` (default os.environ) plus the fast BLAS: the environment of an mlx child.

    The one function every mlx child's environment goes through; says once per process,
    in the log, what to install when no fast BLAS is found.
    """
    env = dict(os.environ if environ is None else environ)
    choice = find_blas(setting, env)
    if hint := hint_once(choice):
        logger.warning("%s", hint)
    env.update(preload_env(choice, env))
    return env


_told: set[str] = set()


def hint_text(choice: BlasChoice) -> str | None:
    """The one-line install hint for ``choice`` (None when a hint would not help)."""
    return f"BLAS: {choice.reason}; {INSTALL_HINT}" if choice.hint else None


def say_once(hint: str | None) -> str | None:
    """``hint`` the first time this process gives an install hint, None afterwards (said once)."""
    if not hint or "hint" in _told:
        return None
    _told.add("hint")
    return hint


def hint_once(choice: BlasChoice) -> str | None:
    """The one-line install hint, the first time in this process only (None otherwise)."""
    return say_once(hint_text(choice))


def mapped_blas(pid: int) -> list[str]:
    """The BLAS libraries process ``pid`` has mapped (from /proc/PID/maps; empty if unreadable)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    found: list[str] = []
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and "blas" in os.path.basename(parts[5]).lower() and parts[5] not in found:
            found.append(parts[5])
    return found


def blas_report(pid: int | None, preloaded: str | None) -> dict[str, object]:
    """What the child at ``pid`` really runs with: ``active`` when the preloaded library is mapped."""
    mapped = mapped_blas(pid) if pid else []
    real = os.path.realpath(preloaded) if preloaded else None
    active = bool(real) and any(os.path.realpath(p) == real for p in mapped)
    return {"preloaded": preloaded, "mapped": mapped, "active": active}
