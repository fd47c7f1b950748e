"""ACP's stdio: the protocol streams on stdin/stdout, and a JSON-RPC transport that survives its peer.

stdout belongs to the protocol, so fd 1 is moved to stderr and the original stdout is
kept for protocol frames only (a stray print or a library's banner cannot corrupt them).

The acp SDK's own newline transport logs a traceback for a line that is not JSON and
drops it silently, and a line that is JSON but not an object (a JSON-RPC batch ``[...]``,
a bare number) makes its receive loop raise: the agent disconnects and exits. An IDE
that sends one bad frame would lose the session. :class:`LineTransport` answers what
JSON-RPC 2.0 says a server answers instead (``-32700`` parse error, ``-32600`` invalid
request, with the request's id when it has a usable one) and keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import sys
import threading
from typing import Any

logger = logging.getLogger(__name__)

#: The stream reader's buffer (a prompt with embedded files can be large).
STDIO_LIMIT = 50 * 1024 * 1024
#: Longest line accepted at all; a longer one is read through and answered with a parse error.
MAX_LINE = 4 * STDIO_LIMIT
PARSE_ERROR = -32700
INVALID_REQUEST = -32600


def invalid_message(message: Any) -> str | None:
    """Why ``message`` (a decoded JSON value) is not a JSON-RPC 2.0 request, notification or
    response, or None when it is one (JSON-RPC 2.0, section 4 and 5)."""
    if isinstance(message, list):
        return "batches are not supported" if message else "an empty batch"
    if not isinstance(message, dict):
        return f"a message must be a JSON object, not {type(message).__name__}"
    if "id" in message and not _usable_id(message["id"]):
        return "id must be a string, an integer or null"
    if "method" in message:
        if not isinstance(message["method"], str):
            return "method must be a string"
        if "params" in message and not isinstance(message["params"], (dict, list, type(None))):
            return "params must be an object or an array"
        return None
    if "id" not in message:
        return "neither a request (method) nor a response (id)"
    if "result" not in message and "error" not in message:
        return "a response has a result or an error"
    if "error" in message and not isinstance(message["error"], (dict, type(None))):
        return "error must be an object"
    return None


def _usable_id(value: Any) -> bool:
    # bool is an int subclass, but true/false are not ids; floats are discouraged by the spec
    # and would never match a pending request's id.
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def error_reply(code: int, message: str, request: Any = None, detail: str | None = None) -> dict[str, Any]:
    """The JSON-RPC error response to a frame that could not be served."""
    request_id = request.get("id") if isinstance(request, dict) and _usable_id(request.get("id")) else None
    error: dict[str, Any] = {"code": code, "message": message}
    if detail:
        error["data"] = {"details": detail}
    return {"jsonrpc": "2.0", "id": request_id, "error": error}


class LineTransport:
    """Newline-delimited JSON-RPC over asyncio streams (the acp SDK's Transport protocol).

    ``receive`` returns only well-formed messages; every other frame is answered with a
    JSON-RPC error (a malformed response frame, which has nobody to answer, is logged and
    dropped) and reading goes on.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    async def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
        async with self._lock:  # one frame at a time: concurrent handlers must not interleave bytes
            self._writer.write(data)
            await self._writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        while True:
            line = await self._read_line()
            if not line:
                return None
            line = line.strip()
            if not line:
                continue
            try:
                message = json.loads(line)
            except ValueError as exc:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not UTF-8
                logger.warning("ACP: ignored a line that is not JSON (%d bytes): %s", len(line), exc)
                await self._answer(error_reply(PARSE_ERROR, "Parse error", detail=str(exc)))
                continue
            problem = invalid_message(message)
            if problem is None:
                return message
            logger.warning("ACP: ignored an invalid JSON-RPC message: %s", problem)
            if isinstance(message, dict) and "method" not in message and "id" in message:
                continue  # a broken response: answering it could loop between two peers
            await self._answer(error_reply(INVALID_REQUEST, "Invalid Request", message, problem))

    async def _answer(self, reply: dict[str, Any]) -> None:
        try:
            await self.send(reply)
        except (ConnectionError, RuntimeError) as exc:  # the client is gone; receive sees EOF next
            logger.debug("ACP: could not answer a bad frame: %s", exc)

    async def _read_line(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                try:
                    chunk = await self._reader.readuntil(b"\n")
                except asyncio.LimitOverrunError as exc:
                    chunk = await self._reader.readexactly(exc.consumed)
                    size += len(chunk)
                    if size <= MAX_LINE:
                        chunks.append(chunk)
                    continue
                size += len(chunk)
                if size > MAX_LINE:  # read to its end and dropped: memory stays bounded
                    logger.warning("ACP: ignored a line of %d bytes (the limit is %d)", size, MAX_LINE)
                    detail = f"line longer than {MAX_LINE} bytes"
                    await self._answer(error_reply(PARSE_ERROR, "Parse error", detail=detail))
                    chunks, size = [], 0
                    continue
                chunks.append(chunk)
                return b"".join(chunks)
        except asyncio.IncompleteReadError as exc:
            chunks.append(exc.partial)
            return b"".join(chunks) if size + len(exc.partial) <= MAX_LINE else b""

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._writer.wait_closed()


async def stdio_transport() -> LineTransport:
    """The protocol transport on stdin and the process's original stdout."""
    reader, writer = await _stdio_streams()
    return LineTransport(reader, writer)


def _pollable(fd: int) -> bool:
    """Whether the event loop can watch ``fd`` (epoll refuses regular files and /dev/null)."""
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(fd)


async def _stdio_streams() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Protocol streams on stdin and the *original* stdout; fd 1 then points at stderr.

    Pipes, sockets and terminals are watched by the event loop; anything else
    (stdin from a file or /dev/null, stdout to a file) is served by a thread, so
    the agent never crashes on how it was started.
    """
    loop = asyncio.get_running_loop()
    sys.stdout.flush()
    out_fd = os.dup(1)
    os.dup2(2, 1)
    reader = asyncio.StreamReader(limit=STDIO_LIMIT)
    in_fd = sys.stdin.fileno()
    if _pollable(in_fd):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    else:
        _feed_from_thread(loop, reader, in_fd)
    # FlowControlMixin is what StreamWriter.drain() waits on.
    protocol = asyncio.streams.FlowControlMixin(loop)
    transport: asyncio.BaseTransport
    if _pollable(out_fd):
        transport, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(out_fd, "wb", buffering=0))
    else:
        transport = _BlockingWriteTransport(out_fd)
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)  # type: ignore[arg-type]
    return reader, writer


def _feed_from_thread(loop: asyncio.AbstractEventLoop, reader: asyncio.StreamReader, fd: int) -> None:
    def pump() -> None:
        try:
            while chunk := os.read(fd, 65536):
                loop.call_soon_threadsafe(reader.feed_data, chunk)
        except OSError as exc:
            logger.debug("stdin read failed: %s", exc)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop may already be closed
                loop.call_soon_threadsafe(reader.feed_eof)

    threading.Thread(target=pump, name="punie-acp-stdin", daemon=True).start()


class _BlockingWriteTransport(asyncio.WriteTransport):
    """Writes straight to a file descriptor that the event loop cannot watch (a regular file)."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view and not self._closing:
            view = view[os.write(self._fd, view) :]

    def can_write_eof(self) -> bool:
        return False

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def abort(self) -> None:
        self.close()

    def get_write_buffer_size(self) -> int:
        return 0


