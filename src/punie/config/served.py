"""Which model id a profile's requests name on its server (one home for the rule).

mlx_lm.server applies its ``--adapter-path`` only to the name ``default_model``
(any other name silently serves the base model). vLLM serves the base under
``VLLM_BASE_MODEL_ID`` (``--served-model-name``) and each LoRA under its own
id, the name of the profile it belongs to (``--lora-modules NAME=DIR``), so
profiles sharing one server pick their adapter per request.
"""

from __future__ import annotations

from punie.config.models import Profile
from punie.net import SERVED_MODEL_NAME as MLX_SERVED_MODEL_NAME  # one home: punie.net

#: The base model's id on a vLLM server Punie starts.
VLLM_BASE_MODEL_ID = "base"


def has_adapter(profile: Profile) -> bool:
    """True when the profile serves an adapter (one, or a composition)."""
    return bool(profile.adapter or profile.adapters)


def lora_model_id(profile_name: str) -> str:
    """The id of a profile's LoRA on a vLLM server: the profile's name."""
    return profile_name


def request_model_id(profile_name: str, profile: Profile) -> str:
    """The ``model`` a request for this profile sends."""
    if profile.server.backend == "vllm":
        return lora_model_id(profile_name) if has_adapter(profile) else VLLM_BASE_MODEL_ID
    return MLX_SERVED_MODEL_NAME
