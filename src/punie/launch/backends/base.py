"""The backend seam: what an engine (mlx_lm.server, vLLM, mlx.launch...) has to say about a launch.

Every backend is one module of this package holding two things, and is listed once in
`punie.launch.backends.BACKENDS` (``server.backend`` -> `Backend`):

- its **plan part**, a frozen pydantic model subclassing `BackendPart` whose ``name`` is a
  ``Literal`` of the backend's name. `punie.launch.plan.LaunchPlan` keeps what every launch has at
  its top level (the server argv, env, URLs, logs, restart/readiness/liveness/shutdown, canaries,
  the agent) and nests the part under ``plan.backend`` (a union discriminated by ``name``, built
  from the table). The part holds what only this engine needs: mlx's BLAS and dense copy, vLLM's
  LoRA modules and model ids. A part may hold several commands (one per host) and files to
  copy: it says so through `BackendPart.commands` and `BackendPart.copies`, which the dry run
  shows. The backend performs them itself: the copies in its `Backend.prepare` (not in a dry run),
  the commands through the launcher ``plan.server_argv`` starts, which stays the one local process
  the supervisor starts, probes and stops: the server itself, or a launcher such as ``mlx.launch``.
- its **backend object**, an instance of a `Backend` subclass: the engine's display name, its
  `punie check` rules, what it prepares (provisioning, dense copy, PEFT export, fuse) and how it
  builds its plan, the model ids the readiness probe, the canaries and the agent send, the ids its
  server lists, the log lines after which it never answers, what the supervisor does once it is ready
  (mlx: prove the BLAS), its failure hints, and the profile keys only it reads.

Nothing outside this package compares a backend's name: the rest of Punie asks
``backend_of(profile_or_plan)`` and calls the object, or reads the plan part.

The server process. Every server argv is started by `punie.launch.process.Child` in a new session
(its own process group) and stopped as a group: SIGTERM to the group, ``grace`` seconds
(``server.shutdown.grace``), then SIGKILL to the group. A launcher whose ranks are its children
(mlx.launch on localhost) is therefore stopped whole. Ranks on other hosts are not in that group: a
backend that starts any must tie them to a process of the group, so that they die with it however the
session ends (mlx-distributed runs them under ``ssh -tt``: sshd hangs their terminal up when the local
ssh client dies). The grace is the plan's ``shutdown_grace`` (``punie up --grace`` overrides it).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from punie.checks.rules import GENERIC_RULES, CheckRules
from punie.config.models import Profile, ResolvedProfile

if TYPE_CHECKING:
    from punie.checks.report import ProfileReport
    from punie.launch.plan import LaunchPlan
    from punie.weights import Progress

logger = logging.getLogger(__name__)


@dataclass
class LaunchInputs:
    """Everything a backend's `Backend.prepare` starts from, gathered once by `punie.launch.prepare`.

    ``members``: the profiles served (one, or a ``--group``; the first leads: its server options
    are the server's). ``remote``: the remote-host guard's verdict, run once before anything else
    (the server binds or calls a non-loopback address, allowed). ``reports``: the check's report of
    each member by name (empty with ``--no-check``): the paths it resolved are the launch's inputs,
    so nothing is resolved twice. ``provision=False`` (a dry run) writes and downloads nothing.
    """

    members: tuple[ResolvedProfile, ...]
    group: str | None = None
    remote: bool = False
    reports: Mapping[str, ProfileReport] = field(default_factory=dict)
    provision: bool = True
    python: str = ""
    log_dir: Path | None = None
    progress: Progress | None = None
    _models: dict[str, Path] = field(default_factory=dict, repr=False)
    _adapters: dict[str, Path | None] = field(default_factory=dict, repr=False)

    @property
    def lead(self) -> ResolvedProfile:
        return self.members[0]

    @property
    def label(self) -> str:
        """What the plan, its logs and its instance are named after: the group, else the lead profile."""
        return self.group or self.lead.name

    def model_path(self, member: ResolvedProfile | None = None) -> Path:
        """The model directory ``member`` (default: the lead) serves: the check's, else resolved now
        (a builtin model not provisioned yet is fetched, or named where it will be for a dry run)."""
        m = member or self.lead
        if m.name not in self._models:
            report = self.reports.get(m.name)
            if report is not None and report.model_path:
                self._models[m.name] = Path(report.model_path)
            else:
                from punie.launch.resolve import resolve_model_path

                self._models[m.name] = resolve_model_path(m, provision=self.provision, progress=self.progress)
        return self._models[m.name]

    def adapter_path(self, member: ResolvedProfile | None = None) -> Path | None:
        """The adapter directory ``member`` (default: the lead) serves, or None: the check's, else
        resolved now (a composition is composed here, once). With ``server.url`` nothing is served
        by Punie: an adapter that cannot be found is only a warning (the server is not checked for it)."""
        m = member or self.lead
        if m.name not in self._adapters:
            report = self.reports.get(m.name)
            if report is not None and report.adapter_path and m.profile.adapter:
                self._adapters[m.name] = Path(report.adapter_path)
            elif not (m.profile.adapter or m.profile.adapters):
                self._adapters[m.name] = None
            else:
                from punie.launch.resolve import resolve_adapter_path

                if m.profile.server.url:
                    from punie.errors import AdapterError

                    try:
                        self._adapters[m.name] = resolve_adapter_path(m)
                    except AdapterError as exc:
                        logger.warning("%s: the running server cannot be checked for it", exc.render())
                        self._adapters[m.name] = None
                else:
                    self._adapters[m.name] = resolve_adapter_path(m)
        return self._adapters[m.name]


class HostCommand(BaseModel):
    """One command a backend runs on a host (``host`` None: this machine), never through a shell."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str | None = None
    argv: tuple[str, ...]
    env: dict[str, str] = Field(default_factory=dict)


class FileCopy(BaseModel):
    """A file or directory a backend copies to a host before the server starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    host: str
    target: str


class BackendPart(BaseModel):
    """The backend's own part of a `LaunchPlan` (``plan.backend``). Subclasses narrow ``name`` to a
    ``Literal`` (the union in `punie.launch.plan` is discriminated by it) and set ``engine``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    engine: ClassVar[str] = "server"

    def model_note(self) -> str:
        """Said after the model path in the text plan (mlx: which quantized model a dense copy is of)."""
        return ""

    def describe(self) -> list[str]:
        """Lines of ``punie up --dry-run`` (text) about this part, indented as the plan's server lines."""
        return []

    def commands(self) -> tuple[HostCommand, ...]:
        """Commands run on (other) hosts besides ``plan.server_argv``; shown by the dry run."""
        return ()

    def copies(self) -> tuple[FileCopy, ...]:
        """Files copied to hosts before the server starts; shown by the dry run."""
        return ()


class Backend(ABC):
    """One engine behind ``server.backend``. Stateless: one instance lives in the `BACKENDS` table.

    Subclasses set the class attributes and implement `prepare`; the other methods have the
    defaults of an engine that serves one model and one adapter without model ids (mlx_lm.server).
    """

    #: The value of ``server.backend`` (also the plan part's ``name``).
    name: ClassVar[str]
    #: The server program's name in messages ("mlx_lm.server", "vLLM").
    engine: ClassVar[str]
    #: Its plan part (a `BackendPart` subclass whose ``name`` is ``Literal[name]``).
    part: ClassVar[type[BackendPart]]
    #: How `punie check` treats its profiles (`punie.checks.rules`).
    check_rules: ClassVar[CheckRules] = GENERIC_RULES
    #: Profile keys only this backend reads (``punie profiles show`` hides them for the others).
    key_prefixes: ClassVar[tuple[str, ...]] = ()
    #: Whether several profiles may share one server (``punie up --group``).
    shares_server: ClassVar[bool] = False

    # -- the launch ------------------------------------------------------------------------------

    @abstractmethod
    def prepare(self, inputs: LaunchInputs) -> LaunchPlan:
        """Prepare what the server needs and build the plan (shared by the dry run and a real run).

        ``inputs``: the members, already past the remote-host guard and (unless ``--no-check``) the
        check and `check_members`; take the model and adapter paths from `LaunchInputs.model_path` /
        `LaunchInputs.adapter_path` (the check's). Build the plan with `punie.launch.plan.common_plan`.
        """

    def check_members(self, members: tuple[ResolvedProfile, ...], group: str | None) -> None:
        """Raise ConfigError unless ``members`` may be served by one server of this backend (``--group``:
        the default refuses any group, for an engine that serves one profile per server)."""
        if len(members) > 1 or group:
            from punie.errors import ConfigError

            label = f"group {group}" if group else "--group " + ",".join(m.name for m in members)
            raise ConfigError(f"{label}: {self.engine} serves one profile per server",
                              hint="run one server per profile: `punie up NAME` each (on different ports)")

    # -- model ids -------------------------------------------------------------------------------

    def request_model_id(self, profile_name: str, profile: Profile) -> str:
        """The ``model`` a request for this profile sends."""
        from punie.net import SERVED_MODEL_NAME

        return SERVED_MODEL_NAME

    def model_ids(self, plan: LaunchPlan) -> tuple[str | None, str | None]:
        """(the id requests for the plan's adapter send or None, the base model's id or None)."""
        from punie.net import SERVED_MODEL_NAME

        return (SERVED_MODEL_NAME if plan.adapter else None), None

    def expected_ids(self, plan: LaunchPlan) -> tuple[str, ...]:
        """The ids the started server lists in GET /v1/models (the readiness probe's ownership check)."""
        return ()

    def listens_here(self, plan: LaunchPlan) -> bool:
        """Whether the started server listens on this machine (its listening socket then belongs to the
        server's process tree, the readiness probe's ownership check); False: on another host."""
        return True

    # -- the supervisor --------------------------------------------------------------------------

    def fatal_patterns(self, plan: LaunchPlan) -> Mapping[str, str]:
        """Server log lines (substring -> LaunchReason) after which it will never answer."""
        return {}

    def after_ready(self, plan: LaunchPlan, pid: int) -> tuple[dict[str, object] | None, list[str]]:
        """What the supervisor records and says once the started server (``pid``) is ready:
        (a report for ``UpOutcome``, status lines)."""
        return None, []

    def hint(self, reason: str, plan: LaunchPlan) -> str | None:
        """This engine's hint for a failure ``reason`` (None: the common hint of `punie.launch.messages`)."""
        return None
