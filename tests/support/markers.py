"""Which tests use mlx, decided from their source (tests/conftest.py marks them ``mlx`` at collection).

A test uses mlx when its module imports ``mlx``/``mlx_lm`` at module level (it cannot even be imported
without them), or when, following names through module-level definitions and into the modules of
``tests`` they are imported from, the test function or any fixture it uses (its whole closure,
wherever the fixture is defined):

- imports ``mlx``/``mlx_lm``, or a module named ``*_mlx`` (``punie.adapters.canary_mlx``,
  tests/agent/test_mlx.py, ...), or a support script that runs mlx in a child (``MLX_SUPPORT``);
- names a helper of tests/support/tiny.py that runs ``mlx_lm`` in a child (``MLX_HELPERS``).

Strings are not read (a plan test asserts an argv holding "mlx_lm" without running it), so a test
that starts mlx only through ``punie`` on the builtin model, with no tiny fixture, is marked by hand.
The rule reads source only: nothing is imported or run to decide.
"""

from __future__ import annotations

import ast
import inspect
from functools import cache
from pathlib import Path

#: tests/support/tiny.py's helpers that run mlx_lm in a child process (by argv, which is not read).
MLX_HELPERS = frozenset({"train_tiny_adapter", "build_vllm_assets", "mlx_env"})
#: Support modules run as mlx scripts in a child.
MLX_SUPPORT = frozenset({"tests.support.oracle", "tests.support.sharded_probe", "tests.support.vllm_canary"})
_ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `tests` package


def _module_file(module: str) -> Path | None:
    """The source of a module of this repository (``punie.*`` under src/, ``tests.*``), else None."""
    base = (_ROOT / "src" if module.split(".")[0] == "punie" else _ROOT).joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def _mlx_module(name: str) -> bool:
    """Whether ``name`` is (or is a name inside) mlx, mlx_lm, a module of this repository named
    ``*_mlx``, or one of MLX_SUPPORT. A function named ``*_mlx`` is no module: only module parts count."""
    parts = name.split(".")
    if parts[0] in ("mlx", "mlx_lm") or any(name == m or name.startswith(m + ".") for m in MLX_SUPPORT):
        return True
    if parts[0] not in ("punie", "tests"):
        return False
    modules = [i for i in range(1, len(parts) + 1) if _module_file(".".join(parts[:i]))]
    return any(parts[i - 1].endswith("_mlx") for i in modules)


def _source_of(module: str) -> str | None:
    """The file of a module of the ``tests`` package, or None for any other module."""
    found = _module_file(module) if module.split(".")[0] == "tests" else None
    return str(found) if found else None


class _Module:
    """One parsed module: its top-level definitions and what its top-level imports bind."""

    def __init__(self, source: str) -> None:
        tree = ast.parse(source)
        self.defs: dict[str, ast.AST] = {}
        self.imported: dict[str, str] = {}  # bound name -> dotted name it stands for
        self.imports_mlx = False
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defs[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    if isinstance(target, ast.Name):
                        self.defs[target.id] = node
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:  # `import mlx.core as mx`: mx is mlx.core
                        self.imported[alias.asname] = alias.name
                    else:  # `import os.path`: os is os
                        self.imported[alias.name.split(".")[0]] = alias.name.split(".")[0]
                    self.imports_mlx |= alias.name.split(".")[0] in ("mlx", "mlx_lm")
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    self.imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                self.imports_mlx |= node.module.split(".")[0] in ("mlx", "mlx_lm")


@cache
def _parsed(filename: str) -> _Module | None:
    try:
        return _Module(Path(filename).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):
        return None


def _dotted_uses_mlx(dotted: str, seen: set[tuple[str, str]]) -> bool:
    """Whether ``dotted`` (``tests.support.tiny.build_tiny_model``, ``mlx.core``, ...) uses mlx."""
    if _mlx_module(dotted) or dotted.rsplit(".", 1)[-1] in MLX_HELPERS:
        return True
    module, _, name = dotted.rpartition(".")
    source = _source_of(module)
    return bool(source) and _reaches(source, name, seen)


@cache
def _facts(filename: str, name: str) -> tuple[bool, frozenset[str], frozenset[str]]:
    """One walk of the top-level definition ``name``: (uses mlx by itself, the top-level definitions
    of its module it names, the dotted names of what it names from elsewhere)."""
    module = _parsed(filename)
    if module is None or name not in module.defs:
        return False, frozenset(), frozenset()
    local: set[str] = set()
    dotted: set[str] = set()
    for node in ast.walk(module.defs[name]):
        if isinstance(node, ast.Import):
            if any(_mlx_module(a.name) for a in node.names):
                return True, frozenset(), frozenset()
        elif isinstance(node, ast.ImportFrom) and node.module:
            dotted.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id in module.imported:  # `tiny.build_tiny_model`
            dotted.add(f"{module.imported[node.value.id]}.{node.attr}")
        elif isinstance(node, ast.Name):
            if node.id in MLX_HELPERS:
                return True, frozenset(), frozenset()
            if node.id in module.defs:
                local.add(node.id)
            elif node.id in module.imported:
                dotted.add(module.imported[node.id])
    return False, frozenset(local - {name}), frozenset(dotted)


def _reaches(filename: str, name: str, seen: set[tuple[str, str]]) -> bool:
    """Whether the top-level definition ``name`` of ``filename`` uses mlx (the module docstring's rule)."""
    if (filename, name) in seen:
        return False
    seen.add((filename, name))
    direct, local, dotted = _facts(filename, name)
    return direct or any(_reaches(filename, other, seen) for other in local) \
        or any(_dotted_uses_mlx(d, seen) for d in dotted)


@cache
def _definition_uses_mlx(filename: str, name: str) -> bool:
    return _reaches(filename, name, set())


def _function_uses_mlx(func: object) -> bool:
    try:
        filename = inspect.getsourcefile(inspect.unwrap(func))  # type: ignore[arg-type]
    except TypeError:
        return False
    qualname = getattr(func, "__qualname__", "")
    return bool(filename) and _definition_uses_mlx(filename, qualname.split(".")[0])


def module_imports_mlx(filename: str) -> bool:
    """Whether the module at ``filename`` imports mlx or mlx_lm at its top level."""
    module = _parsed(filename)
    return bool(module and module.imports_mlx)


def uses_mlx(item: object) -> bool:
    """Whether the pytest item ``item`` uses mlx (the rule in this module's docstring)."""
    path = str(getattr(item, "path", ""))
    if path and module_imports_mlx(path):
        return True
    func = getattr(item, "function", None)
    if func is not None and _function_uses_mlx(func):
        return True
    info = getattr(item, "_fixtureinfo", None)
    for name in getattr(item, "fixturenames", ()):
        for fixturedef in (info.name2fixturedefs.get(name, ()) if info else ()):
            if _function_uses_mlx(fixturedef.func):
                return True
    return False
