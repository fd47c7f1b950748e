"""mlx_lm.server's flags for a profile's server options: one rule for the one process of the mlx
backend and for every rank of the mlx-distributed one (flag names as in `mlx_lm server --help`)."""

from __future__ import annotations

import json

from punie.config.models import ServerOptions


def _number(value: float | int) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def sampling_flags(server: ServerOptions) -> list[str]:
    """``--temp``, ``--top-p``, ``--max-tokens`` and ``--chat-template-args``, for the options that are set."""
    flags: list[str] = []
    if server.temperature is not None:
        flags += ["--temp", _number(server.temperature)]
    if server.top_p is not None:
        flags += ["--top-p", _number(server.top_p)]
    if server.max_tokens is not None:
        flags += ["--max-tokens", str(server.max_tokens)]
    if server.chat_template_args:
        flags += ["--chat-template-args", json.dumps(server.chat_template_args, sort_keys=True)]
    return flags
