"""Drive real terminal programs in a private tmux server: type with send-keys, read with capture-pane.

Each :class:`Tmux` is its own server (``tmux -L <unique socket> -f <its own conf>``),
so nothing of the developer's tmux is seen or touched; :meth:`Tmux.kill` ends it
and removes its socket.
Panes stay after their program exits (``remain-on-exit``), so the last screen
can still be captured; the exit status is written by the shell that ran the
program (:meth:`Tmux.exit_status`).

Every program is started with ``env -i``: the variables given, plus a marker
unique to the server (``TMUX_TEST_TOKEN``, :attr:`Tmux.token`) that
:func:`processes_with` looks for in /proc, so whatever a program started is
found, even re-parented or in a session of its own (not a child whose
environment was scrubbed, such as the agent's run_command processes).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.support.launch_helpers import environ_has, live_pids

TOKEN_VAR = "TMUX_TEST_TOKEN"
#: PUNIE_REQUIRE_TMUX=1 (set by .ci/run) turns a missing tmux into a failure instead of a skip.
#: Read at import: the tests' autouse fixture removes every PUNIE_ variable before a test runs.
REQUIRE_TMUX = os.environ.get("PUNIE_REQUIRE_TMUX") == "1"


def tmux_binary() -> str:
    """The tmux program; skip the test without it (fail under PUNIE_REQUIRE_TMUX=1)."""
    found = shutil.which("tmux")
    if found is None:
        if REQUIRE_TMUX:
            pytest.fail("PUNIE_REQUIRE_TMUX=1 but tmux is not installed (apt-get install -y tmux)")
        pytest.skip("tmux is not installed")
    return found


class Tmux:
    """A private tmux server; one window per program started with :meth:`start`."""

    def __init__(self, workdir: Path, *, width: int = 200, height: int = 50) -> None:
        self.binary = tmux_binary()
        self.socket = f"punie-test-{uuid.uuid4().hex[:12]}"
        self.token = uuid.uuid4().hex
        self.width, self.height = width, height
        self.workdir = workdir
        self.conf = workdir / "tmux.conf"
        # remain-on-exit: a pane keeps its last screen and exit status after its program ends.
        self.conf.write_text("set -g remain-on-exit on\nset -g history-limit 5000\nset -g status off\n")
        self._windows = 0

    def _run(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([self.binary, "-L", self.socket, "-f", str(self.conf), *args],
                              capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def start(self, argv: Sequence[str], *, env: Mapping[str, str], cwd: Path) -> str:
        """Run ``argv`` in a new pane (a clean environment: ``env`` only, plus the marker); its target."""
        name = f"w{self._windows}"
        self._windows += 1
        full_env = {**env, TOKEN_VAR: self.token}
        status = self.workdir / f"{name}.status"
        # The exit status is written by the shell that waited for the program: tmux's own
        # #{pane_dead_status} was seen to stay empty (the pane's process left a zombie).
        program = "env -i " + " ".join(shlex.quote(f"{k}={v}") for k, v in full_env.items()) + " " + shlex.join(argv)
        # trap: a Ctrl-C the terminal turns into SIGINT reaches the shell too (one process group);
        # it must outlive the program to write the status (a trap, unlike an ignore, is not inherited).
        command = f"trap : INT; {program}; echo $? > {shlex.quote(str(status))}.tmp && " \
                  f"mv {shlex.quote(str(status))}.tmp {shlex.quote(str(status))}"
        shell = shlex.join(["sh", "-c", command])
        if self._windows == 1:
            self._run("new-session", "-d", "-s", "t", "-n", name, "-x", str(self.width), "-y", str(self.height),
                      "-c", str(cwd), shell)
        else:
            self._run("new-window", "-d", "-t", "t", "-n", name, "-c", str(cwd), shell)
        return f"t:{name}"

    def send(self, target: str, *keys: str, literal: bool = False) -> None:
        """send-keys: key names (Enter, Left, Up, C-c, C-d), or text with ``literal``."""
        self._run("send-keys", "-t", target, *(["-l"] if literal else []), *keys)

    def type(self, target: str, text: str) -> None:
        """Type ``text`` as it is (no key names)."""
        self.send(target, text, literal=True)

    def screen(self, target: str) -> str:
        """The pane's text now: the visible screen and its scrollback, wrapped lines joined, no trailing blanks."""
        text = self._run("capture-pane", "-p", "-J", "-S", "-", "-t", target)
        return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n") + "\n"

    def wait_for(self, target: str, predicate: Callable[[str], object], what: str, timeout: float = 90.0) -> str:
        """Poll the screen until ``predicate(screen)`` holds; the screen then (fail showing it at the deadline)."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen(target)
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; the screen:\n{text}")
            time.sleep(0.05)

    def wait_text(self, target: str, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        """Wait until the regex ``pattern`` is on the screen; its last match."""
        regex = re.compile(pattern, re.MULTILINE)
        text = self.wait_for(target, regex.search, f"/{pattern}/", timeout)
        return list(regex.finditer(text))[-1]

    def pane(self, target: str, fmt: str) -> str:
        return self._run("display-message", "-p", "-t", target, fmt).strip()

    def exited(self, target: str) -> bool:
        """Whether the pane's program has exited (its status is known)."""
        return (self.workdir / f"{target.split(':')[-1]}.status").exists()

    def exit_status(self, target: str, timeout: float = 90.0) -> int:
        """Wait until the pane's program has exited; its exit status."""
        path = self.workdir / f"{target.split(':')[-1]}.status"
        deadline = time.monotonic() + timeout
        while not path.exists():
            if time.monotonic() > deadline:
                raise AssertionError(f"the program did not exit in {timeout:g}s; the screen:\n{self.screen(target)}")
            time.sleep(0.05)
        return int(path.read_text())

    def kill(self) -> None:
        """End the server (and whatever still runs in its panes) and remove its socket (tmux leaves it)."""
        socket_path = self._run("display-message", "-p", "#{socket_path}", check=False).strip()
        self._run("kill-server", check=False)
        if socket_path.endswith(self.socket):
            with contextlib.suppress(OSError):
                os.unlink(socket_path)


def processes_with(token: str) -> list[int]:
    """The live processes whose environment holds ``TMUX_TEST_TOKEN=token`` (zombies excluded)."""
    return live_pids(lambda pid: environ_has(pid, f"{TOKEN_VAR}={token}"))


def wait_gone(token: str, timeout: float = 60.0) -> list[int]:
    """Wait until no process carries the marker; those still there at the deadline."""
    deadline = time.monotonic() + timeout
    while (left := processes_with(token)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


@contextlib.contextmanager
def private_tmux(workdir: Path) -> Iterator[Tmux]:
    """A `Tmux` for the block; its server killed and every process it started gone (waited for) after."""
    tmux = Tmux(workdir)
    try:
        yield tmux
    finally:
        tmux.kill()
        wait_gone(tmux.token, timeout=5)
