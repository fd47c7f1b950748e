"""Cross-profile check: two profiles whose servers listen on one port cannot run side by side."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from punie.checks.profile import _Collector
from punie.checks.report import Problem
from punie.config.models import ResolvedProfile

#: How many other profiles a shared-port warning names.
SHOWN = 5


def shared_port_problems(profiles: Sequence[ResolvedProfile]) -> dict[str, list[Problem]]:
    """A ``shared-port`` warning for each profile that starts a server on a port another one uses.

    Profiles on an external server (``server.url``) start nothing and are left out.
    """
    by_port: dict[int, list[ResolvedProfile]] = defaultdict(list)
    for resolved in profiles:
        if not resolved.profile.server.url:
            by_port[resolved.profile.server.port].append(resolved)
    found: dict[str, list[Problem]] = {}
    for port, group in by_port.items():
        if len(group) < 2:
            continue
        names = [o.name for o in group]
        for i, resolved in enumerate(group):
            # at most SHOWN other names: a message per profile listing all the others is quadratic
            shown = [n for j, n in enumerate(names[: SHOWN + 1]) if j != i][:SHOWN]
            rest = len(group) - 1 - len(shown)
            others = ", ".join(shown) + (f" and {rest} more" if rest else "")
            c = _Collector(resolved)
            c.add("warning", "shared-port", c.key("server.port"),
                  f"port {port} is also the port of profile {others}: they cannot run at the same time "
                  "(give each its own server.port)")
            found[resolved.name] = c.problems
    return found
