"""From resolved profiles to a launch plan, in one pass: guard, check, then the backend prepares.

Shared by a dry run and a real run, so both see the same plan. Each step runs once: the
remote-host guard (every path, ``--no-check`` too), the group rule, the check (whose report
holds the resolved model and adapter paths: they are the plan's inputs, not resolved again),
then the profile's backend (`punie.launch.backends`) prepares what its server needs and builds
the plan.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from punie.checks.report import ProfileReport
from punie.config.models import ResolvedProfile
from punie.errors import CheckFailed
from punie.launch.backends import LaunchInputs, check_members, check_profiles
from punie.launch.plan import LaunchPlan, refuse_remote
from punie.launch.resolve import expected_canary, resolve_adapter_path, resolve_model_path
from punie.textsafe import printable
from punie.weights import Progress

logger = logging.getLogger(__name__)

__all__ = ["expected_canary", "prepare", "prepare_members", "resolve_adapter_path",
           "resolve_model_path", "run_check"]


def run_check(resolved: ResolvedProfile) -> ProfileReport:
    """Run `punie check` on the profile; raise CheckFailed listing the errors, log the warnings.

    Returns its report: the model and adapter paths it resolved are the launch's inputs.
    """
    report = check_profiles([resolved])
    errors = [p for p in report.problems if p.severity == "error"]
    for problem in report.problems:
        if problem.severity != "error" and problem.code != "model-not-provisioned":  # provisioning says it once
            logger.warning("%s: %s", problem.where or problem.profile, problem.message)
    if errors:
        lines = [f"profile '{resolved.name}' has {len(errors)} error(s); not launching (--no-check skips this):"]
        # One line per problem: a newline inside a value (a path from punie.toml) is escaped, not a new line.
        lines += [printable(f"  {p.where + ': ' if p.where else ''}{p.message}", one_line=True) for p in errors]
        raise CheckFailed("\n".join(lines), report)
    return report.profiles[0]


def prepare_members(
    members: Sequence[ResolvedProfile],
    *,
    group: str | None = None,
    check: bool = True,
    provision: bool = True,
    python: str = sys.executable,
    log_dir: Path | None = None,
    progress: Progress | None = None,
) -> LaunchPlan:
    """Guard, check (unless ``check`` is False) and prepare the server of ``members`` (one profile, or
    the profiles of a ``--group`` sharing one server; the first leads), and build its plan.

    ``provision=False`` (a dry run) never downloads and writes nothing: a builtin model that is
    not provisioned yet appears at the path it will be provisioned to.
    """
    members = tuple(members)
    # --no-check included: never bind or call out without allow_remote. The lead's server is the one started.
    remote = refuse_remote(members[0])
    for m in members[1:]:
        refuse_remote(m)
    backend = check_members(members, group)
    reports = {m.name: run_check(m) for m in members} if check else {}
    inputs = LaunchInputs(members=members, group=group, remote=remote, reports=reports, provision=provision,
                          python=python, log_dir=log_dir, progress=progress)
    return backend.prepare(inputs)


def prepare(
    resolved: ResolvedProfile,
    *,
    check: bool = True,
    provision: bool = True,
    python: str = sys.executable,
    log_dir: Path | None = None,
    progress: Progress | None = None,
) -> LaunchPlan:
    """Check (unless ``check`` is False), resolve model and adapter, and build the launch plan of one profile."""
    return prepare_members([resolved], check=check, provision=provision, python=python, log_dir=log_dir,
                           progress=progress)
