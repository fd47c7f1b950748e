"""The supervisor behind `punie up`: start the server, wait for real readiness, start the agent.

Structured with anyio task groups. The server task (`_serve`) is started with
``tg.start()``: it spawns mlx_lm.server (unless the server is external) and
races a 1-token completion against the process exiting, a fatal log line and
the ready timeout; the answer must come from the child itself (the listening socket
belongs to its process tree, else "foreign-server"). It reports readiness through
``task_status.started()``;
a failure before that raises `LaunchFailed` (quoting the server's last log
lines) out of ``tg.start()``. The agent (`punie agent`: ``plan.agent_gate``) is started with the
server and waits at the start gate (`punie.launch.gate`): it imports and prepares while the model
loads, is let in once the server answers, warms the server's prompt cache with its own prefix and
says when it takes questions ("agent ready"); its exit at any time ends the session. An agent that
does not speak the gate is started once the server is ready. Both are
watched: a server failure restarts the server (restart policy) or ends the
session, the agent's exit ends it. While it runs, a cheap liveness probe (GET /health
every ``liveness_interval`` seconds) catches a frozen or dead-inside server: after
``liveness_failures`` misses it counts as failed (killed at once, then the restart
policy applies). The signals task ends the session on the
first SIGINT/SIGTERM/SIGHUP (graceful stop: SIGTERM, grace period, SIGKILL)
and kills both children on the second.

With ``server.idle_unload`` the server task also waits for the idle timer of `punie.launch.idle`
(fed by the agent over its control channel): the server is stopped, the agent stays, and the next
``wake`` starts the server again through the same spawn / readiness / canary path.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from anyio.abc import TaskGroup, TaskStatus

from punie import envvars
from punie.errors import ExitCode, LaunchFailed, LaunchReason
from punie.launch.backends import backend_of
from punie.launch.canary import CanaryResult, ExpectedCanary
from punie.launch.gate import GateClosed, SupervisorGate
from punie.launch.gate import pair as gate_pair
from punie.launch.idle import IdleControl
from punie.launch.messages import headline as _headline
from punie.launch.messages import hint as _hint
from punie.launch.messages import quote as _quote
from punie.launch.messages import strip_log_prefix as _strip_log_prefix
from punie.launch.plan import LaunchPlan
from punie.launch.process import (
    Child,
    Sink,
    become_subreaper,
    reap_adopted,
    stderr_sink,
)
from punie.launch.readiness import (
    ProbeFailed,
    liveness_probe,
    owner_problem,
    port_in_use,
    served_ids_problem,
    wait_ready,
)
from punie.net import remote_warning
from punie.weights import Progress

logger = logging.getLogger(__name__)

# Server log lines that mean it will never serve: fail fast instead of waiting for the timeout.
SERVER_FATAL_PATTERNS = {
    "generation thread died": LaunchReason.GENERATION_FAILED,
    "incompatible tensors": LaunchReason.ADAPTER_FAILED,
    "Address already in use": LaunchReason.PORT_BUSY,
}
# Restarting cannot fix these.
_NOT_RESTARTABLE = {LaunchReason.PORT_BUSY, LaunchReason.ADAPTER_FAILED, LaunchReason.READY_TIMEOUT,
                    LaunchReason.FOREIGN_SERVER, LaunchReason.ADAPTER_NOT_APPLIED, LaunchReason.MODEL_NOT_SERVED}

T = TypeVar("T")
Failure = tuple[str, str]  # (reason code, detail)
IDLE = "idle"  # not a failure: nobody asked for server.idle_unload seconds (the server is stopped, the agent stays)


__all__ = ["LaunchFailed", "UpOutcome", "run_plan", "run_up", "supervise"]  # LaunchFailed: from errors.py


@dataclass(frozen=True)
class UpOutcome:
    """How a `punie up` session ended. ``exit_code``: 0 stopped by the user or the agent exited 0."""

    reason: str
    exit_code: int
    message: str = ""
    plan: LaunchPlan | None = None
    ready_seconds: float | None = None
    agent_ready_seconds: float | None = None  # launch to the agent taking questions (its prefix warmed)
    server_returncode: int | None = None
    agent_returncode: int | None = None
    restarts: int = 0
    forced: bool = False
    canary: dict[str, Any] | None = None  # what the readiness canary proved (CanaryResult.to_json)
    canaries: tuple[dict[str, Any], ...] = ()  # every canary checked (vLLM group: one per LoRA id), in order
    blas: dict[str, Any] | None = None  # the server's BLAS as it mapped it (punie.launch.blas.blas_report)


async def _first(*waiters: Callable[[], Awaitable[T]]) -> T:
    """Run ``waiters`` concurrently; return the result of the first to finish, cancelling the rest."""
    results: list[T] = []
    async with anyio.create_task_group() as tg:

        async def run(waiter: Callable[[], Awaitable[T]]) -> None:
            results.append(await waiter())
            tg.cancel_scope.cancel()

        for waiter in waiters:
            tg.start_soon(run, waiter)
    return results[0]


def _expected_ids(plan: LaunchPlan) -> tuple[str, ...]:
    """The ids the started server lists in GET /v1/models (its backend says which)."""
    return backend_of(plan).expected_ids(plan)


def _describe(exc: BaseException) -> str:
    """One line for an unexpected error (the leaves of an ExceptionGroup, joined)."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(inner) for inner in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


class _FatalLine:
    """A server's first fatal log line: the Child's ``on_match`` callback, awaitable."""

    def __init__(self) -> None:
        self.seen = anyio.Event()
        self.reason = self.line = ""

    def __call__(self, reason: str, line: str) -> None:
        if not self.seen.is_set():
            self.reason, self.line = reason, line
            self.seen.set()

    async def defer(self, failure: Failure) -> Failure:
        """``failure``, unless a fatal line was seen: then never return (the line explains it better,
        and the probe must not be cut off mid-request while the rest of the traceback is read)."""
        if self.seen.is_set():
            await anyio.sleep_forever()
        return failure


@dataclass(eq=False)
class _Supervisor:
    """One `punie up` session: see the module docstring."""

    plan: LaunchPlan
    grace: float
    sink: Sink
    handle_signals: bool
    probe_interval: float
    guard: bool
    follow_server: bool = True  # False: once ready, the server's output goes to its log file only
    with_agent: bool = True  # False: serve only, until cancelled (`punie.launch.server.running_server`)
    on_ready: Callable[[float, int | None], None] | None = None  # seconds to ready and server pid, once
    subreaper: bool = False  # orphans of the children (setsid, double fork) are adopted and killed at stop
    server: Child | None = None  # the current one (a restart replaces it)
    agent: Child | None = None
    signals: int = 0
    forced: bool = False
    restarts: int = 0
    ready_seconds: float | None = None  # set when the server first answered
    agent_ready_seconds: float | None = None  # set when a gated agent said it takes questions
    canary: CanaryResult | None = None  # what the readiness probe proved about the adapter
    canaries: list[CanaryResult] = field(default_factory=list)  # and every other canary (a vLLM group's LoRAs)
    blas: dict[str, Any] | None = None  # what the started server mapped (_report_blas)
    t0: float = 0.0
    tg: TaskGroup | None = None  # output pumps and signals: they outlive the session
    session: anyio.CancelScope = field(default_factory=anyio.CancelScope)  # cancelled by _finish
    outcome: UpOutcome | None = None
    error: Exception | None = None
    control: IdleControl | None = None  # server.idle_unload: the agent's requests, and its wakes
    spawned: float = 0.0  # when the current server was started

    def note(self, text: str) -> None:
        """A status line that only matters to someone watching the server: on the terminal when its
        output is followed, else in the log (the agent talks in this terminal)."""
        if self.follow_server:
            self.status(text)
        else:
            logger.info("%s", text)

    def status(self, text: str) -> None:
        self.sink(f"punie | {text}")

    # -- entry -------------------------------------------------------------------------------

    async def run(self) -> UpOutcome:
        self.t0 = anyio.current_time()
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                if self.handle_signals:
                    await tg.start(self._signals)
                try:
                    with self.session:
                        await self._session()
                finally:
                    if self.control is not None:
                        self.control.failed("the session ended")
                    with anyio.CancelScope(shield=True):
                        await self._stop_all()
                    tg.cancel_scope.cancel()
        except Exception as exc:  # an ExceptionGroup too: every session ends with a reason and an exit code
            logger.error("the supervisor failed", exc_info=True)
            if self.outcome is None and self.error is None:  # an outcome already reached stands
                self.outcome = UpOutcome(reason=LaunchReason.SUPERVISOR_FAILED, exit_code=ExitCode.INTERNAL,
                                         message=f"the supervisor failed: {_describe(exc)} (children stopped)")
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()  # our stderr lines come before whatever the caller prints next
        if self.error is not None:
            raise self.error
        assert self.outcome is not None
        outcome = self.outcome
        if self.forced and outcome.reason == LaunchReason.SIGNAL:
            outcome = replace(outcome, forced=True, exit_code=ExitCode.INTERRUPTED)
        return replace(
            outcome,
            plan=self.plan,
            ready_seconds=self.ready_seconds,
            agent_ready_seconds=self.agent_ready_seconds,
            restarts=self.restarts,
            canary=self.canary.to_json() if self.canary else None,
            canaries=tuple(c.to_json() for c in self.canaries),
            blas=self.blas,
            server_returncode=self.server.returncode if self.server else None,
            agent_returncode=self.agent.returncode if self.agent else None,
        )

    def _finish(self, outcome: UpOutcome | None = None, *, error: Exception | None = None) -> bool:
        """End the session (the first ending wins): cancels what still runs in it. False if already over."""
        if self.outcome is not None or self.error is not None:
            return False
        self.outcome, self.error = outcome, error
        self.session.cancel()
        return True

    async def _session(self) -> None:
        """The server until it answers, then the agent until it exits (or something else ends the session)."""
        # Its own task group, so that the server task has finished (it could be about to
        # restart the server) before the children are stopped.
        if self.plan.idle_unload and not self.plan.external:
            self.control = IdleControl(self.plan.idle_unload)
            if self.plan.control_socket and self.tg is not None:  # `punie ask` wakes the server through it
                try:
                    await self.tg.start(self.control.listen, Path(self.plan.control_socket))
                except OSError as exc:
                    logger.warning("no control socket at %s (%s): `punie ask` cannot wake an idle server",
                                   self.plan.control_socket, exc)
        async with anyio.create_task_group() as tg:
            gate: SupervisorGate | None = None
            try:
                if self.with_agent and self.plan.agent_gate:  # it imports while the model loads
                    gate = await self._start_agent(gated=True)
                    tg.start_soon(self._watch_agent)
                await tg.start(self._serve)
                if not self.with_agent:
                    await anyio.sleep_forever()  # until the caller cancels, or the server fails
                if gate is None:
                    await self._start_agent()
                    tg.start_soon(self._watch_agent)
                else:
                    await self._open_gate(gate)
            except (LaunchFailed, OSError) as exc:  # OSError: creating the log folders
                self._finish(error=exc)
                return
            finally:
                if gate is not None:
                    gate.close()

    async def _watch_agent(self) -> None:
        """The agent's exit ends the session (while the server loads too: no one would talk to it)."""
        agent = self.agent
        assert agent is not None
        rc = await agent.wait()
        when = "" if self.ready_seconds is not None else " while the server was loading"
        if rc == 0:
            self._finish(UpOutcome(reason=LaunchReason.AGENT_EXITED, exit_code=0, message=f"the agent exited{when}"))
        else:
            quoted = _quote(agent.tail, "agent", self.plan.agent_log)
            self._finish(UpOutcome(reason=LaunchReason.AGENT_EXITED, exit_code=ExitCode.PROBLEMS,
                                   message=f"the agent exited with code {rc}{when}{quoted}"))

    async def _open_gate(self, gate: SupervisorGate) -> None:
        """The server answers: let the agent in, wait until it takes questions (it warms the server's
        prompt cache with its prefix first), say so, then let it draw its prompt."""
        try:
            warmed: float | None = None
            try:
                if not await gate.go():
                    raise GateClosed("the agent closed the start gate")
                with anyio.fail_after(self.plan.ready_timeout):
                    warmed = await gate.ready()
            except GateClosed as exc:
                assert self.agent is not None
                with anyio.move_on_after(1.0):  # an agent that closed its end is usually exiting
                    await self.agent.wait()
                    await anyio.sleep_forever()  # _watch_agent ends the session
                logger.warning("start gate: %s; the agent runs on", exc)
            except TimeoutError:
                logger.warning("the agent did not say it was ready within %gs; going on", self.plan.ready_timeout)
            self.agent_ready_seconds = total = anyio.current_time() - self.t0
            warm = f"; the agent's prefix warmed in {warmed:.2f}s" if warmed is not None else ""
            self.status(f"agent ready ({total:.2f}s{warm})")
            await gate.on()
        finally:
            gate.close()

    # -- server ------------------------------------------------------------------------------

    async def _serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Start the server (unless external), report when it answers, keep it running.

        A failure before ``task_status.started()`` raises LaunchFailed (``tg.start()``
        re-raises it); afterwards a failure restarts the server or ends the session.
        """
        plan = self.plan
        if plan.external:  # nothing to start, and not ours to watch once it answers
            self.status(f"using the running server at {plan.server_url}")
            failure = await self._wait_ready()
            if failure is not None:
                reason, detail = failure
                raise LaunchFailed(reason, _headline(reason, detail, plan), hint=_hint(reason, plan),
                                   canaries=[c.to_json() for c in self.canaries])
            self._ready(task_status)
            return
        for folder in plan.ensure_dirs:
            Path(folder).mkdir(parents=True, exist_ok=True)
        try:
            while True:
                server, fatal = await self._spawn_server()
                failure = await self._wait_ready(server, fatal)
                if failure is None:
                    failure = await self._foreign(server)
                if failure is None:
                    self._ready(task_status)
                    failure = await self._until_failure(server, fatal, live=True)
                if failure[0] == IDLE and self.control is not None:
                    await self._unload(server, self.control)
                    continue
                if not await self._failed(server, *failure):
                    return
        except LaunchFailed as exc:
            if self.control is not None:
                self.control.failed(exc.message.splitlines()[0])
            if self.ready_seconds is None:
                raise
            self._finish(error=exc)  # a restart could not start the server

    async def _unload(self, server: Child, control: IdleControl) -> None:
        """Stop the idle server (its memory goes back to the machine); return when a request wants it."""
        pid = server.pid
        await server.stop(self.grace)
        server.close()
        self.note(f"no request for {control.idle_after:g}s: stopped {self.plan.engine} (pid {pid}) to free its "
                  "memory; the next prompt starts it again")
        await control.wait_wake()
        self.note(f"a request needs the model: starting {self.plan.engine} again")

    async def _foreign(self, server: Child) -> Failure | None:
        """The answer must come from our child: else a foreign server took the port (never restarted).
        Two witnesses: who holds the listening socket, and the model ids the server itself lists."""
        assert server.pid is not None and self.plan.port is not None
        # A server listening on another host (a distributed rank 0 there): only the ids it lists witness it.
        here = backend_of(self.plan).listens_here(self.plan)
        problem = owner_problem(server.pid, self.plan.host, self.plan.port) if here else None
        if problem is None:
            problem = await served_ids_problem(self.plan.base_url, _expected_ids(self.plan))
        return (LaunchReason.FOREIGN_SERVER, problem) if problem else None

    def _ready(self, task_status: TaskStatus[None]) -> None:
        total = anyio.current_time() - self.t0
        what = "server" if not self.plan.external else "external server"
        ready = f"{what} ready on {self.plan.base_url} ({total:.2f}s)"
        if self.control is not None and not self.control.awake:
            ready = f"{what} ready on {self.plan.base_url} (woken in {anyio.current_time() - self.spawned:.2f}s)"
        if self.control is not None:
            (self.status if self.ready_seconds is None else self.note)(ready)  # a wake: the agent says it
            self.control.ready()
        else:
            self.status(ready)
        if self.ready_seconds is None:  # the first time: now the agent can start
            self.ready_seconds = total
            self._after_ready()
            if self.on_ready is not None:
                self.on_ready(total, self.server.pid if self.server is not None else None)
            task_status.started()

    def _after_ready(self) -> None:
        """What the backend proves once its started server is ready (mlx: which BLAS it mapped)."""
        if self.server is None or self.server.pid is None:
            return
        report, lines = backend_of(self.plan).after_ready(self.plan, self.server.pid)
        if report is not None:
            self.blas = report
        for line in lines:
            self.status(line)

    async def _spawn_server(self) -> tuple[Child, _FatalLine]:
        plan = self.plan
        assert plan.server_argv is not None and plan.port is not None
        if plan.remote and (warning := remote_warning(plan.host)):
            logger.warning("%s", warning)
            self.status(warning)
        if port_in_use(plan.host, plan.port):
            message = f"port {plan.port} on {plan.host} is already in use (mlx_lm.server would hang on it)"
            raise LaunchFailed(LaunchReason.PORT_BUSY, message, hint=_hint(LaunchReason.PORT_BUSY, plan))
        fatal = _FatalLine()
        self.spawned = anyio.current_time()
        patterns = {**SERVER_FATAL_PATTERNS, **backend_of(plan).fatal_patterns(plan)}
        self.server = self._child("server", plan.server_argv, plan.server_env, plan.server_log, capture="stdout",
                                  patterns=patterns, on_match=fatal)
        # Quiet (the agent talks in this terminal): the server's warnings and log lines go to its log
        # only, from the first one; a failure still quotes its last lines.
        self.server.echo = self.follow_server
        await self._start(self.server, plan.engine, LaunchReason.SERVER_FAILED)
        self.status(f"started {plan.engine} (pid {self.server.pid}), waiting for a 1-token completion"
                    + ("" if self.follow_server else f"; its output goes to {plan.server_log}"))
        return self.server, fatal

    async def _wait_ready(self, server: Child | None = None, fatal: _FatalLine | None = None) -> Failure | None:
        """None once the server answers a 1-token completion; else why it never will (raced against
        the process failing when it is ours)."""

        async def probe() -> Failure | None:
            self.canary, self.canaries = None, []
            # The lead's canary (or the plain probe) until the server answers; then each group
            # member's canary on its own LoRA id (the server answers at once by then).
            for index, expected in enumerate((self.plan.canary, *self.plan.member_canaries)):
                if index > 0 and expected is None:
                    continue
                answers: list[dict[str, Any]] = []
                try:
                    await wait_ready(self.plan.base_url, interval=self.probe_interval, on_answer=answers.append,
                                     request=expected.request() if expected else None, model=self.plan.model_id)
                except ProbeFailed as exc:
                    if exc.reason == LaunchReason.MODEL_NOT_SERVED and expected is not None:
                        return self._judge_canary(expected, None, not_served=exc.detail)
                    reason = exc.reason
                    if reason == LaunchReason.GENERATION_FAILED and self.plan.adapter:
                        reason = LaunchReason.ADAPTER_FAILED
                    failure = (reason, exc.detail)
                    return await fatal.defer(failure) if fatal else failure
                if expected is not None and answers and (failure := self._judge_canary(expected, answers[0])):
                    return failure
            return None

        waiters: list[Callable[[], Awaitable[Failure | None]]] = [probe]
        if server is not None and fatal is not None:
            waiters.append(partial(self._until_failure, server, fatal))
        with anyio.move_on_after(self.plan.ready_timeout):
            return await _first(*waiters)
        return LaunchReason.READY_TIMEOUT, ""

    def _judge_canary(self, expected: ExpectedCanary, answer: dict[str, Any] | None, *,
                      not_served: str | None = None) -> Failure | None:
        """A probe's answer against an adapter's canary (``not_served``: the server said it does not
        serve the canary's model id): a failure when it proves the adapter absent."""
        result = expected.not_served(not_served) if not_served is not None else expected.judge(answer)
        if expected is self.plan.canary:
            self.canary = result
        self.canaries.append(result)
        if result.refuse:
            return LaunchReason.ADAPTER_NOT_APPLIED, result.message()
        logger.info("canary: %s", result.message())  # shown by the status line; logged for -v and tests
        self.status(("warning: " if result.warn else "") + result.message())
        return None

    async def _until_failure(self, server: Child, fatal: _FatalLine, *, live: bool = False) -> Failure:
        """Wait until the server exits or logs a line meaning it will never serve; with ``live``
        (once it is ready) also until the liveness probe fails ``liveness_failures`` times in a row."""

        async def exited() -> Failure:
            rc = await server.wait()
            return await fatal.defer((LaunchReason.SERVER_DIED, f"{self.plan.engine} exited with code {rc}"))

        async def fatal_line() -> Failure:
            await fatal.seen.wait()
            await anyio.sleep(0.2)  # the rest of a traceback arrives right after its first line
            reason = fatal.reason
            adapter_said = any("dapter" in x for x in server.tail)
            if reason == LaunchReason.GENERATION_FAILED and self.plan.adapter and adapter_said:
                reason = LaunchReason.ADAPTER_FAILED
            return reason, _strip_log_prefix(fatal.line)

        async def idle() -> Failure:
            if not live or self.control is None:
                await anyio.sleep_forever()
            assert self.control is not None
            await self.control.idle()
            return IDLE, ""

        async def liveness() -> Failure:
            interval, needed = self.plan.liveness_interval, self.plan.liveness_failures
            if not live or interval <= 0:
                await anyio.sleep_forever()
            timeout = min(max(interval, 1.0), 10.0)
            misses = 0
            while True:
                await anyio.sleep(interval)
                problem = await liveness_probe(self.plan.base_url, timeout=timeout)
                misses = misses + 1 if problem else 0
                if problem and misses >= needed:
                    server.unresponsive = True  # stopping it must not wait out the grace
                    return LaunchReason.SERVER_UNRESPONSIVE, f"{problem} ({misses} probes in a row)"

        return await _first(exited, fatal_line, liveness, idle)

    async def _failed(self, server: Child, reason: str, detail: str) -> bool:
        """Stop a failed server. True when the restart policy brings it back (after the backoff);
        else raise LaunchFailed if it never answered, or end the session."""
        tail = list(server.tail)
        await server.stop(self.grace)
        server.close()
        policy = self.plan.restart
        restartable = reason not in _NOT_RESTARTABLE and (
            reason == LaunchReason.SERVER_DIED or self.ready_seconds is not None)
        if policy.mode == "on-failure" and restartable and self.restarts < policy.max_restarts:
            self.restarts += 1
            delay = policy.delay(self.restarts)
            self.status(f"{_headline(reason, detail, self.plan)}; restart {self.restarts}/{policy.max_restarts} "
                        f"in {delay:g}s")
            await anyio.sleep(delay)
            return True
        message = _headline(reason, detail, self.plan) + _quote(tail, "server", self.plan.server_log)
        if self.control is not None:
            self.control.failed(_headline(reason, detail, self.plan))
        if self.ready_seconds is None:
            raise LaunchFailed(reason, message, log_tail=tail, hint=_hint(reason, self.plan),
                               canaries=[c.to_json() for c in self.canaries])
        self._finish(UpOutcome(reason=reason, exit_code=ExitCode.PROBLEMS, message=message))
        return False

    # -- agent and children ------------------------------------------------------------------

    @staticmethod
    def _fds(*socks: Any) -> tuple[int, ...]:
        return tuple(sock.fileno() for sock in socks if sock is not None)

    async def _start_agent(self, *, gated: bool = False) -> SupervisorGate | None:
        """Start the agent; ``gated``: with the start gate (`punie.launch.gate`), returned to be opened
        once the server answers."""
        plan = self.plan
        env, theirs, gate_end, gate = dict(plan.agent_env), None, None, None
        if self.control is not None:  # the agent's end of the control channel, by descriptor
            ours, theirs = IdleControl.pair()
            env[envvars.CONTROL_FD] = str(theirs.fileno())
            assert self.tg is not None
            self.tg.start_soon(self.control.serve, ours)
        if gated:
            mine, gate_end = gate_pair()
            gate = SupervisorGate(mine)
            env[envvars.GATE_FD] = str(gate_end.fileno())
        self.agent = self._child("agent", plan.agent_argv, env, plan.agent_log, capture="stderr",
                                 pass_fds=self._fds(theirs, gate_end))
        # Quiet: the agent shows what matters on its screen; its stderr (library warnings, logs) goes to its log.
        self.agent.echo = self.follow_server
        try:
            await self._start(self.agent, "the agent", LaunchReason.AGENT_FAILED)
        except BaseException:
            if gate is not None:
                gate.close()
            raise
        finally:
            for end in (theirs, gate_end):
                if end is not None:
                    end.close()  # the agent holds it now (or nobody: the channel reads EOF)
        if gated:
            self.status(f"started the agent (pid {self.agent.pid}): it gets ready while the server loads")
        else:
            self.status(f"started the agent (pid {self.agent.pid}) on {plan.base_url}")
        return gate

    def _child(self, name: str, argv: Sequence[str], env: dict[str, str], log: str | None, **options: Any) -> Child:
        return Child(name, argv, env={**os.environ, **env}, cwd=self.plan.cwd, log_path=log, sink=self.sink,
                     guard=self.guard, guard_grace=self.grace, **options)

    async def _start(self, child: Child, what: str, reason: str) -> None:
        try:
            # Shielded: a process that was started must be known (child.process) to be stopped.
            with anyio.CancelScope(shield=True):
                await child.start()
        except OSError as exc:
            raise LaunchFailed(reason, f"cannot start {what}: {exc}") from None
        assert self.tg is not None
        self.tg.start_soon(child.pump)

    async def _stop_all(self) -> None:
        grace = 0.0 if self.forced else self.grace
        async with anyio.create_task_group() as tg:
            for child in (self.agent, self.server):
                if child is not None and child.process is not None:
                    tg.start_soon(self._stop_one, child, grace)
        if self.subreaper:
            known = {c.pid for c in (self.agent, self.server) if c is not None and c.pid}
            await anyio.to_thread.run_sync(partial(reap_adopted, known))

    async def _stop_one(self, child: Child, grace: float) -> None:
        try:
            await child.stop(grace)
        except Exception:  # stopping must finish for every child, whatever went wrong with this one
            logger.error("stopping %s failed: killing its group", child.name, exc_info=True)
            child.kill()
        finally:
            child.close()

    # -- signals -----------------------------------------------------------------------------

    async def _signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """The first signal ends the session (a graceful stop follows); the second kills the children."""
        started = False
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                task_status.started()
                started = True
                async for signum in signals:
                    self.signals += 1
                    if self.signals == 1:
                        name = signal.Signals(signum).name
                        stopped = UpOutcome(reason=LaunchReason.SIGNAL, exit_code=0, message=f"stopped by {name}")
                        if self._finish(stopped):
                            self.status(f"{name} received: stopping (press Ctrl-C again to force)")
                    else:
                        self.forced = True
                        self.status("second signal: killing everything now")
                        for child in (self.agent, self.server):
                            if child is not None:
                                child.kill()
        except (ValueError, RuntimeError, NotImplementedError) as exc:
            # Signals can only be handled in the main thread; the caller then owns them.
            logger.debug("no signal handling: %s", exc)
            if not started:
                task_status.started()


async def supervise(
    plan: LaunchPlan,
    *,
    grace: float | None = None,
    sink: Sink | None = None,
    handle_signals: bool = True,
    probe_interval: float = 0.05,
    guard: bool = True,
    follow_server: bool = True,
    with_agent: bool = True,
    on_ready: Callable[[float, int | None], None] | None = None,
    subreaper: bool = False,
) -> UpOutcome:
    """Run ``plan`` until the agent exits, a child fails or a signal arrives (async core).

    Raises `LaunchFailed` (a LaunchError) when the server never became ready.
    ``grace``: seconds between SIGTERM and SIGKILL at stop (None: the plan's, ``server.shutdown.grace``).
    ``guard=False`` starts children without the orphan guard (only for measuring it).
    ``follow_server=False`` stops showing the server's output once it is ready (it still
    goes to its log file, and its last lines are quoted if it fails): for an agent that
    talks to the user in the same terminal. ``with_agent=False`` serves only, until the caller
    cancels (or the server fails); ``on_ready`` is told the seconds to ready and the server's pid
    (None when external), the first time.
    ``subreaper=True`` (the `punie up` process;
    Linux) makes this process the child subreaper of its tree: a process a child started
    and detached (setsid, double fork) is re-parented here instead of to init when its
    parent dies, and is killed when the session stops.
    """
    if subreaper:
        become_subreaper()
    supervisor = _Supervisor(
        plan,
        grace=plan.shutdown_grace if grace is None else grace,
        sink=sink or stderr_sink,
        handle_signals=handle_signals,
        probe_interval=probe_interval,
        guard=guard,
        follow_server=follow_server,
        with_agent=with_agent,
        on_ready=on_ready,
        subreaper=subreaper,
    )
    return await supervisor.run()


def run_plan(plan: LaunchPlan, **options: Any) -> UpOutcome:
    """`supervise` from synchronous code (its own event loop)."""
    return anyio.run(partial(supervise, plan, **options))


def run_up(
    resolved: Any,
    *,
    check: bool = True,
    dry_run: bool = False,
    grace: float | None = None,
    sink: Sink | None = None,
    agent_argv: Sequence[str] | None = None,
    log_dir: Path | None = None,
    on_plan: Callable[[LaunchPlan], None] | None = None,
    progress: Progress | None = None,
    follow_server: bool = True,
    subreaper: bool = False,
) -> UpOutcome:
    """`punie up`: check the profile, build its plan, and (unless ``dry_run``) supervise it.

    ``resolved`` is a ResolvedProfile. Raises CheckFailed when the check finds
    errors, ModelError/AdapterError when they cannot be resolved, LaunchFailed
    when the server never became ready. ``agent_argv`` replaces the agent
    command (tests). ``progress`` hears about a builtin model being provisioned.
    ``follow_server``, ``subreaper``: see `supervise` (the CLI process sets ``subreaper``; a
    library caller that has children of its own should not).
    A dry run returns ``UpOutcome(reason="dry-run", plan=...)``.
    """
    from punie.launch.instances import claim, refuse_running
    from punie.launch.prepare import prepare

    server = resolved.profile.server
    if not dry_run and not server.url:
        refuse_running(resolved.project_dir, resolved.name, server.port)
    plan = prepare(resolved, check=check, provision=not dry_run, log_dir=log_dir, progress=progress)
    if agent_argv is not None:
        plan = plan.model_copy(update={"agent_argv": tuple(agent_argv), "agent_gate": False})  # not known to gate
    if on_plan is not None:
        on_plan(plan)
    if dry_run:
        return UpOutcome(reason=LaunchReason.DRY_RUN, exit_code=0, plan=plan)
    with claim(plan) as instance:  # "already running (pid N)" instead of a busy port; own logs on another port
        return run_plan(instance, grace=grace, sink=sink, follow_server=follow_server, subreaper=subreaper)


def run_up_group(
    members: Sequence[Any],
    *,
    group: str | None = None,
    check: bool = True,
    dry_run: bool = False,
    log_dir: Path | None = None,
    agent_argv: Sequence[str] | None = None,
    progress: object = None,
    **options: object,
) -> object:
    """`punie up --group`: one server with every member's adapter, and the agent (an UpOutcome); the
    members' backend must share a server (vLLM).

    ``options`` go to `punie.launch.supervisor.run_plan` (grace, sink, follow_server).
    """
    from punie.launch.instances import claim, refuse_running
    from punie.launch.prepare import prepare_members

    lead = members[0].profile.server
    if not dry_run and members and not lead.url:
        refuse_running(members[0].project_dir, group or members[0].name, lead.port)
    plan = prepare_members(members, group=group, check=check, provision=not dry_run, log_dir=log_dir,
                           progress=progress)  # type: ignore[arg-type]
    if agent_argv is not None:
        plan = plan.model_copy(update={"agent_argv": tuple(agent_argv), "agent_gate": False})
    if dry_run:
        return UpOutcome(reason="dry-run", exit_code=0, plan=plan)
    with claim(plan) as instance:
        return run_plan(instance, **options)
