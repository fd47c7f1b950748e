"""The vLLM environment the ``vllm`` tests run in (scripts/setup-vllm.sh), or a skip.

$PUNIE_VLLM_PYTHON, else <repo>/.venv-vllm/bin/python. Without it the tests are skipped,
unless PUNIE_REQUIRE_VLLM=1 (CI) makes that a failure. Call it from a module-scoped fixture:
those run before the autouse fixture that removes PUNIE_* variables from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def vllm_python() -> str:
    """The vLLM environment's python (skips or fails the test when there is none)."""
    python = os.environ.get("PUNIE_VLLM_PYTHON") or str(ROOT / ".venv-vllm" / "bin" / "python")
    if not Path(python).exists():
        if os.environ.get("PUNIE_REQUIRE_VLLM") == "1":
            pytest.fail(f"PUNIE_REQUIRE_VLLM=1 but there is no vLLM python at {python} (bash scripts/setup-vllm.sh)")
        pytest.skip(f"no vLLM environment at {python} (bash scripts/setup-vllm.sh)")
    return python


def server_processes(port: int) -> list[int]:
    """Pids of live vLLM server processes started with ``--port PORT`` (zombies excluded)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as fh:
                state = fh.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if "vllm" in cmd and f"--port {port} " in cmd + " " and state != "Z":
            found.append(int(entry))
    return found
