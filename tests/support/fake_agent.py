"""A stand-in for `punie agent` in launcher tests.

    fake_agent.py [--pidfile F] [--exit-after S] [--exit-code N] [--ignore-term] [--marker F]
                  [--base-url URL] [--options JSON] [--prompt TEXT]

Prints to stderr (prefixed by the supervisor) and stdout (inherited), records its pid,
writes "term" to --marker when SIGTERM arrives, exits after --exit-after seconds (counted from its
start, so also while it waits at the gate).

With PUNIE_GATE_FD (punie.launch.gate) it waits for "go" first (printing "fake agent waits at the
gate"), spends --warm-delay seconds "warming", answers "ready", waits for "on", then goes on as above;
end of file on the gate: exit 0 without a word. --gate-log F appends each step and its time to F.
"""

import argparse
import os
import signal
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--pidfile")
parser.add_argument("--exit-after", type=float)
parser.add_argument("--exit-code", type=int, default=0)
parser.add_argument("--ignore-term", action="store_true")
parser.add_argument("--marker")
parser.add_argument("--base-url")
parser.add_argument("--options")
parser.add_argument("--detach", help="start `setsid sleep 1000` through a shell that exits at once (a run_command "
                    "child that escapes its parent, like `setsid ... &`), its pid appended to this file")
parser.add_argument("--contain", action="store_true",
                    help="contain its descendants the way the real agent's run_command does (a stand-in for it): "
                    "be their child subreaper and kill them all on SIGTERM before exiting")
parser.add_argument("--warm-delay", type=float, default=0.0)
parser.add_argument("--gate-log")
parser.add_argument("--prompt", help="write this to stderr without a newline, then finish the line 0.4 s later")
args = parser.parse_args()

if args.pidfile:
    with open(args.pidfile, "a") as fh:
        fh.write(f"{os.getpid()}\n")


def kill_descendants():
    # Imported before any signal can arrive: a second SIGTERM (pdeathsig and the guard's watchdog
    # both send one) must not find the import half done.
    for pid in descendants(os.getpid())[1:]:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


if args.contain:
    import ctypes

    from punie.net import descendants

    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def on_term(signum, frame):
    if args.contain:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one cleanup, even when SIGTERM comes twice
        kill_descendants()
    if args.marker:
        with open(args.marker, "a") as fh:
            fh.write("term\n")
    if not args.ignore_term:
        os._exit(0)


signal.signal(signal.SIGTERM, on_term)
if args.detach:
    import subprocess

    subprocess.run(["sh", "-c", f'setsid sleep 1000 </dev/null >/dev/null 2>&1 & echo $! >> "{args.detach}"'],
                   check=True)
started = time.monotonic()
deadline = started + (args.exit_after if args.exit_after is not None else 3600)


def gate_log(step):
    if args.gate_log:
        with open(args.gate_log, "a") as fh:
            fh.write(f"{step} {time.time():.6f}\n")


def gate_line(sock):
    """One line from the gate, or exit at --exit-after (with its code) while waiting."""
    import select

    data = b""
    while not data.endswith(b"\n"):
        ready, _, _ = select.select([sock], [], [], max(deadline - time.monotonic(), 0))
        if not ready:
            gate_log("exit")
            sys.exit(args.exit_code)
        chunk = sock.recv(64)
        if not chunk:
            gate_log("eof")
            sys.exit(0)
        data += chunk
    return data.decode().strip()


if os.environ.get("PUNIE_GATE_FD"):
    import socket

    gate = socket.socket(fileno=int(os.environ["PUNIE_GATE_FD"]))
    gate_log("waiting")
    print("fake agent waits at the gate", file=sys.stderr, flush=True)
    assert gate_line(gate) == "go"
    gate_log("go")
    time.sleep(args.warm_delay)
    gate_log("warmed")
    gate.sendall(f"ready {args.warm_delay:.3f}\n".encode())
    assert gate_line(gate) == "on"
    gate_log("on")
    gate.close()
print(f"fake agent on {args.base_url}", file=sys.stderr, flush=True)
print("agent-stdout-line", flush=True)
if args.prompt:
    sys.stderr.write(args.prompt)
    sys.stderr.flush()
    time.sleep(0.4)
    sys.stderr.write("typed\n")
    sys.stderr.flush()
while time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(args.exit_code)
