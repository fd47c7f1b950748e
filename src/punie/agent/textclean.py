"""Chat-template debris in model answers: removed from what the user sees, tool calls recovered.

Small local models sometimes write their chat template's markup into the
answer: ``<|im_end|>``, ``<tool_response>`` / ``</tool_response>``, or a whole
``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` the server did not
turn into a real tool call. :class:`TagFilter` removes them from a stream of
text pieces (a tag split over two pieces is held back until it is complete);
:func:`scrub` does the same for a whole answer. :func:`parse_tool_call_text`
recovers the tool calls written as text, so the agent can run them.
"""

from __future__ import annotations

import json
import re
from typing import Any

CALL_OPEN = "<tool_call>"
#: Special tokens that end the model's turn: text after one is not part of the answer.
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>")
CALL_CLOSE = "</tool_call>"
#: Markup removed where it stands (the text around it is kept).
_TAG = re.compile(
    r"<\|im_start\|>(?:system|user|assistant|tool)?\n?"  # a turn header, with its role
    r"|<\|[A-Za-z0-9_]{1,40}\|>"  # special tokens: <|im_end|>, <|endoftext|>, <|eot_id|> ...
    r"|</?tool_response>|</?tool_calls?>|</?function_calls?>"
)
_LITERALS = ("<tool_response>", "</tool_response>", CALL_OPEN, CALL_CLOSE, "<tool_calls>", "</tool_calls>",
             "<function_call>", "</function_call>", "<function_calls>", "</function_calls>")
_SPECIAL_PREFIX = re.compile(r"<\|[A-Za-z0-9_]{0,40}\|?$")


def _held(buffer: str) -> int:
    """How many characters at the end of ``buffer`` may be the start of a tag (kept back)."""
    start = buffer.rfind("<")
    if start < 0:
        return 0
    tail = buffer[start:]
    if ">" in tail or len(tail) > 48:
        return 0
    if any(lit.startswith(tail) for lit in _LITERALS) or _SPECIAL_PREFIX.match(tail):
        return len(tail)
    return 0


_TURN = "<|im_start|>"
_ROLES = ("system\n", "user\n", "assistant\n", "tool\n")


def _role_pending(text: str) -> bool:
    """Whether ``text`` is a turn header whose role and newline have not all arrived yet."""
    if not text.startswith(_TURN):
        return False
    after = text[len(_TURN):]
    return any(role.startswith(after) and role != after for role in _ROLES)


class TagFilter:
    """Removes template markup from text that arrives in pieces (a streamed answer).

    A ``<tool_call>`` block is hidden whole (up to its ``</tool_call>``, or to
    the end of the answer when it is never closed): it is a call, not prose.
    """

    def __init__(self) -> None:
        self._buffer = ""
        self._hiding = False
        #: Set once an end-of-turn token went by: what follows is debris, the answer is whole.
        self.ended = False

    def feed(self, piece: str) -> str:
        """The text of ``piece`` that can be shown now."""
        self._buffer += piece
        out: list[str] = []
        while self._buffer:
            if self._hiding:
                end = self._buffer.find(CALL_CLOSE)
                if end < 0:
                    keep = max((n for n in range(1, len(CALL_CLOSE)) if self._buffer.endswith(CALL_CLOSE[:n])),
                               default=0)
                    self._buffer = self._buffer[len(self._buffer) - keep:] if keep else ""
                    break
                self._buffer = self._buffer[end + len(CALL_CLOSE):]
                self._hiding = False
                continue
            match = _TAG.search(self._buffer)
            if match is not None and _role_pending(self._buffer[match.start():]):
                out.append(self._buffer[: match.start()])  # "<|im_start|>ass": its role may still be coming
                self._buffer = self._buffer[match.start():]
                break
            if match is not None:
                out.append(self._buffer[: match.start()])
                self._buffer = self._buffer[match.end():]
                self.ended = self.ended or match.group() in END_OF_TURN
                if match.group() == CALL_OPEN:
                    self._hiding = True
                continue
            keep = _held(self._buffer)
            out.append(self._buffer[: len(self._buffer) - keep])
            self._buffer = self._buffer[len(self._buffer) - keep:]
            break
        return "".join(out)

    def flush(self) -> str:
        """What is left at the end of the answer (an incomplete tag is dropped)."""
        rest, self._buffer = self._buffer, ""
        if self._hiding:
            return ""
        rest = _TAG.sub("", rest)
        return rest[: len(rest) - _held(rest)]


def scrub(text: str) -> str:
    """``text`` without template markup and without tool calls written as text."""
    f = TagFilter()
    return (f.feed(text) + f.flush()).strip()


def has_tool_call_text(text: str) -> bool:
    """Whether the answer contains a tool call written as text."""
    return CALL_OPEN in text or CALL_CLOSE in text


def parse_tool_call_text(text: str) -> list[tuple[str, dict[str, Any]]] | None:
    """The tool calls written as ``<tool_call>{"name": N, "arguments": {...}}</tool_call>``.

    None when a ``<tool_call>`` is there but cannot be read (bad JSON, no
    name): the caller asks the model again. An empty list: no call in the text.
    """
    calls: list[tuple[str, dict[str, Any]]] = []
    pos = 0
    while (start := text.find(CALL_OPEN, pos)) >= 0:
        end = text.find(CALL_CLOSE, start)
        body = text[start + len(CALL_OPEN): end if end >= 0 else len(text)].strip()
        pos = end + len(CALL_CLOSE) if end >= 0 else len(text)
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return None
        args = data.get("arguments", data.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                return None
        if not isinstance(args, dict):
            return None
        calls.append((data["name"], args))
    if not calls and CALL_CLOSE in text:
        return None
    return calls
