"""THE reader of ``/proc/PID/stat`` (Linux): one parse of its fields for every caller.

The second field (the command name) may hold spaces and parentheses, so the fields are the ones
after its *last* ``)``. `stat_fields` returns them from the state on (``fields[0]`` is field 3 of
proc(5), the state letter); the named helpers pick the ones Punie reads. Every reader returns None
(or skips the process) where /proc is missing or the process is gone: callers decide what unknown
means.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

STATE = 0  # proc(5) field 3: R, S, D, T, Z, X...
PPID = 1  # field 4
PGRP = 2  # field 5
STARTTIME = 19  # field 22: start time after boot, in clock ticks
ENV_START = 47  # field 50
ENV_END = 48  # field 51


def stat_fields(pid: int | str = "self") -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (None when unreadable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    _, sep, tail = data.rpartition(b")")
    if not sep:
        return None
    return tail.decode("ascii", "replace").split()


def _int_field(pid: int | str, index: int) -> int | None:
    fields = stat_fields(pid)
    try:
        return int(fields[index]) if fields is not None else None
    except (IndexError, ValueError):
        return None


def parent_pid(pid: int | str) -> int | None:
    """The parent of ``pid`` (None when unknown)."""
    return _int_field(pid, PPID)


def process_state(pid: int | str) -> str | None:
    """The state letter of ``pid`` (R, S, T for stopped, Z...), or None when unknown."""
    fields = stat_fields(pid)
    return fields[STATE] if fields else None


def start_ticks(pid: int | str) -> int | None:
    """When ``pid`` started (clock ticks after boot): with the pid, it names one process."""
    return _int_field(pid, STARTTIME)


def all_stats() -> Iterator[tuple[int, list[str]]]:
    """``(pid, stat_fields)`` of every process /proc shows (none where there is no /proc)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        return
    for name in names:
        if name.isdigit():
            fields = stat_fields(name)
            if fields is not None and len(fields) > PGRP:
                yield int(name), fields


def children_map(*, live_only: bool = False) -> dict[int, list[int]]:
    """Parent pid -> its children's pids, from one walk of /proc (``live_only``: no zombies)."""
    children: dict[int, list[int]] = {}
    for pid, fields in all_stats():
        if live_only and fields[STATE] in ("Z", "X"):
            continue
        try:
            children.setdefault(int(fields[PPID]), []).append(pid)
        except ValueError:
            continue
    return children


def subtree(root: int, children: dict[int, list[int]]) -> list[int]:
    """``root`` and every process below it in ``children`` (depth first)."""
    tree, todo = [], [root]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree
