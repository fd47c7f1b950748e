"""The agent package's structure, read from its source: tools never ask which backend they have,
backends never reach back into the tools, each limit's message is written once, and the package's
own concurrency is anyio (asyncio only where a third-party API forces it, listed with the reason)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

AGENT = Path(__file__).resolve().parents[2] / "src" / "punie" / "agent"

#: Modules that may import asyncio, and why (each reason is a third-party API).
ASYNCIO_ALLOWED = {
    "acp_stdio.py": "the ACP SDK's connection reads and writes asyncio StreamReader/StreamWriter objects: "
                    "the stdio transport must build them",
    "shield.py": "pydantic-ai and the ACP SDK cancel tasks natively (Task.cancel()), which passes through "
                 "anyio's shielded scopes: finishing a clean-up needs asyncio.shield",
}
BACKEND_CLASSES = {"DiskFiles", "ClientFiles", "LocalCommands", "ClientCommands"}
BACKEND_MODULES = ("backends.py", "local.py", "acp_backends.py", "limits.py")
#: Messages of the limits: written in punie/agent/limits.py and nowhere else in the package.
LIMIT_MESSAGES = ("truncated:", "timed out after", "command must not", "bytes omitted", "max_read_bytes)")


def _modules() -> list[Path]:
    return sorted(AGENT.glob("*.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _backend_tests(tree: ast.AST) -> list[str]:
    """Places that ask which backend a value is: ``<x>.files is None`` (or ``commands``, ``==``,
    ``is not``), ``isinstance(<x>, DiskFiles)`` and the like."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr in ("files", "commands") for s in sides):
                found.append(f"line {node.lineno}: compares a backend ({ast.unparse(node)})")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            named = {n.id for arg in node.args[1:] for n in ast.walk(arg) if isinstance(n, ast.Name)}
            named |= {n.attr for arg in node.args[1:] for n in ast.walk(arg) if isinstance(n, ast.Attribute)}
            if named & BACKEND_CLASSES:
                found.append(f"line {node.lineno}: tests a backend's class ({ast.unparse(node)})")
    return found


def test_the_checks_catch_what_they_look_for() -> None:
    """The detectors find the patterns this test forbids (so a pass below means something)."""
    bad = ast.parse("async def read_file(ctx, path):\n"
                    "    if ctx.deps.files is not None: pass\n"
                    "    if isinstance(ctx.deps.commands, LocalCommands): pass\n")
    assert len(_backend_tests(bad)) == 2
    assert "asyncio" in _imported(ast.parse("import asyncio"))
    assert "asyncio.sleep" in _imported(ast.parse("from asyncio import sleep"))


def test_no_tool_asks_which_backend_it_has() -> None:
    tools = _tree(AGENT / "tools.py")
    functions = [n for n in tools.body if isinstance(n, ast.AsyncFunctionDef | ast.FunctionDef)]
    assert {"read_file", "write_file", "list_files", "search", "run_command"} <= {f.name for f in functions}
    found = {f.name: _backend_tests(f) for f in functions}
    assert {name: where for name, where in found.items() if where} == {}


@pytest.mark.parametrize("module", [p.name for p in _modules()])
def test_no_module_of_the_agent_branches_on_a_backend_class_outside_the_choice(module: str) -> None:
    """Outside the backends themselves, nothing tests which backend it holds; the one choice is
    made from the client's capabilities (acp_session.client_backends), never from a backend."""
    if module in BACKEND_MODULES:
        return
    assert _backend_tests(_tree(AGENT / module)) == []


@pytest.mark.parametrize("module", BACKEND_MODULES)
def test_backends_never_import_the_tools(module: str) -> None:
    imported = _imported(_tree(AGENT / module))
    assert not {name for name in imported if name.startswith("punie.agent.tools")}
    if module == "limits.py":  # the bottom of the package: below every backend
        assert not {name for name in imported if name.startswith("punie.agent")}


@pytest.mark.parametrize("module", [p.name for p in _modules()])
def test_the_agent_uses_anyio_not_asyncio(module: str) -> None:
    imported = _imported(_tree(AGENT / module))
    uses = {name for name in imported if name == "asyncio" or name.startswith("asyncio.")}
    if module in ASYNCIO_ALLOWED:
        assert uses, f"{module} no longer needs asyncio: drop it from ASYNCIO_ALLOWED"
    else:
        assert not uses, f"{module} imports {sorted(uses)}: use anyio (or list the third-party reason)"


def test_each_limit_message_is_written_once() -> None:
    """The limits' messages are string constants of limits.py only: no backend words its own."""
    where: dict[str, list[str]] = {message: [] for message in LIMIT_MESSAGES}
    for path in _modules():
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                for message in LIMIT_MESSAGES:
                    if message in node.value:
                        where[message].append(path.name)
    assert {message: sorted(set(files)) for message, files in where.items()} == \
        {message: ["limits.py"] for message in LIMIT_MESSAGES}
