"""Launching as the ``punie up`` and ``punie serve`` commands see it: one profile's server and agent, a
group of profiles on one vLLM server, or a model given on the command line.

`punie.api.serve` is the same launch for a Python block; these run a whole session and return how it
ended (an ``UpOutcome``: ``exit_code``, ``reason``, ``message``; the plan of a dry run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from punie.limits import STOP_GRACE

if TYPE_CHECKING:
    from punie.config.models import ResolvedProfile
    from punie.launch.supervisor import UpOutcome
    from punie.weights import Progress

__all__ = ["STOP_GRACE", "serve_model", "up"]


def up(profile: str | None = None, config: str | os.PathLike[str] | None = None, *, group: str | None = None,
       overrides: Sequence[str] = (), check: bool = True, dry_run: bool = False, grace: float = STOP_GRACE,
       progress: Progress | None = None, follow_server: bool = True,
       on_name: Callable[[str | None], object] | None = None) -> UpOutcome:
    """``punie up``: check ``profile`` (or every member of ``group``: ``a,b`` or a ``[groups.NAME]``),
    plan it and, unless ``dry_run``, supervise its server and agent until the session ends.
    ``on_name`` hears the session's name as soon as it is known (for a status line on failure)."""
    from punie.api import load_profile, load_profiles
    from punie.errors import UsageError
    from punie.launch.supervisor import run_up

    if group is not None:
        from punie.launch.supervisor import run_up_group
        from punie.launch.vllm import group_members

        if profile is not None:
            raise UsageError("give either PROFILE or --group, not both")
        name, names = group_members(group, config=config)
        if on_name is not None:
            on_name(name)  # None for a plain list of profiles
        members = load_profiles(config, names, overrides=overrides)
        outcome: Any = run_up_group(members, group=name, check=check, dry_run=dry_run, grace=grace,
                                    progress=progress, follow_server=follow_server, subreaper=True)
        return outcome  # type: ignore[no-any-return]
    resolved = load_profile(profile, config, overrides=overrides)
    if on_name is not None:
        on_name(resolved.name)
    return run_up(resolved, check=check, dry_run=dry_run, grace=grace, progress=progress,
                  follow_server=follow_server, subreaper=True)


def serve_model(model: str, *, adapter: str | None = None, port: int | None = None, host: str | None = None,
                base: ResolvedProfile | None = None, dry_run: bool = False, progress: Progress | None = None,
                follow_server: bool = True) -> UpOutcome:
    """``punie serve --model M``: a profile made from ``model`` (and ``adapter``, ``port``, ``host``; the
    rest from ``base``), launched as ``punie up`` launches one."""
    from punie.agent.target import serve_profile
    from punie.launch.supervisor import run_up

    target = serve_profile(model, adapter=adapter, port=port, host=host, base=base)
    return run_up(target, check=True, dry_run=dry_run, progress=progress, subreaper=True,
                  follow_server=follow_server)
