"""A stand-in for `punie agent` in launcher tests.

    fake_agent.py [--pidfile F] [--exit-after S] [--exit-code N] [--ignore-term] [--marker F]
                  [--base-url URL] [--options JSON] [--prompt TEXT]

Prints to stderr (prefixed by the supervisor) and stdout (inherited), records its pid,
writes "term" to --marker when SIGTERM arrives, exits after --exit-after seconds.
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
print(f"fake agent on {args.base_url}", file=sys.stderr, flush=True)
print("agent-stdout-line", flush=True)
if args.prompt:
    sys.stderr.write(args.prompt)
    sys.stderr.flush()
    time.sleep(0.4)
    sys.stderr.write("typed\n")
    sys.stderr.flush()
deadline = time.monotonic() + (args.exit_after if args.exit_after is not None else 3600)
while time.monotonic() < deadline:
    time.sleep(0.02)
sys.exit(args.exit_code)
