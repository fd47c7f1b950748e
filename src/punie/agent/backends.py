"""Where the file tools read and write, and where run_command runs: the disk or the ACP client.

The tools (:mod:`punie.agent.tools`) decide *what* to do; a backend decides
*where*. :class:`Disk` and :class:`LocalCommands` are the agent's own
workspace on disk; :class:`ClientFs` and :class:`ClientTerminal` go through the
IDE's ``fs/read_text_file`` / ``fs/write_text_file`` and ``terminal/*``
methods, used when the client advertised them in ``initialize`` (so an
unsaved editor buffer is what the model reads, an edit lands in the editor,
and a command shows in the IDE's terminal).

The workspace path rules are applied *before* anything is delegated: a path
is resolved by :meth:`Workspace.resolve` (inside the root, no ``..`` or
symlink escape), and the client only ever receives that absolute path. The
client is trusted with the bytes, never with the decision of which path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from punie.agent.workspace import ToolFailure, Workspace

logger = logging.getLogger(__name__)

#: Shell the command line is handed to (as ``bash -c LINE``, never built into a string).
SHELL = "bash"


class FileBackend(Protocol):
    """Reads and writes text files of a workspace. ``allow_protected``: a person approved this write
    of a protected path (else it is refused)."""

    async def read_text(self, ws: Workspace, path: str) -> str: ...

    async def write_text(self, ws: Workspace, path: str, content: str, *, allow_protected: bool = False) -> str: ...


class CommandBackend(Protocol):
    """Runs a command line in the workspace root: (exit code or None on timeout, output)."""

    async def run(self, ws: Workspace, command: str, timeout: float, *, call_id: str) -> tuple[int | None, str]: ...


class Disk:
    """The workspace on disk (the tools' own implementations)."""

    async def read_text(self, ws: Workspace, path: str) -> str:
        from punie.agent.tools import read_file_impl

        return read_file_impl(ws, path)

    async def write_text(self, ws: Workspace, path: str, content: str, *, allow_protected: bool = False) -> str:
        from punie.agent.tools import write_file_impl

        return await asyncio.to_thread(lambda: write_file_impl(ws, path, content, allow_protected=allow_protected))

    async def old_text(self, ws: Workspace, path: str) -> str | None:
        """The current text of ``path`` on disk (for a diff), read through the workspace's descriptors."""
        return await asyncio.to_thread(ws.existing_text, path)


class LocalCommands:
    """Commands run by the agent itself (scrubbed environment, process group killed on timeout)."""

    async def run(self, ws: Workspace, command: str, timeout: float, *, call_id: str) -> tuple[int | None, str]:
        from punie.agent.tools import run_command_impl

        return await run_command_impl(ws, command, timeout)


class ClientFs:
    """Files through the ACP client's ``fs/read_text_file`` / ``fs/write_text_file``.

    ``read``/``write`` say which of the two the client advertised; the other
    falls back to the disk (same confinement).
    """

    def __init__(self, conn: Any, session_id: str, *, read: bool, write: bool, fallback: FileBackend | None = None):
        self.conn = conn
        self.session_id = session_id
        self.read = read
        self.write = write
        self.fallback = fallback or Disk()

    async def read_text(self, ws: Workspace, path: str) -> str:
        if not self.read:
            return await self.fallback.read_text(ws, path)
        from punie.agent.tools import MAX_READ_CHARS

        real = await asyncio.to_thread(ws.checked_read_path, path)  # the disk path's checks, by descriptor
        try:
            response = await self.conn.read_text_file(session_id=self.session_id, path=str(real))
        except Exception as exc:  # the client's error (no such file, not text...) goes back to the model
            raise ToolFailure(f"cannot read {path!r}: {_client_error(exc)}") from None
        text = response.content
        if len(text) > MAX_READ_CHARS:
            text = text[:MAX_READ_CHARS] + f"\n[... truncated: showing {MAX_READ_CHARS} of {len(text)} characters]"
        return text

    async def write_text(self, ws: Workspace, path: str, content: str, *, allow_protected: bool = False) -> str:
        if not self.write:
            return await self.fallback.write_text(ws, path, content, allow_protected=allow_protected)
        # The checks the disk path makes (hard links, symlinks, mounts, protection, file type), by descriptor.
        real = await asyncio.to_thread(lambda: ws.checked_write_path(path, allow_protected=allow_protected))
        try:
            await self.conn.write_text_file(session_id=self.session_id, path=str(real), content=content)
        except Exception as exc:
            raise ToolFailure(f"cannot write {path!r}: {_client_error(exc)}") from None
        return f"wrote {len(content.encode('utf-8'))} bytes to {ws.relative(real)}"

    async def old_text(self, ws: Workspace, path: str) -> str | None:
        """The current text of ``path`` as the client sees it (for a diff), None when there is none."""
        try:
            return await self.read_text(ws, path)
        except ToolFailure:
            return None


class ClientTerminal:
    """run_command through ``terminal/create`` / ``output`` / ``wait_for_exit`` / ``kill`` / ``release``.

    ``on_terminal(call_id, terminal_id)`` is told the terminal as soon as it
    exists (the ACP server embeds it in the tool call, so the IDE shows it live).
    The terminal is always released, also when the turn is cancelled.
    """

    def __init__(self, conn: Any, session_id: str,
                 on_terminal: Callable[[str, str], Awaitable[None]] | None = None):
        self.conn = conn
        self.session_id = session_id
        self.on_terminal = on_terminal

    async def run(self, ws: Workspace, command: str, timeout: float, *, call_id: str) -> tuple[int | None, str]:
        from punie.agent.tools import MAX_COMMAND_OUTPUT, MAX_COMMAND_TIMEOUT

        if not command.strip():
            raise ToolFailure("command must not be empty")
        timeout = min(max(float(timeout), 1.0), MAX_COMMAND_TIMEOUT)
        try:
            created = await self.conn.create_terminal(
                session_id=self.session_id, command=SHELL, args=["-c", command], cwd=str(ws.root),
                output_byte_limit=MAX_COMMAND_OUTPUT,
            )
        except Exception as exc:
            raise ToolFailure(f"the client could not start the command: {_client_error(exc)}") from None
        terminal_id = created.terminal_id
        try:
            if self.on_terminal:
                try:
                    await self.on_terminal(call_id, terminal_id)
                except Exception:
                    logger.exception("terminal update failed")
            timed_out = False
            try:
                exit_status = await asyncio.wait_for(
                    self.conn.wait_for_terminal_exit(session_id=self.session_id, terminal_id=terminal_id), timeout)
            except TimeoutError:
                timed_out = True
                exit_status = None
                await self.conn.kill_terminal(session_id=self.session_id, terminal_id=terminal_id)
            out = await self.conn.terminal_output(session_id=self.session_id, terminal_id=terminal_id)
            text = out.output + ("\n[... output truncated by the client]" if out.truncated else "")
            if timed_out:
                return None, f"timed out after {timeout:g} s (killed)" + (f"; output so far:\n{text}" if text else "")
            code = getattr(exit_status, "exit_code", None)
            if code is None and getattr(exit_status, "signal", None):
                return 128, f"killed by signal {exit_status.signal}\n{text}"  # type: ignore[union-attr]
            return (code if code is not None else 0), text
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.conn.kill_terminal(session_id=self.session_id, terminal_id=terminal_id))
            raise
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.conn.release_terminal(session_id=self.session_id, terminal_id=terminal_id))


def _client_error(exc: BaseException) -> str:
    data = getattr(exc, "data", None)
    message = data.get("message") if isinstance(data, dict) else None
    return str(message or exc) or type(exc).__name__
