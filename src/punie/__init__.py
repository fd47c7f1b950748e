"""Punie: a Python coding agent on local MLX models, launched from declarative profiles.

The public Python API is `punie.api`; its names are also reachable as ``punie.NAME``
(imported on first use, so ``import punie`` and the CLI stay fast).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # ``from punie import paths`` asks for the attribute before importing the submodule:
    # a submodule must not pull in the whole API (and the cycle back to itself).
    if name.startswith("_") or importlib.util.find_spec(f"{__name__}.{name}") is not None:
        raise AttributeError(f"module 'punie' has no attribute {name!r}")
    api = importlib.import_module("punie.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'punie' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *importlib.import_module("punie.api").__all__])
