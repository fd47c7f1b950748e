"""The model ids a profile's requests name on its server (the constants; the rule per backend is
`punie.launch.backends.request_model_id`).

mlx_lm.server applies its ``--adapter-path`` only to the name ``default_model``
(any other name silently serves the base model). vLLM serves the base under
``VLLM_BASE_MODEL_ID`` (``--served-model-name``) and each LoRA under its own
id, the name of the profile it belongs to (``--lora-modules NAME=DIR``), so
profiles sharing one server pick their adapter per request.
"""

from __future__ import annotations

import os
from pathlib import Path

from punie.config.models import Profile, ResolvedProfile
from punie.net import SERVED_MODEL_NAME as MLX_SERVED_MODEL_NAME  # noqa: F401  (one home: punie.net)

#: The virtual environment scripts/setup-vllm.sh makes, the default ``server.vllm.python``.
VLLM_VENV = ".venv-vllm"

#: The base model's id on a vLLM server Punie starts.
VLLM_BASE_MODEL_ID = "base"


def has_adapter(profile: Profile) -> bool:
    """True when the profile serves an adapter (one, or a composition)."""
    return bool(profile.adapter or profile.adapters)


def lora_model_id(profile_name: str) -> str:
    """The id of a profile's LoRA on a vLLM server: the profile's name."""
    return profile_name


def vllm_python(resolved: ResolvedProfile) -> str:
    """The Python that runs vLLM: ``server.vllm.python`` (a python or a venv directory,
    relative to the project), else the project's ``.venv-vllm``."""
    spec = resolved.profile.server.vllm.python or VLLM_VENV
    path = Path(spec).expanduser()
    if not path.is_absolute():
        in_project = Path(resolved.project_dir) / path
        if os.sep not in spec and spec != VLLM_VENV and not in_project.exists():
            return spec  # a bare command name (python3.12) is looked up on PATH
        path = in_project
    if path.is_dir() or spec == VLLM_VENV:
        path = path / "bin" / "python"
    return str(path)
