"""The vLLM environment the ``vllm`` tests run in (scripts/setup-vllm.sh), or a skip.

$PUNIE_VLLM_PYTHON, else <repo>/.venv-vllm/bin/python. Without it the tests are skipped,
unless PUNIE_REQUIRE_VLLM=1 (CI) makes that a failure. Call it from a module-scoped fixture:
those run before the autouse fixture that removes PUNIE_* variables from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.launch_helpers import cmdline_of, live_pids

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

    def serves(pid: int) -> bool:
        cmd = cmdline_of(pid)
        return "vllm" in cmd and f"--port {port} " in cmd + " "

    return live_pids(serves)
