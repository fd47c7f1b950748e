"""Conversation history kept under ``.punie/sessions/``: one JSON file per session.

A session file holds the session's id, its cwd, a title (the first prompt's
first line), the profile it ran with, creation and update times, and the
pydantic-ai messages of the conversation (their JSON form). It is rewritten
atomically after each finished turn, so a killed agent leaves the last good
state. The ACP server lists these for ``session/list`` and replays one as
``session/update`` notifications for ``session/load`` (:func:`replay_updates`).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from punie.config.atomic import write_atomic
from punie.errors import CorruptFileError
from punie.jsonio import load_json_file
from punie.paths import sessions_dir

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
TITLE_CHARS = 80
#: A larger session file is skipped (a long conversation is a few MB).
MAX_SESSION_BYTES = 256 * 1024 * 1024


__all__ = ["SessionRecord", "SessionStore", "replay_updates", "sessions_dir", "title_of", "valid_session_id"]


def valid_session_id(session_id: str) -> bool:
    """Whether ``session_id`` can name a session file (no path characters)."""
    return bool(_ID.match(session_id or ""))


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def title_of(prompt: str) -> str:
    """A session's title: the first non-empty line of its first prompt, shortened."""
    line = next((ln.strip() for ln in prompt.splitlines() if ln.strip()), "")
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 3] + "..."


@dataclass
class SessionRecord:
    """One stored session."""

    session_id: str
    cwd: str
    title: str | None = None
    profile: str | None = None
    created_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    messages: list[Any] = field(default_factory=list, repr=False)

    def to_json(self) -> dict[str, Any]:
        from pydantic_ai.messages import ModelMessagesTypeAdapter

        return {"session_id": self.session_id, "cwd": self.cwd, "title": self.title, "profile": self.profile,
                "created_at": self.created_at, "updated_at": self.updated_at,
                "messages": ModelMessagesTypeAdapter.dump_python(self.messages, mode="json")}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SessionRecord:
        from pydantic_ai.messages import ModelMessagesTypeAdapter

        return cls(session_id=data["session_id"], cwd=data["cwd"], title=data.get("title"),
                   profile=data.get("profile"), created_at=data.get("created_at") or now(),
                   updated_at=data.get("updated_at") or now(),
                   messages=list(ModelMessagesTypeAdapter.validate_python(data.get("messages") or [])))


class SessionStore:
    """The session files of one project directory."""

    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root)

    def path(self, session_id: str) -> Path:
        if not valid_session_id(session_id):
            raise ValueError(f"invalid session id {session_id!r}")
        return self.root / f"{session_id}.json"

    def save(self, record: SessionRecord) -> None:
        """Write the record atomically (a temporary file renamed over the old one)."""
        record.updated_at = now()
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(record.session_id)
        write_atomic(target, json.dumps(record.to_json(), ensure_ascii=False), new_mode=0o600)

    def load(self, session_id: str) -> SessionRecord | None:
        """The stored session, or None when there is none (or it cannot be read)."""
        try:
            path = self.path(session_id)
            data = load_json_file(path, max_bytes=MAX_SESSION_BYTES)
            return SessionRecord.from_json(data)
        except FileNotFoundError:
            return None
        except (CorruptFileError, ValueError, KeyError, TypeError, OSError) as exc:
            logger.warning("session %s cannot be read: %s", session_id, exc)
            return None

    def list(self) -> list[SessionRecord]:
        """Every readable session (messages not loaded), most recently updated first."""
        found: list[SessionRecord] = []
        if not self.root.is_dir():
            return found
        for path in self.root.glob("*.json"):
            try:
                data = load_json_file(path, max_bytes=MAX_SESSION_BYTES)
                fields = {key: data.get(key) for key in ("session_id", "cwd", "title", "profile", "created_at",
                                                         "updated_at")}
                if not all(isinstance(v, str) or v is None for v in fields.values()) \
                        or not fields["session_id"] or not fields["cwd"]:
                    raise ValueError("session_id, cwd, title, profile and times must be strings")
                found.append(SessionRecord(session_id=data["session_id"], cwd=data["cwd"], title=data.get("title"),
                                           profile=data.get("profile"), created_at=data.get("created_at") or "",
                                           updated_at=data.get("updated_at") or ""))
            except FileNotFoundError:
                continue  # removed while listing
            except (CorruptFileError, ValueError, KeyError, TypeError, OSError) as exc:
                logger.warning("skipping unreadable session file %s: %s", path, exc)
        found.sort(key=lambda r: r.updated_at, reverse=True)
        return found

    async def alist(self) -> list[SessionRecord]:
        """`list` in a worker thread: reading files never stalls the agent's event loop."""
        import anyio

        return await anyio.to_thread.run_sync(self.list)

    async def aload(self, session_id: str) -> SessionRecord | None:
        """`load` in a worker thread (see `alist`)."""
        import anyio

        return await anyio.to_thread.run_sync(self.load, session_id)


def replay_updates(messages: list[Any], describe: Any) -> list[Any]:
    """The ``session/update`` payloads that show a stored conversation again, in order.

    ``describe(name, args)`` gives a tool call's (title, kind), as the ACP server shows them.
    User prompts become ``user_message_chunk``, answers ``agent_message_chunk``,
    thinking ``agent_thought_chunk``, and each tool call a ``tool_call`` with its
    final ``tool_call_update`` (the result, or failed for a retried call).
    """
    from acp.helpers import (
        start_tool_call,
        text_block,
        tool_content,
        update_agent_message_text,
        update_agent_thought_text,
        update_tool_call,
        update_user_message_text,
    )
    from pydantic_ai.messages import (
        ModelRequest,
        ModelResponse,
        RetryPromptPart,
        TextPart,
        ThinkingPart,
        ToolCallPart,
        ToolReturnPart,
        UserPromptPart,
    )

    from punie.agent.textclean import scrub

    updates: list[Any] = []
    for message in messages:
        if isinstance(message, ModelRequest):
            for part in message.parts:
                if isinstance(part, UserPromptPart):
                    content = part.content
                    text = content if isinstance(content, str) else "\n".join(c for c in content if isinstance(c, str))
                    updates.append(update_user_message_text(text))
                elif isinstance(part, ToolReturnPart):
                    updates.append(update_tool_call(part.tool_call_id, status="completed",
                                                    content=[tool_content(text_block(str(part.content)[:8000]))]))
                elif isinstance(part, RetryPromptPart) and part.tool_call_id and part.tool_name:
                    updates.append(update_tool_call(part.tool_call_id, status="failed"))
        elif isinstance(message, ModelResponse):
            for part in message.parts:
                if isinstance(part, TextPart) and (text := scrub(part.content)):
                    updates.append(update_agent_message_text(text))
                elif isinstance(part, ThinkingPart) and part.content:
                    updates.append(update_agent_thought_text(part.content))
                elif isinstance(part, ToolCallPart):
                    args = part.args_as_dict() if not isinstance(part.args, str) or _json_object(part.args) else {}
                    title, kind = describe(part.tool_name, args)
                    updates.append(start_tool_call(part.tool_call_id, title, kind=kind, status="pending",
                                                   raw_input=args))
    return updates


def _json_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False
