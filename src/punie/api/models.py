"""Base models as the ``punie models`` commands see them: the builtin models, provisioning, GGUF import."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from punie.weights import Progress as Progress
from punie.weights.builtin import ensure_builtin as ensure_builtin
from punie.weights.gguf_import import import_gguf as import_gguf

__all__ = ["BuiltinModel", "Progress", "builtin_models", "ensure_builtin", "import_gguf"]


@dataclass(frozen=True)
class BuiltinModel:
    """One builtin model: its spec (``builtin:NAME``), whether it is in the cache, where, what it is."""

    name: str
    provisioned: bool
    path: Path
    description: str


def builtin_models() -> list[BuiltinModel]:
    """Every builtin model Punie knows, in its own order."""
    from punie.weights.builtin import BUILTINS, builtin_dir, is_provisioned

    return [BuiltinModel(name=f"builtin:{b.name}", provisioned=is_provisioned(b.name), path=builtin_dir(b.name),
                         description=b.description) for b in BUILTINS.values()]
