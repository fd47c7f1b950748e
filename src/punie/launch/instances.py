"""Which `punie up` sessions run in a project: one small JSON file per running instance.

`claim` is taken by `punie up` before it starts anything: it writes
``.punie/run/NAME.json`` (pid, port, start time), created exclusively so two
starts at the same moment cannot both take it, and removes it when the session
ends. A file whose process is gone (killed with SIGKILL) or whose pid now names
another process (the kernel's start time of the pid differs) is stale and ignored.

A second `punie up` of a profile that runs on the same port is refused with the
running one's pid and start time (not the port's "already in use"); on another
port it runs as a second instance, ``NAME@PORT``, with log files of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from punie.errors import LaunchFailed, LaunchReason
from punie.launch.plan import LaunchPlan, instance_logs
from punie.paths import run_dir

SUFFIX = ".json"


@dataclass(frozen=True)
class Instance:
    """A `punie up` session as its instance file describes it."""

    name: str  # the file's stem: the profile (or group), or NAME@PORT for a second instance
    profile: str
    pid: int
    port: int | None
    started: float  # time.time() when it was claimed
    ticks: int | None  # the kernel's start time of ``pid`` (Linux), to tell a reused pid
    path: Path

    def since(self) -> str:
        """The start time as a person reads it (local time)."""
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))


def start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time since boot, in clock ticks); None where unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def is_live(instance: Instance) -> bool:
    """Whether the instance's process still runs (the same process: a reused pid does not count)."""
    try:
        os.kill(instance.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    return instance.ticks is None or start_ticks(instance.pid) in (None, instance.ticks)


def _read(path: Path) -> Instance | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Instance(name=path.stem, profile=str(data["profile"]), pid=int(data["pid"]),
                        port=data.get("port"), started=float(data["started"]), ticks=data.get("ticks"), path=path)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running(project_dir: str | Path, profile: str | None = None) -> list[Instance]:
    """The live instances in the project (of ``profile`` only, when given), oldest first."""
    folder = run_dir(project_dir)
    found = []
    for path in sorted(folder.glob(f"*{SUFFIX}")) if folder.is_dir() else ():
        instance = _read(path)
        if instance is not None and (profile is None or instance.profile == profile) and is_live(instance):
            found.append(instance)
    return sorted(found, key=lambda i: i.started)


def _refuse(instance: Instance) -> LaunchFailed:
    where = f" on port {instance.port}" if instance.port is not None else ""
    return LaunchFailed(
        LaunchReason.ALREADY_RUNNING,
        f"profile {instance.profile} is already running{where} (pid {instance.pid}, since {instance.since()})",
        hint=f"use that one, stop it (Ctrl-C in its terminal, or `kill {instance.pid}`), "
             "or start another on a free port: --set server.port=N",
    )


def refuse_running(project_dir: str | Path, name: str, port: int | None) -> None:
    """Raise LaunchFailed (already-running) when a live instance of ``name`` serves on ``port``: before the
    check, whose port test would only say the port is in use."""
    for instance in running(project_dir, name):
        if port is not None and instance.port == port and instance.pid != os.getpid():
            raise _refuse(instance)


def _create(path: Path, record: dict[str, object]) -> bool:
    """Write ``record`` to ``path`` unless the file exists (True when written)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(record, fh)
    return True


def _take(path: Path, record: dict[str, object]) -> Instance | None:
    """Create the instance file ``path`` for ``record``: None when taken, else the live instance holding it."""
    for _ in range(3):
        if _create(path, record):
            return None
        other = _read(path)
        if other is not None and is_live(other):
            return other
        with contextlib.suppress(OSError):
            if other is None and time.time() - path.stat().st_mtime < 2.0:
                time.sleep(0.1)  # being written by a start at this very moment: read it again
                continue
            path.unlink()  # stale: its process is gone
    other = _read(path)
    if other is None:
        raise LaunchFailed(LaunchReason.ALREADY_RUNNING, f"cannot take the instance file {path}")
    return other


@contextlib.contextmanager
def claim(plan: LaunchPlan) -> Iterator[LaunchPlan]:
    """Register this process as a running instance of ``plan`` for the block; yields the plan to run
    (a second instance's has its own log names). Raises LaunchFailed (already-running) when a live
    instance of the profile serves on the same port."""
    name = plan.profile  # a group's plan is named after the group
    folder = run_dir(plan.project_dir)
    folder.mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    record = {"profile": name, "pid": pid, "port": plan.port, "started": time.time(), "ticks": start_ticks(pid)}
    for stem in (name, f"{name}@{plan.port if plan.port is not None else pid}", f"{name}@{pid}"):
        path = folder / f"{stem}{SUFFIX}"
        holder = _take(path, record)
        if holder is not None:
            if plan.port is not None and holder.port == plan.port:
                raise _refuse(holder)
            continue
        clash = [i for i in running(plan.project_dir, name) if i.pid != pid and plan.port is not None
                 and i.port == plan.port]
        try:
            if clash:
                raise _refuse(clash[0])
            yield plan if stem == name else instance_logs(plan, stem)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return
    raise LaunchFailed(LaunchReason.ALREADY_RUNNING, f"no free instance name for {name} in {folder}")
