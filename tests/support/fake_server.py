"""A stand-in for mlx_lm.server in launcher tests (stdlib only, started as a real child process).

    fake_server.py --port P [--pidfile F] [--requests F] [--load-delay S] [--crash-after S]
                   [--exit-code N] [--mode ok|hang|generation-died|address-in-use|fail-once]
                   [--ignore-term] [--counter F] [--chatty N]

ok: answers chat completions after --load-delay seconds (requests wait, like mlx_lm loading);
hang: accepts connections and never answers; generation-died: logs mlx_lm's message and answers
404 {"error": "generation thread died"}; address-in-use: prints the OSError and hangs;
fail-once: crashes the first time (tracked with --counter), then serves;
foreign: starts a detached ok-mode copy of itself (outside this process tree, its pid in
--foreign-pidfile) on the port, then sleeps without binding: a foreign server took the port.
--die-after S: once S seconds passed after serving began, /health answers 503 and every POST 404
(mlx_lm's "generation thread died" state after ready).
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--pidfile")
parser.add_argument("--requests")
parser.add_argument("--load-delay", type=float, default=0.0)
parser.add_argument("--crash-after", type=float)
parser.add_argument("--exit-code", type=int, default=3)
parser.add_argument("--mode", default="ok")
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--counter")
parser.add_argument("--chatty", type=int, default=0, help="print this many log lines before serving")
parser.add_argument("--foreign-pidfile")
parser.add_argument("--die-after", type=float)
args = parser.parse_args()

if args.mode == "foreign":
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.execv(sys.executable, [sys.executable, __file__, "--port", str(args.port), "--host", args.host,
                                      *(["--pidfile", args.foreign_pidfile] if args.foreign_pidfile else [])])
        os._exit(0)
    os.wait()
    print("fake server: a foreign server was started on the port; not binding", flush=True)
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
    while True:
        time.sleep(1)

if args.pidfile:
    with open(args.pidfile, "a") as fh:
        fh.write(f"{os.getpid()}\n")
if args.ignore_term:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *a: os._exit(0))
print(f"fake server starting on {args.port} mode={args.mode}", flush=True)
for i in range(args.chatty):
    print(f"fake server: chatty log line {i:06d} " + "x" * 60)
sys.stdout.flush()

if args.mode == "fail-once":
    runs = 0
    if args.counter and os.path.exists(args.counter):
        runs = int(open(args.counter).read() or 0)
    if args.counter:
        open(args.counter, "w").write(str(runs + 1))
    if runs == 0:
        print("fake server: crashing on first run", flush=True)
        sys.exit(args.exit_code)

if args.mode == "address-in-use":
    print("OSError: [Errno 98] Address already in use", flush=True)
    while True:
        time.sleep(1)

ANSWER = "The capital of France is Paris."
started = time.monotonic()
loaded = threading.Event()
threading.Timer(args.load_delay, loaded.set).start()
if args.mode == "generation-died":
    def die():
        time.sleep(args.load_delay)
        print("ERROR:root:mlx_lm.server generation thread died: Adapter at /x contains incompatible tensors:",
              flush=True)
        print("  adapter shape (64, 8) does not match model parameter shape (96, 8)", flush=True)
    threading.Thread(target=die, daemon=True).start()


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *a):
        sys.stdout.write("fake server: " + fmt % a + "\n")
        sys.stdout.flush()

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, text):
        # OpenAI-style server-sent events, as mlx_lm sends them.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "default_model"}
        chunks = [
            {"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": None},
            {"index": 0, "delta": {}, "finish_reason": "stop"},
        ]
        for choice in chunks:
            self.wfile.write(b"data: " + json.dumps({**base, "choices": [choice]}).encode() + b"\n\n")
        usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
        self.wfile.write(b"data: " + json.dumps({**base, "choices": [], "usage": usage}).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _dead(self):
        return args.die_after is not None and time.monotonic() - started > args.die_after

    def do_GET(self):
        if self._dead():
            return self._send(503, {"status": "unavailable"})
        self._send(200, {"status": "ok"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if args.requests:
            with open(args.requests, "a") as fh:
                fh.write(json.dumps(body) + "\n")
        if args.mode == "hang":
            time.sleep(3600)
        if self._dead():
            return self._send(404, {"error": "generation thread died"})
        if args.mode == "generation-died":
            time.sleep(args.load_delay + 0.05)
            return self._send(404, {"error": "generation thread died"})
        loaded.wait()
        if body.get("stream"):
            return self._stream(ANSWER)
        self._send(200, {"id": "x", "object": "chat.completion", "model": "default_model",
                         "created": 0,
                         "choices": [{"index": 0, "finish_reason": "length",
                                      "message": {"role": "assistant", "content": "ok"}}]})


server = ThreadingHTTPServer((args.host, args.port), Handler)
server.daemon_threads = True
if args.crash_after is not None:
    def crash():
        time.sleep(args.crash_after)
        print(f"fake server: crashing with code {args.exit_code}", flush=True)
        os._exit(args.exit_code)
    threading.Thread(target=crash, daemon=True).start()
server.serve_forever()
