"""The file names of an adapter directory (mlx_lm's, PEFT's and Punie's own): one home.

mlx_lm's ``lora`` writes ``adapter_config.json`` (before training starts) and
``adapters.safetensors``, plus checkpoints ``NNNNNNN_adapters.safetensors``;
Punie adds ``punie-adapter.json``. Hugging Face PEFT writes
``adapter_model.safetensors`` with its own ``adapter_config.json``.
"""

from __future__ import annotations

import re
from pathlib import Path

ADAPTERS_DIR = "adapters"
#: Adapter specs picked from metadata rather than named.
SPECIAL_SPECS = ("latest", "best")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapters.safetensors"
METADATA_FILE = "punie-adapter.json"
PEFT_WEIGHTS_FILES = ("adapter_model.safetensors", "adapter_model.bin")
CHECKPOINT = re.compile(r"^(\d+)_adapters\.safetensors$")


def checkpoints(adapter_dir: Path) -> list[Path]:
    """mlx_lm's checkpoint files in ``adapter_dir``, in iteration order."""
    try:
        found = [(int(m.group(1)), p) for p in adapter_dir.iterdir() if (m := CHECKPOINT.match(p.name))]
    except OSError:
        return []
    return [p for _, p in sorted(found)]


def peft_weights(adapter_dir: Path) -> Path | None:
    """The PEFT weights file of ``adapter_dir``, if it is a PEFT adapter."""
    for name in PEFT_WEIGHTS_FILES:
        if (adapter_dir / name).is_file():
            return adapter_dir / name
    return None
