"""What `punie check` asks of a profile's backend: the rules that differ from one engine to another.

The checks package sits below `punie.launch` and knows no backend by name: each backend
(`punie.launch.backends`) hands its `CheckRules` to `punie.checks.check_profiles`, and
`punie.launch.backends.check_profiles` composes the two for every profile.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from punie.config.models import ResolvedProfile
from punie.weights.headers import ModelShapes

#: One problem of a backend's own rules: (severity, code, profile key, message).
Item = tuple[str, str, str, str]
#: A backend's own rules: (problems, lines that passed) for a profile, its model's shapes, its adapter dir.
ExtraRules = Callable[[ResolvedProfile, ModelShapes | None, Path | None], tuple[list[Item], list[str]]]


@dataclass(frozen=True)
class CheckRules:
    """How the engine loads models and adapters, as far as the check needs to know.

    ``strict_load``: the model is checked as deep as mlx_lm's strict load (an engine with its own
    loader, vLLM, checks by its own rules). ``serves_peft``: a PEFT adapter directory is served as it
    is (its mlx_lm adapter checks are skipped). ``extra``: the engine's own rules, run last.
    """

    strict_load: bool = True
    serves_peft: bool = False
    extra: ExtraRules | None = None


#: The rules of an engine that loads like mlx_lm and has no rules of its own.
GENERIC_RULES = CheckRules()
