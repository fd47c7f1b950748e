"""The local backends: the workspace on disk (:class:`DiskFiles`) and commands run by the agent
itself (:class:`LocalCommands`).

The ``*_impl`` functions do the blocking work on a :class:`Workspace`, through
the descriptors it opened inside its root (:mod:`punie.agent.fs`); the backends
run them in a worker thread so the event loop keeps serving. Commands run
under the reaper with a scrubbed environment (:mod:`punie.agent.procs`).
The limits and messages are :mod:`punie.agent.limits`'s.
"""

from __future__ import annotations

import re

import anyio.to_thread

from punie.agent import limits
from punie.agent.backends import SHELL
from punie.agent.limits import CommandLine
from punie.agent.procs import command_env, run_reaped
from punie.agent.workspace import Workspace
from punie.errors import ToolFailure


def read_file_impl(ws: Workspace, path: str) -> str:
    """The text of a regular file, as :func:`punie.agent.limits.shown_text` shows it (at most
    ``ws.max_read_bytes`` read)."""
    data, size = ws.read_bytes(path)
    return limits.shown_text(data, size, ws.max_read_bytes)


def write_file_impl(ws: Workspace, path: str, content: str, *, allow_protected: bool = False) -> str:
    """Write ``content`` to a file (parents created), replacing it atomically.

    A protected path is refused unless ``allow_protected`` (a person approved this write).
    """
    data = content.encode("utf-8")
    rel = ws.write_bytes(path, data, allow_protected=allow_protected)
    return limits.wrote_text(len(data), rel)


def list_files_impl(ws: Workspace, path: str = ".", recursive: bool = True) -> str:
    """Files under a directory (relative to the root; directories end with '/')."""
    cap = limits.MAX_LIST_ENTRIES
    entries, truncated = ws.list(path, recursive=recursive, skip=limits.SKIP_DIRS, limit=cap)
    entries.sort()
    if not entries:
        return f"{ws.canonical(path)}: empty directory"
    if truncated:
        entries.append(f"[... stopped after {cap} entries]")
    return "\n".join(entries)


def search_impl(ws: Workspace, pattern: str, path: str = ".", regex: bool = False, ignore_case: bool = False) -> str:
    """Lines matching ``pattern`` as ``file:line: text`` (regular files only; symlinks are not followed)."""
    if not pattern:
        raise ToolFailure("pattern must not be empty")
    flags = re.IGNORECASE if ignore_case else 0
    try:
        compiled = re.compile(pattern if regex else re.escape(pattern), flags)
    except re.error as exc:
        raise ToolFailure(f"invalid regular expression {pattern!r}: {exc}") from None
    cap = limits.MAX_SEARCH_MATCHES
    matches: list[str] = []
    for rel, data in ws.files(path, skip=limits.SKIP_DIRS, max_bytes=limits.MAX_SEARCH_FILE_BYTES):
        if b"\x00" in data[:8192]:
            continue
        for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
            if compiled.search(line):
                matches.append(f"{rel}:{lineno}: {line.strip()[:200]}")
                if len(matches) >= cap:
                    matches.append(f"[... stopped after {cap} matches]")
                    return "\n".join(matches)
    return "\n".join(matches) if matches else f"no matches for {pattern!r}"


async def run_command_impl(ws: Workspace, command: str, timeout: float = limits.DEFAULT_COMMAND_TIMEOUT
                           ) -> tuple[int | None, str]:
    """:meth:`LocalCommands.run` of ``command`` (checked by :meth:`CommandLine.of`)."""
    return await LocalCommands().run(ws, CommandLine.of(command, timeout), call_id="")


class DiskFiles:
    """The workspace on disk, through the descriptors it opened inside its root."""

    async def read_text(self, ws: Workspace, path: str) -> str:
        return await anyio.to_thread.run_sync(read_file_impl, ws, path)

    async def write_text(self, ws: Workspace, path: str, content: str, *, allow_protected: bool = False) -> str:
        return await anyio.to_thread.run_sync(
            lambda: write_file_impl(ws, path, content, allow_protected=allow_protected))

    async def list_files(self, ws: Workspace, path: str = ".", recursive: bool = True) -> str:
        return await anyio.to_thread.run_sync(list_files_impl, ws, path, recursive)

    async def search(self, ws: Workspace, pattern: str, path: str = ".", regex: bool = False,
                     ignore_case: bool = False) -> str:
        return await anyio.to_thread.run_sync(search_impl, ws, pattern, path, regex, ignore_case)

    async def old_text(self, ws: Workspace, path: str) -> str | None:
        """The current text of ``path`` on disk (for a diff), read through the workspace's descriptors."""
        return await anyio.to_thread.run_sync(ws.existing_text, path)


class LocalCommands:
    """Commands run by the agent itself: ``bash -c LINE`` in the workspace root, stdin /dev/null,
    stdout and stderr merged, the allow-listed environment plus ``agent.env``
    (:func:`punie.agent.procs.command_env`), and every process it starts killed when it ends,
    times out or is cancelled, or when the agent dies (:mod:`punie.agent.procs`)."""

    async def run(self, ws: Workspace, command: CommandLine, *, call_id: str) -> tuple[int | None, str]:
        cwd = str(ws.root)
        return await run_reaped([SHELL, "-c", command.line], cwd=cwd, env=command_env(ws.env, cwd=cwd),
                                timeout=command.timeout, output_limit=limits.MAX_COMMAND_OUTPUT)
