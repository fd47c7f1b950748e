"""The one error hierarchy of Punie.

Core code raises these; only the CLI edge turns them into messages and exit
codes (`ExitCode`: 0 ok, 1 problems found, 2 usage or configuration error, 3 internal
error, 130 interrupted), worded by `error_line`.
"""

from __future__ import annotations

import difflib
import signal
from collections.abc import Iterable, Mapping, Sequence
from enum import IntEnum, StrEnum
from typing import Any


class ExitCode(IntEnum):
    """THE exit codes of Punie's commands (defined here only; the CLI and the supervisor use these)."""

    OK = 0
    PROBLEMS = 1  # something was found wrong (a check, a gate) or failed (a launch)
    USAGE = 2  # the command line or the configuration is wrong
    INTERNAL = 3  # a bug in Punie: an unexpected exception (never to be mistaken for a verdict)
    INTERRUPTED = 128 + signal.SIGINT  # Ctrl-C, as a shell reports a process killed by SIGINT


#: What every error line Punie shows starts with (`error_line`).
ERROR_PREFIX = "punie: error: "


def error_line(error: PunieError | str) -> str:
    """THE wording of an error for a person: ``punie: error: MESSAGE`` (with its place and hint).
    Printers escape control characters; the CLI's `print_error` is the one that writes it."""
    return ERROR_PREFIX + (error.render() if isinstance(error, PunieError) else error)


class PunieError(Exception):
    """Base of every error Punie reports to a user.

    ``exit_code`` is what the CLI exits with; ``where`` names the place
    (``punie.toml:12: profiles.demo.server.port``) and is put in front of
    the message when set.
    """

    exit_code: int = ExitCode.PROBLEMS

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None):
        self.message = message
        self.where = where
        self.hint = hint
        super().__init__(self.render())

    def render(self) -> str:
        text = f"{self.where}: {self.message}" if self.where else self.message
        if self.hint:
            text += f"\n  hint: {self.hint}"
        return text


class ConfigError(PunieError):
    """The profiles file, an override or an environment variable is wrong.

    ``problems`` holds every located problem when several are reported in one
    error (the message lists them all; the first names the place).
    """

    exit_code = ExitCode.USAGE

    def __init__(
        self,
        message: str,
        *,
        where: str | None = None,
        hint: str | None = None,
        problems: Sequence[object] = (),
    ):
        self.problems = list(problems)
        super().__init__(message, where=where, hint=hint)


class UsageError(PunieError):
    """The command line asks for something that cannot be done as asked."""

    exit_code = ExitCode.USAGE


class ModelError(PunieError):
    """A base model cannot be found or read."""


class AdapterError(PunieError):
    """An adapter is missing, malformed or does not fit its base model."""


class CorruptFileError(AdapterError):
    """A weights or config file cannot be parsed (truncated, non-JSON, lying offsets)."""


class CheckFailed(PunieError):
    """Validation found problems; ``report`` holds all of them."""

    def __init__(self, message: str, report: object = None):
        self.report = report
        super().__init__(message)


class LaunchError(PunieError):
    """A child process could not be started, did not become ready, or died."""


class LaunchReason(StrEnum):
    """Why a `punie up` session or launch ended (a str: JSON and comparisons see the plain code)."""

    DRY_RUN = "dry-run"
    SIGNAL = "signal"
    AGENT_EXITED = "agent-exited"
    AGENT_FAILED = "agent-failed"
    SERVER_FAILED = "server-failed"
    SERVER_DIED = "server-died"
    SERVER_UNRESPONSIVE = "server-unresponsive"
    GENERATION_FAILED = "generation-failed"
    ADAPTER_FAILED = "adapter-failed"
    PORT_BUSY = "port-busy"
    FOREIGN_SERVER = "foreign-server"
    READY_TIMEOUT = "ready-timeout"
    ADAPTER_NOT_APPLIED = "adapter-not-applied"  # the readiness canary: the server answers as the base alone
    MODEL_NOT_SERVED = "model-not-served"  # the server says the requested model id does not exist (vLLM 404)
    ALREADY_RUNNING = "already-running"  # another live `punie up` of the profile serves on the same port
    SUPERVISOR_FAILED = "supervisor-failed"  # an unexpected error in the supervisor itself (children stopped)


class LaunchFailed(LaunchError):
    """The server (or a child) never became ready. ``reason`` is a `LaunchReason`, ``log_tail`` the last lines,
    ``canaries`` what the readiness canaries found before the refusal (``CanaryResult.to_json``, in order)."""

    def __init__(self, reason: str, message: str, *, log_tail: Sequence[str] = (), hint: str | None = None,
                 canaries: Sequence[Mapping[str, Any]] = ()):
        self.reason = LaunchReason(reason) if reason in LaunchReason._value2member_map_ else reason
        self.log_tail = list(log_tail)
        self.canaries = [dict(c) for c in canaries]
        super().__init__(message, hint=hint)


class ProbeFailed(LaunchError):
    """The server answered the readiness probe in a way that will never become ready (reason, detail)."""

    def __init__(self, reason: str, detail: str):
        self.reason = LaunchReason(reason) if reason in LaunchReason._value2member_map_ else reason
        self.detail = detail
        super().__init__(detail)


class AgentError(PunieError):
    """The agent could not complete a turn (server unreachable, server error...)."""


class ToolFailure(PunieError):
    """A tool could not do what the model asked; the message goes back to the model (not fatal to the turn)."""


class OutsideWorkspace(ToolFailure):
    """A path leads outside the workspace (``..``, an outside absolute path, a symlink pointing out)."""


class PermissionDenied(PunieError):
    """The permission policy or the person asked refused a tool call; the message is what the model is told."""


class TrainingError(PunieError):
    """Training or evaluation could not run (bad dataset, mlx_lm failure...)."""


class InternalError(PunieError):
    """An unexpected exception, as the CLI reports it: a bug in Punie, exit code 3. ``crash_file`` is
    where its traceback was written (None when it could not be)."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, exc: BaseException, crash_file: str | None = None):
        self.original = exc
        self.crash_file = crash_file
        detail = str(exc).splitlines()[0][:300] if str(exc) else ""
        where = f"the traceback is in {crash_file}" if crash_file else "run with -vv to see the traceback"
        # One line: a script that reads stderr sees one message, never a traceback.
        super().__init__(f"internal error: {type(exc).__name__}{': ' + detail if detail else ''} "
                         f"(a bug in Punie; {where})")


class GateFailed(PunieError):
    """An evaluation ran and its CI gate failed (`punie eval --gate`): the candidate is significantly
    worse, or not significantly better, than asked. Exit code 1: a problem found, not a usage error."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """Return a `did you mean 'x'?` hint for a misspelt ``word``, or None."""
    matches = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"did you mean '{matches[0]}'?" if matches else None


class ModelNotAvailable(ModelError):
    """A Hugging Face id that is not in the local cache (Punie never downloads from the hub)."""


class ModelNotProvisioned(ModelError):
    """A builtin model is known but not yet fetched into the cache (`punie up` provisions it)."""
