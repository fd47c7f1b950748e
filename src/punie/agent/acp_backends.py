"""The ACP client's backends: files through the IDE's ``fs/*`` methods, commands in its ``terminal/*``.

Used when the client advertised them in ``initialize`` (chosen once per
session by :func:`punie.agent.acp_session.client_backends`). The workspace
path rules are applied *before* anything is delegated: a path is checked by the
workspace's descriptor walk (inside the root, no ``..``, symlink or mount
escape, a regular file), and the client only ever receives that absolute path.
The client is trusted with the bytes, never with the decision of which path,
and what it sends back goes through the same limits as the disk's
(:mod:`punie.agent.limits`): a client that ignores the byte limit it was given,
or sends a huge buffer, is cut the same way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread

from punie.agent import limits
from punie.agent.backends import SHELL, FileBackend
from punie.agent.limits import CommandLine
from punie.agent.local import DiskFiles
from punie.agent.shield import finish
from punie.agent.workspace import Workspace
from punie.errors import ToolFailure

logger = logging.getLogger(__name__)

#: Seconds the client is given to kill or release a terminal when a command is cancelled.
CLIENT_CLEANUP_TIMEOUT = 5.0


class ClientFiles:
    """Files through the ACP client's ``fs/read_text_file`` / ``fs/write_text_file``.

    ``read``/``write`` say which of the two the client advertised; the other, and listing and
    searching (which ACP does not offer), go to ``disk`` (same confinement, same limits).
    """

    def __init__(self, conn: Any, session_id: str, *, read: bool, write: bool, disk: FileBackend | None = None):
        self.conn = conn
        self.session_id = session_id
        self.read = read
        self.write = write
        self.disk = disk or DiskFiles()

    async def read_text(self, ws: Workspace, path: str) -> str:
        if not self.read:
            return await self.disk.read_text(ws, path)
        real = await anyio.to_thread.run_sync(ws.checked_read_path, path)  # the disk path's checks, by descriptor
        try:
            response = await self.conn.read_text_file(session_id=self.session_id, path=str(real))
        except Exception as exc:  # the client's error (no such file, not text...) goes back to the model
            raise ToolFailure(f"cannot read {path!r}: {client_error(exc)}") from None
        data = str(response.content).encode("utf-8", errors="replace")
        return limits.shown_text(data, len(data), ws.max_read_bytes)

    async def write_text(self, ws: Workspace, path: str, content: str, *, allow_protected: bool = False) -> str:
        if not self.write:
            return await self.disk.write_text(ws, path, content, allow_protected=allow_protected)
        # The checks the disk path makes (hard links, symlinks, mounts, protection, file type), by descriptor.
        real = await anyio.to_thread.run_sync(lambda: ws.checked_write_path(path, allow_protected=allow_protected))
        try:
            await self.conn.write_text_file(session_id=self.session_id, path=str(real), content=content)
        except Exception as exc:
            raise ToolFailure(f"cannot write {path!r}: {client_error(exc)}") from None
        return limits.wrote_text(len(content.encode("utf-8")), ws.relative(real))

    async def list_files(self, ws: Workspace, path: str = ".", recursive: bool = True) -> str:
        return await self.disk.list_files(ws, path, recursive)

    async def search(self, ws: Workspace, pattern: str, path: str = ".", regex: bool = False,
                     ignore_case: bool = False) -> str:
        return await self.disk.search(ws, pattern, path, regex, ignore_case)

    async def old_text(self, ws: Workspace, path: str) -> str | None:
        """The current text of ``path`` as the client sees it (for a diff), None when there is none."""
        if not self.read:
            return await self.disk.old_text(ws, path)
        try:
            return await self.read_text(ws, path)
        except (ToolFailure, OSError):
            return None


class ClientCommands:
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

    async def run(self, ws: Workspace, command: CommandLine, *, call_id: str) -> tuple[int | None, str]:
        try:
            created = await self.conn.create_terminal(
                session_id=self.session_id, command=SHELL, args=["-c", command.line], cwd=str(ws.root),
                output_byte_limit=limits.MAX_COMMAND_OUTPUT,
            )
        except Exception as exc:
            raise ToolFailure(f"the client could not start the command: {client_error(exc)}") from None
        ids = {"session_id": self.session_id, "terminal_id": created.terminal_id}
        try:
            if self.on_terminal:
                try:
                    await self.on_terminal(call_id, created.terminal_id)
                except Exception:
                    logger.exception("terminal update failed")
            exit_status = None
            with anyio.move_on_after(command.timeout) as waited:
                exit_status = await self.conn.wait_for_terminal_exit(**ids)
            if waited.cancelled_caught:
                await self.conn.kill_terminal(**ids)
            out = await self.conn.terminal_output(**ids)
            text = limits.capped_output(str(out.output), dropped_before=bool(out.truncated))
            if waited.cancelled_caught:
                return None, limits.timed_out_text(command.timeout, text)
            code = getattr(exit_status, "exit_code", None)
            if code is None and (name := getattr(exit_status, "signal", None)):
                code = limits.signalled_exit_code(name)  # as the local reaper reports it
            return (code if code is not None else 0), text
        except anyio.get_cancelled_exc_class():
            await finish(self._quietly(self.conn.kill_terminal(**ids)))
            raise
        finally:
            await finish(self._quietly(self.conn.release_terminal(**ids)))

    @staticmethod
    async def _quietly(call: Awaitable[Any]) -> None:
        with contextlib.suppress(Exception), anyio.move_on_after(CLIENT_CLEANUP_TIMEOUT):
            await call


def client_error(exc: BaseException) -> str:
    """The message of an error the client answered with."""
    data = getattr(exc, "data", None)
    message = data.get("message") if isinstance(data, dict) else None
    return str(message or exc) or type(exc).__name__
