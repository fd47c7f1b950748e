"""The adapter canary on a real vLLM server: a LoRA id vs the base id on one server.

Runs when a vLLM environment exists (<repo>/.venv-vllm from scripts/setup-vllm.sh, or
$CANARY_VLLM_PYTHON); vLLM needs its own ~3.5 GB environment, so it is skipped otherwise.
Start to ready is 20-45 s on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import vllm_canary

pytestmark = [pytest.mark.slow, pytest.mark.mlx]
pytest.importorskip("mlx_lm")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def vllm_python() -> str:
    found = vllm_canary.find_vllm_python(REPO)
    if found is None:
        pytest.skip("no vLLM environment (.venv-vllm or $CANARY_VLLM_PYTHON)")
    return found


@pytest.mark.timeout(900)
def test_vllm_lora_id_is_active_and_base_id_is_refused(vllm_python: str, tmp_path: Path) -> None:
    seen = vllm_canary.run(vllm_python, tmp_path)
    lora, _ = seen["lora"]
    base, _ = seen["base"]
    assert lora.verdict == "adapter-active" and lora.to_adapter <= 0.05, lora.message()
    assert base.verdict == "base" and base.refuse, base.message()
    assert "the server is answering without the adapter" in base.message()
