"""The backend seam (issue 22): no backend name is compared outside `punie.launch.backends`.

The scanner reads every module of ``src/punie`` with `ast` and reports each comparison
(``==``, ``!=``, ``in``, ``not in``, ``is``), ``match``/``case`` pattern and membership test whose
operand is a backend's name as a string constant (or a tuple/list/set of them). The names come
from `punie.config.models.BACKEND_NAMES`, so a backend added there is covered at once. The scanner
is tested on planted sources, so a blind scanner cannot pass the real scan.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from punie.config.models import BACKEND_NAMES

SRC = Path(__file__).resolve().parents[2] / "src" / "punie"
ALLOWED = SRC / "launch" / "backends"


def _names_in(node: ast.AST, names: frozenset[str]) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value in names
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_in(e, names) for e in node.elts)
    if isinstance(node, ast.Dict):  # membership in a dict keyed by names: ``x in {"vllm": ...}``
        return any(k is not None and _names_in(k, names) for k in node.keys)
    return False


def backend_comparisons(source: str, names: frozenset[str] = frozenset(BACKEND_NAMES)) -> list[int]:
    """Line numbers where ``source`` compares something with a backend name (see the module docstring)."""
    found: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            if any(_names_in(side, names) for side in (node.left, *node.comparators)):
                found.append(node.lineno)
        elif isinstance(node, ast.MatchValue) and _names_in(node.value, names):
            found.append(node.lineno)
        elif isinstance(node, ast.MatchOr) and any(
                isinstance(p, ast.MatchValue) and _names_in(p.value, names) for p in node.patterns):
            found.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "startswith", "endswith", "__contains__", "__eq__") and any(_names_in(a, names) for a in node.args):
            found.append(node.lineno)
    return sorted(set(found))


@pytest.mark.parametrize("source", [
    'if server.backend == "vllm":\n    pass\n',
    'ok = "mlx" != plan.backend\n',
    'x = backend in ("mlx", "vllm")\n',
    'x = backend not in ["vllm"]\n',
    'x = name is "mlx"\n',
    'match backend:\n    case "vllm":\n        pass\n',
    'match backend:\n    case "other" | "mlx":\n        pass\n',
    'x = backend in {"vllm": 1}\n',
    'x = name.startswith("vllm")\n',
    'x = a == b == "mlx"\n',
])
def test_the_scanner_finds_a_planted_comparison(source: str) -> None:
    assert backend_comparisons(source), source


@pytest.mark.parametrize("source", [
    'backend: Literal["mlx", "vllm"] = "mlx"\n',  # a declaration, not a comparison
    'x = BACKENDS["vllm"]\n',
    'x = {"format": "mlx"}\n',
    'if backend == "mlx-ish":\n    pass\n',
    'x = backend_of(resolved).name == other.name\n',
])
def test_the_scanner_leaves_declarations_alone(source: str) -> None:
    assert backend_comparisons(source) == [], source


def test_no_backend_name_is_compared_outside_launch_backends() -> None:
    offenders = []
    scanned = 0
    for path in sorted(SRC.rglob("*.py")):
        if ALLOWED in path.parents:
            continue
        scanned += 1
        for line in backend_comparisons(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(SRC.parent)}:{line}")
    assert scanned > 100  # the whole package was read, not an empty folder
    assert not offenders, "backend name compared outside punie.launch.backends (ask backend_of(...)):\n" + "\n".join(
        offenders)


def test_the_table_covers_the_declared_names() -> None:
    from punie.launch.backends import BACKENDS, backend_of

    assert set(BACKENDS) == set(BACKEND_NAMES)
    for name, backend in BACKENDS.items():
        assert backend.name == name and backend.part().name == name and backend_of(name) is backend
        assert backend.part.engine == backend.engine
