"""A scripted OpenAI-compatible chat completions server for tests.

A real HTTP server on 127.0.0.1 (a free port) in a background thread. Each
POST to ``/v1/chat/completions`` takes the next reply from the script and
records the request body, so a test can assert what the agent sent (the
``model`` field, the tool results carried back, the tools offered).

Replies are built with :func:`text_reply`, :func:`tool_call_reply` and
:func:`error_reply`. Non-streaming and streaming (SSE) requests are both
answered. When the script is used up the server answers 500 with a message
saying so, which makes a test that loops forever fail loudly. ``GET /health``
answers 200, as mlx_lm.server does (``punie up`` probes it on a running server).
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a chat completion message, or an HTTP error."""

    content: str | None = None
    tool_calls: tuple[dict[str, Any], ...] = ()
    status: int = 200
    error_body: Any = None
    raw: bytes | None = None
    #: Streamed replies: after the content, wait for this before the final chunk (a model still
    #: sending what the user does not see, e.g. tokens after its end-of-turn token).
    hold: threading.Event | None = field(default=None, compare=False)


def text_reply(text: str) -> Reply:
    """A final assistant message."""
    return Reply(content=text)


_call_ids = itertools.count(1)


def tool_call_reply(*calls: tuple[str, Any], content: str | None = None) -> Reply:
    """Assistant tool calls: each ``(name, arguments)``; arguments a dict or a raw (maybe broken) JSON string."""
    out = []
    for name, args in calls:
        raw = args if isinstance(args, str) else json.dumps(args)
        call_id = f"call_{next(_call_ids)}_{name}"
        out.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": raw}})
    return Reply(content=content, tool_calls=tuple(out))


def raw_reply(data: bytes, status: int = 200) -> Reply:
    """Exactly these bytes as the body (``application/json`` claimed): for broken servers."""
    return Reply(status=status, raw=data)


def error_reply(status: int, body: Any = None) -> Reply:
    """An HTTP error answer (``{"error": ...}`` by default)."""
    return Reply(status=status, error_body=body if body is not None else {"error": f"scripted {status}"})


ReplySource = Reply | Callable[[dict[str, Any]], Reply]


@dataclass
class FakeOpenAI:
    """The running server: ``url`` is the OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""

    script: list[ReplySource]
    requests: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    max_model_len: int = 4096
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def next_reply(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.requests.append(body)
            if not self.script:
                return error_reply(500, {"error": "fake server: script exhausted"})
            source = self.script.pop(0)
        return source(body) if callable(source) else source


def _completion(reply: Reply, index: int) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": reply.content}
    if reply.tool_calls:
        message["tool_calls"] = list(reply.tool_calls)
    return {
        "id": f"chatcmpl-{index}",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "default_model",
        "choices": [
            {"index": 0, "message": message, "finish_reason": "tool_calls" if reply.tool_calls else "stop"}
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _chunks(reply: Reply, index: int) -> list[dict[str, Any]]:
    base = {"id": f"chatcmpl-{index}", "object": "chat.completion.chunk", "created": 1_700_000_000,
            "model": "default_model"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]}]
    if reply.content:
        chunks.append({**base, "choices": [{"index": 0, "delta": {"content": reply.content}, "finish_reason": None}]})
    for i, call in enumerate(reply.tool_calls):
        delta = {"tool_calls": [{"index": i, **call}]}
        chunks.append({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    finish = "tool_calls" if reply.tool_calls else "stop"
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                   "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}})
    return chunks


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def _send_json(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            fake.paths.append(self.path)
            if self.path.rstrip("/") == "/health":  # mlx_lm.server's, which `punie up` probes
                self._send_json(200, {"status": "ok"})
            elif self.path.rstrip("/").endswith("/models"):
                # max_model_len: what vLLM reports (the agent's usage updates read the context window there).
                self._send_json(200, {"object": "list", "data": [{"id": "default_model", "object": "model",
                                                                  "max_model_len": fake.max_model_len}]})
            else:
                self._send_json(404, {"error": "not found"})

        def do_POST(self) -> None:
            fake.paths.append(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send_json(404, {"error": "not found"})
                return
            reply = fake.next_reply(body)
            index = len(fake.requests)
            if reply.raw is not None:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.raw)))
                self.end_headers()
                self.wfile.write(reply.raw)
                return
            if reply.status != 200:
                self._send_json(reply.status, reply.error_body)
                return
            if not body.get("stream"):
                self._send_json(200, _completion(reply, index))
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            chunks = _chunks(reply, index)
            for n, chunk in enumerate(chunks):
                if reply.hold is not None and n == len(chunks) - 1:
                    self.wfile.flush()
                    reply.hold.wait(timeout=60)
                try:
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                except OSError:  # the client went away (a cut stream)
                    return
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
            self.close_connection = True

    return Handler


@contextmanager
def serve(script: Sequence[ReplySource]) -> Iterator[FakeOpenAI]:
    """Run a scripted server for the duration of the ``with`` block."""
    fake = FakeOpenAI(script=list(script))
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake._server = server
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, name="fake-openai",
                              daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def tool_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``role: tool`` messages of a recorded request."""
    return [m for m in body.get("messages", []) if m.get("role") == "tool"]
