"""Where the tools' work happens: the two backend protocols.

The tools (:mod:`punie.agent.tools`) decide *what* to do; a backend decides
*where*, and is chosen once, when a turn's :class:`~punie.agent.tools.TurnDeps`
are built:

* :class:`FileBackend`: read, write, list, search and the old text of a file
  (for a diff). :class:`punie.agent.local.DiskFiles` is the workspace on disk;
  :class:`punie.agent.acp_backends.ClientFiles` goes through the IDE's
  ``fs/read_text_file`` / ``fs/write_text_file`` (so an unsaved editor buffer is
  what the model reads and an edit lands in the editor), the disk for what the
  client does not offer.
* :class:`CommandBackend`: run a checked :class:`~punie.agent.limits.CommandLine`.
  :class:`punie.agent.local.LocalCommands` runs it under the reaper with a
  scrubbed environment; :class:`punie.agent.acp_backends.ClientCommands` in the
  IDE's terminal (``terminal/*``).

Every implementation is complete (each operation, the same limits from
:mod:`punie.agent.limits`, the same messages) and applies the workspace's path
rules (:class:`~punie.agent.workspace.Workspace`) before anything is delegated:
a client only ever receives a path the disk checks allowed.
"""

from __future__ import annotations

from typing import Protocol

from punie.agent.limits import CommandLine
from punie.agent.workspace import Workspace

#: Shell the command line is handed to (as ``bash -c LINE``, never built into a string).
SHELL = "bash"


class FileBackend(Protocol):
    """The file operations of the tools, on a workspace (its path rules always apply)."""

    async def read_text(self, ws: Workspace, path: str) -> str:
        """The text of a regular file as the model sees it (:func:`punie.agent.limits.shown_text`)."""
        ...

    async def write_text(self, ws: Workspace, path: str, content: str, *, allow_protected: bool = False) -> str:
        """Create or replace a file; ``allow_protected``: a person approved writing a protected path."""
        ...

    async def list_files(self, ws: Workspace, path: str = ".", recursive: bool = True) -> str:
        """The files under a directory, one a line (directories end with '/')."""
        ...

    async def search(self, ws: Workspace, pattern: str, path: str = ".", regex: bool = False,
                     ignore_case: bool = False) -> str:
        """Matching lines as ``file:line: text``."""
        ...

    async def old_text(self, ws: Workspace, path: str) -> str | None:
        """The current text of a file (for a diff), None when there is none to show."""
        ...


class CommandBackend(Protocol):
    """Runs a checked command line in the workspace root."""

    async def run(self, ws: Workspace, command: CommandLine, *, call_id: str) -> tuple[int | None, str]:
        """(exit code, or None when the timeout stopped it; the output, capped)."""
        ...
