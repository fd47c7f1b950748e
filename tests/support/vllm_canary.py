"""The adapter canary against a hand-started vLLM server, for bench/canary_vllm.py.

(tests/launch/test_canary_vllm.py checks the same through `punie up` itself.)

Builds a vLLM-compatible tiny model (head_dim 64), trains a LoRA with mlx_lm lora, raises its
scale (see tests/launch/test_canary_mlx.py), records its canary with mlx_lm, converts the adapter to
PEFT exactly (lora_A = lora_a.T, lora_B = lora_b.T, lora_alpha = scale * rank), starts vLLM with
``--enable-lora --lora-modules strong=PEFT`` and sends the canary probe twice on that one server:
with the LoRA's model id and with the base's id (what vLLM serves when it ignores the adapter).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.support.ports import free_port


def to_peft(mlx_adapter: Path, out: Path) -> Path:
    import numpy as np
    from safetensors.numpy import load_file, save_file

    config = json.loads((mlx_adapter / "adapter_config.json").read_text())
    lora = config["lora_parameters"]
    tensors = load_file(str(mlx_adapter / "adapters.safetensors"))
    peft: dict[str, np.ndarray] = {}
    modules = set()
    for name, value in tensors.items():
        module, leaf = name.rsplit(".", 1)
        modules.add(module.rsplit(".", 1)[1])
        key = "lora_A" if leaf == "lora_a" else "lora_B"
        peft[f"base_model.model.{module}.{key}.weight"] = np.ascontiguousarray(value.T)
    out.mkdir(parents=True)
    save_file(peft, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": lora["rank"], "lora_alpha": lora["scale"] * lora["rank"],
        "target_modules": sorted(modules), "lora_dropout": 0.0, "bias": "none", "use_rslora": False,
        "task_type": "CAUSAL_LM",
    }))
    return out



def find_vllm_python(repo: Path) -> str | None:
    """The Python of a vLLM environment: $CANARY_VLLM_PYTHON, else <repo>/.venv-vllm (scripts/setup-vllm.sh)."""
    candidate = os.environ.get("CANARY_VLLM_PYTHON") or str(repo / ".venv-vllm" / "bin" / "python")
    return candidate if Path(candidate).is_file() else None


def run(vllm_python: str, tmp: Path) -> dict[str, Any]:
    """Probe one vLLM server with the LoRA id and the base id; return what was seen and judged."""
    import httpx

    from punie.launch.canary import ExpectedCanary
    from punie.launch.stamp import compute_canary
    from tests.support import tiny

    model = tiny.build_tiny_model(tmp / "model", hidden=128, heads=2, kv_heads=1, intermediate=256)
    trained = tiny.train_tiny_adapter(model, tmp / "trained", tiny.write_chat_dataset(tmp / "data"))
    strong = tmp / "strong"
    shutil.copytree(trained, strong)
    config = json.loads((strong / "adapter_config.json").read_text())
    config["lora_parameters"]["scale"] *= 50
    (strong / "adapter_config.json").write_text(json.dumps(config))
    canary = compute_canary(model, strong)
    peft = to_peft(strong, tmp / "peft")
    port = free_port()
    argv = [vllm_python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--dtype", "float32", "--max-model-len", "512", "--enforce-eager", "--enable-lora",
            "--lora-modules", f"strong={peft}", "--max-lora-rank", "8", "--host", "127.0.0.1",
            "--port", str(port)]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1")
    seen: dict[str, Any] = {"canary": canary}
    with open(tmp / "vllm.log", "wb") as log:
        start = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            while True:
                if proc.poll() is not None or time.monotonic() - start > 600:
                    raise RuntimeError("vLLM did not start:\n" + (tmp / "vllm.log").read_text()[-3000:])
                try:
                    if httpx.get(base_url + "/models", timeout=5, trust_env=False).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            seen["ready_seconds"] = time.monotonic() - start
            for side, model_id in (("lora", "strong"), ("base", str(model))):
                expected = ExpectedCanary(adapter=str(strong), canary=canary, model=model_id)
                path, body = expected.request()
                answer = httpx.post(base_url + path, json=body, timeout=120, trust_env=False).json()
                seen[side] = (expected.judge(answer), answer["choices"][0]["logprobs"]["top_logprobs"][0])
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return seen
