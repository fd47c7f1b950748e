"""vLLM launch plans: moved to `punie.launch.backends.vllm` (this name stays for its importers)."""

from punie.launch.backends.vllm import (
    PEFT_CACHE,
    VLLM_FATAL_PATTERNS,
    VLLM_MODULE,
    build_vllm_plan,
    check_group,
    group_members,
    vllm_argv,
)

__all__ = ["PEFT_CACHE", "VLLM_FATAL_PATTERNS", "VLLM_MODULE", "build_vllm_plan", "check_group", "group_members",
           "model_ids", "vllm_argv"]


def model_ids(plan):  # type: ignore[no-untyped-def]
    """(the id requests for the plan's adapter send, the base model's id): the plan's backend's."""
    from punie.launch.backends import backend_of

    return backend_of(plan).model_ids(plan)
