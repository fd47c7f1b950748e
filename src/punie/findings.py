"""`Finding`: one problem found in a file, before it is attached to a profile.

Readers of models and adapters collect findings rather than raising, so a
check reports everything wrong at once; `punie.checks.report.Problem` is what a
finding becomes inside a profile's report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class Finding:
    """One problem: how bad, a stable code, the place (file, and tensor or key if any), what is wrong."""

    severity: Severity
    code: str
    where: str
    message: str
