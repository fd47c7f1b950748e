"""`punie check`: validate profiles and adapters against their base models before launching.

    from punie.checks import check_profiles
    report = check_profiles(load_profiles())
    report.ok, report.problems, report.to_json()

Never imports mlx and never loads weights: only JSON files and safetensors headers are read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from punie.checks.profile import adapter_fits, check_adapter, check_profile, check_profile_report, model_scope
from punie.checks.report import Problem, ProfileReport, Report
from punie.checks.rules import GENERIC_RULES, CheckRules
from punie.config.models import ResolvedProfile

__all__ = [
    "CheckRules",
    "Problem",
    "ProfileReport",
    "Report",
    "adapter_fits",
    "check_adapter",
    "check_profile",
    "check_profile_report",
    "check_profiles",
]


def check_profiles(profiles: Iterable[ResolvedProfile], *, strict: bool = False,
                   rules: Callable[[ResolvedProfile], CheckRules] = lambda _: GENERIC_RULES) -> Report:
    """Check every profile and collect all problems in one report (nothing is raised for problems).

    ``strict``: an adapter trained on a different base model is an error even when its shapes fit,
    and so is a busy port (a warning otherwise: the port is state, not configuration).
    ``rules``: each profile's engine rules. This package knows no backend: `punie.launch.backends.check_profiles`
    (what `punie check` and `punie up` run) passes each profile's backend's; the default is mlx_lm-like.
    """
    from punie.checks.ports import shared_port_problems
    from punie.net import listener_snapshot
    from punie.weights.headers import shapes_scope

    resolved = list(profiles)
    shared = shared_port_problems(resolved)
    # one scan of the sockets, one resolution and one reading of each base model
    with listener_snapshot(), shapes_scope(), model_scope():
        reports = [check_profile_report(r, strict=strict, rules=rules(r)) for r in resolved]
    return Report(profiles=[
        r.model_copy(update={"problems": [*r.problems, *shared[r.name]]}) if r.name in shared else r for r in reports
    ])
