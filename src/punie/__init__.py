"""Punie: a Python coding agent on local MLX models, launched from declarative profiles.

The public Python API is `punie.api`; its names are also reachable as ``punie.NAME``
(imported on first use, so ``import punie`` and the CLI stay fast).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    import importlib
    import importlib.util

    # `from punie import envvars` asks for the attribute before importing the submodule: a
    # submodule must not pull in punie.api (whose imports come back to the half-imported caller).
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    api = importlib.import_module("punie.api")
    if name in api.__all__:
        return getattr(api, name)
    raise AttributeError(f"module 'punie' has no attribute {name!r}")


def __dir__() -> list[str]:
    import importlib

    return sorted([*globals(), *importlib.import_module("punie.api").__all__])
