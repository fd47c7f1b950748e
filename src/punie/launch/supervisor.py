"""The supervisor behind `punie up`: start the server, wait for real readiness, start the agent.

One event loop (anyio) owns both children. Tasks feed it events: a child
exited, the server log shows a fatal line, the probe got an answer, a signal
arrived. Start-up failures (port taken, adapter not loaded, server exited,
readiness timed out) stop everything and raise `LaunchFailed` quoting the
server's last log lines; once the agent runs, any exit ends the session and is
reported as an `UpOutcome`. The first SIGINT/SIGTERM/SIGHUP stops both
children gracefully (SIGTERM, grace period, SIGKILL); a second one kills them.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from punie.errors import LaunchError
from punie.launch.messages import headline as _headline
from punie.launch.messages import hint as _hint
from punie.launch.messages import quote as _quote
from punie.launch.messages import strip_log_prefix as _strip_log_prefix
from punie.launch.plan import LaunchPlan
from punie.launch.process import Child, Sink, stderr_sink
from punie.weights import Progress
from punie.launch.readiness import ProbeFailed, port_in_use, wait_ready

logger = logging.getLogger(__name__)

# Server log lines that mean it will never serve: fail fast instead of waiting for the timeout.
SERVER_FATAL_PATTERNS = {
    "generation thread died": "generation-failed",
    "incompatible tensors": "adapter-failed",
    "Address already in use": "port-busy",
}
# Restarting cannot fix these.
_NOT_RESTARTABLE = {"port-busy", "adapter-failed", "ready-timeout"}


class LaunchFailed(LaunchError):
    """`punie up` could not get the server ready. ``reason`` is a short code, ``log_tail`` the last lines."""

    def __init__(self, reason: str, message: str, *, log_tail: Sequence[str] = (), hint: str | None = None):
        self.reason = reason
        self.log_tail = list(log_tail)
        super().__init__(message, hint=hint)


@dataclass(frozen=True)
class UpOutcome:
    """How a `punie up` session ended. ``exit_code``: 0 stopped by the user or the agent exited 0."""

    reason: str
    exit_code: int
    message: str = ""
    plan: LaunchPlan | None = None
    ready_seconds: float | None = None
    server_returncode: int | None = None
    agent_returncode: int | None = None
    restarts: int = 0
    forced: bool = False


@dataclass(frozen=True)
class _Event:
    kind: str  # signal | exited | fatal-line | ready | probe-failed | restart-due
    child: str = ""
    gen: int = 0
    value: Any = None
    detail: str = ""


class _Supervisor:
    def __init__(
        self,
        plan: LaunchPlan,
        *,
        grace: float,
        sink: Sink,
        handle_signals: bool,
        probe_interval: float,
        guard: bool,
    ) -> None:
        self.plan = plan
        self.grace = grace
        self.sink = sink
        self.handle_signals = handle_signals
        self.probe_interval = probe_interval
        self.guard = guard
        self.send, self.receive = anyio.create_memory_object_stream[_Event](1000)
        self.server: Child | None = None
        self.agent: Child | None = None
        self.gen = 0
        self.signals = 0
        self.forced = False
        self.restarts = 0
        self.ever_ready = False
        self.ready_seconds: float | None = None
        self.probe_scope: anyio.CancelScope | None = None
        self.deadline: float | None = None
        self.t0 = 0.0
        self.tg: Any = None

    # -- entry -------------------------------------------------------------------------------

    async def run(self) -> UpOutcome:
        error: BaseException | None = None
        outcome: UpOutcome | None = None
        self.t0 = anyio.current_time()
        async with anyio.create_task_group() as tg:
            self.tg = tg
            if self.handle_signals:
                await tg.start(self._signals)
            try:
                outcome = await self._main()
            except Exception as exc:
                error = exc
            finally:
                with anyio.CancelScope(shield=True):
                    await self._stop_all()
                tg.cancel_scope.cancel()
        flush = getattr(self.sink, "flush", None)
        if flush is not None:
            flush()  # our stderr lines come before whatever the caller prints next
        if error is not None:
            raise error
        assert outcome is not None
        if self.forced and outcome.reason == "signal":
            outcome = replace(outcome, forced=True, exit_code=128 + signal.SIGINT)
        return replace(
            outcome,
            plan=self.plan,
            ready_seconds=self.ready_seconds,
            restarts=self.restarts,
            server_returncode=self.server.returncode if self.server else None,
            agent_returncode=self.agent.returncode if self.agent else None,
        )

    def status(self, text: str) -> None:
        self.sink(f"punie | {text}")

    # -- main loop ---------------------------------------------------------------------------

    async def _main(self) -> UpOutcome:
        plan = self.plan
        if plan.external:
            self.status(f"using the running server at {plan.server_url}")
        else:
            for folder in plan.ensure_dirs:
                Path(folder).mkdir(parents=True, exist_ok=True)
            await self._spawn_server()
        self._begin_probe()
        while True:
            event = await self._next_event()
            if event is None:
                outcome = await self._server_failed("ready-timeout", "")
            else:
                outcome = await self._handle(event)
            if outcome is not None:
                return outcome

    async def _next_event(self) -> _Event | None:
        """The next event, or None when the readiness deadline passed."""
        if self.deadline is None:
            return await self.receive.receive()
        with anyio.move_on_after(max(self.deadline - anyio.current_time(), 0)):
            return await self.receive.receive()
        return None

    async def _handle(self, event: _Event) -> UpOutcome | None:
        if event.kind == "signal":
            name = signal.Signals(event.value).name
            self.status(f"{name} received: stopping (press Ctrl-C again to force)")
            return UpOutcome(reason="signal", exit_code=0, message=f"stopped by {name}")
        if event.kind == "exited" and event.child == "agent":
            rc = event.value
            if rc == 0:
                return UpOutcome(reason="agent-exited", exit_code=0, message="the agent exited")
            return UpOutcome(
                reason="agent-exited",
                exit_code=1,
                message=f"the agent exited with code {rc}" + _quote(self.agent.tail if self.agent else [], "agent",
                                                                    self.plan.agent_log),
            )
        if event.gen != self.gen:
            return None  # from a server generation already replaced
        if event.kind == "ready":
            self._on_ready(event.value)
            if self.agent is None:
                await self._spawn_agent()
            return None
        if event.kind == "exited":  # the server
            if self.server and self.server.stopping:
                return None
            return await self._server_failed("server-died", f"mlx_lm.server exited with code {event.value}")
        if event.kind == "fatal-line":
            await anyio.sleep(0.2)  # the rest of a traceback arrives right after its first line
            reason = event.value
            if reason == "generation-failed" and self.plan.adapter and any(
                "dapter" in line for line in (self.server.tail if self.server else [])
            ):
                reason = "adapter-failed"
            return await self._server_failed(reason, event.detail)
        if event.kind == "probe-failed":
            reason = event.value
            if reason == "generation-failed" and self.plan.adapter:
                reason = "adapter-failed"
            return await self._server_failed(reason, event.detail)
        if event.kind == "restart-due":
            await self._spawn_server()
            self._begin_probe()
        return None

    def _on_ready(self, seconds: float) -> None:
        self.deadline = None
        self.ever_ready = True
        total = anyio.current_time() - self.t0
        if self.ready_seconds is None:
            self.ready_seconds = total
        what = "server" if not self.plan.external else "external server"
        self.status(f"{what} ready on {self.plan.base_url} ({total:.2f}s)")

    # -- server ------------------------------------------------------------------------------

    async def _spawn_server(self) -> None:
        plan = self.plan
        assert plan.server_argv is not None and plan.port is not None
        if port_in_use(plan.host, plan.port):
            raise LaunchFailed(
                "port-busy",
                f"port {plan.port} on {plan.host} is already in use (mlx_lm.server would hang on it)",
                hint="stop the other server, or pick another port: --set server.port=PORT",
            )
        self.gen += 1
        gen = self.gen
        fired = False

        def on_match(reason: str, line: str) -> None:
            nonlocal fired
            if not fired:
                fired = True
                self.send.send_nowait(_Event("fatal-line", "server", gen, reason, _strip_log_prefix(line)))

        child = Child(
            "server",
            plan.server_argv,
            env={**os.environ, **plan.server_env},
            cwd=plan.cwd,
            log_path=plan.server_log,
            sink=self.sink,
            capture="stdout",
            patterns=SERVER_FATAL_PATTERNS,
            on_match=on_match,
            guard=self.guard,
        )
        try:
            await child.start()
        except OSError as exc:
            raise LaunchFailed("server-failed", f"cannot start mlx_lm.server: {exc}") from None
        self.server = child
        self.status(f"started mlx_lm.server (pid {child.pid}), waiting for a 1-token completion")
        self.tg.start_soon(child.pump)
        self.tg.start_soon(self._watch, child, gen)

    def _begin_probe(self) -> None:
        if self.probe_scope is not None:
            self.probe_scope.cancel()
        self.probe_scope = anyio.CancelScope()
        self.deadline = anyio.current_time() + self.plan.ready_timeout
        self.tg.start_soon(self._probe, self.gen, self.probe_scope)

    async def _probe(self, gen: int, scope: anyio.CancelScope) -> None:
        with scope:
            try:
                seconds = await wait_ready(self.plan.base_url, interval=self.probe_interval)
            except ProbeFailed as exc:
                await self.send.send(_Event("probe-failed", "server", gen, exc.reason, exc.detail))
            else:
                await self.send.send(_Event("ready", "server", gen, seconds))

    async def _watch(self, child: Child, gen: int) -> None:
        rc = await child.wait()
        await self.send.send(_Event("exited", child.name, gen, rc))

    async def _server_failed(self, reason: str, detail: str) -> UpOutcome | None:
        """Stop the failed server; restart it if the policy allows, else end the session."""
        if self.probe_scope is not None:
            self.probe_scope.cancel()
        self.deadline = None
        tail = list(self.server.tail) if self.server else []
        if self.server is not None:
            await self.server.stop(self.grace)
        policy = self.plan.restart
        restartable = reason not in _NOT_RESTARTABLE and (reason == "server-died" or self.ever_ready)
        if policy.mode == "on-failure" and restartable and self.restarts < policy.max_restarts:
            self.restarts += 1
            delay = policy.delay(self.restarts)
            self.status(f"{_headline(reason, detail, self.plan)}; restart {self.restarts}/{policy.max_restarts} "
                        f"in {delay:g}s")
            self.tg.start_soon(self._restart_after, delay, self.gen)
            return None
        message = _headline(reason, detail, self.plan) + _quote(tail, "server", self.plan.server_log)
        if self.agent is None:
            raise LaunchFailed(reason, message, log_tail=tail, hint=_hint(reason, self.plan))
        return UpOutcome(reason=reason, exit_code=1, message=message)

    async def _restart_after(self, delay: float, gen: int) -> None:
        await anyio.sleep(delay)
        await self.send.send(_Event("restart-due", "server", gen))

    # -- agent -------------------------------------------------------------------------------

    async def _spawn_agent(self) -> None:
        plan = self.plan
        child = Child(
            "agent",
            plan.agent_argv,
            env={**os.environ, **plan.agent_env},
            cwd=plan.cwd,
            log_path=plan.agent_log,
            sink=self.sink,
            capture="stderr",
            guard=self.guard,
        )
        try:
            await child.start()
        except OSError as exc:
            raise LaunchFailed("agent-failed", f"cannot start the agent: {exc}") from None
        self.agent = child
        self.status(f"started the agent (pid {child.pid}) on {plan.base_url}")
        self.tg.start_soon(child.pump)
        self.tg.start_soon(self._watch, child, 0)

    # -- signals and stopping ----------------------------------------------------------------

    async def _signals(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        started = False
        try:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
                task_status.started()
                started = True
                async for signum in signals:
                    self.signals += 1
                    if self.signals == 1:
                        await self.send.send(_Event("signal", value=signum))
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

    async def _stop_all(self) -> None:
        grace = 0.0 if self.forced else self.grace
        async with anyio.create_task_group() as tg:
            for child in (self.agent, self.server):
                if child is not None and child.process is not None:
                    tg.start_soon(self._stop_one, child, grace)

    async def _stop_one(self, child: Child, grace: float) -> None:
        try:
            await child.stop(grace)
        finally:
            child.close()


async def supervise(
    plan: LaunchPlan,
    *,
    grace: float = 5.0,
    sink: Sink | None = None,
    handle_signals: bool = True,
    probe_interval: float = 0.05,
    guard: bool = True,
) -> UpOutcome:
    """Run ``plan`` until the agent exits, a child fails or a signal arrives (async core).

    Raises `LaunchFailed` (a LaunchError) when the server never became ready.
    ``guard=False`` starts children without the orphan guard (only for measuring it).
    """
    supervisor = _Supervisor(
        plan,
        grace=grace,
        sink=sink or stderr_sink,
        handle_signals=handle_signals,
        probe_interval=probe_interval,
        guard=guard,
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
    grace: float = 5.0,
    sink: Sink | None = None,
    agent_argv: Sequence[str] | None = None,
    log_dir: Path | None = None,
    on_plan: Callable[[LaunchPlan], None] | None = None,
    progress: Progress | None = None,
) -> UpOutcome:
    """`punie up`: check the profile, build its plan, and (unless ``dry_run``) supervise it.

    ``resolved`` is a ResolvedProfile. Raises CheckFailed when the check finds
    errors, ModelError/AdapterError when they cannot be resolved, LaunchFailed
    when the server never became ready. ``agent_argv`` replaces the agent
    command (tests). ``progress`` hears about a builtin model being provisioned.
    A dry run returns ``UpOutcome(reason="dry-run", plan=...)``.
    """
    from punie.launch.prepare import prepare

    plan = prepare(resolved, check=check, provision=not dry_run, log_dir=log_dir, progress=progress)
    if agent_argv is not None:
        plan = plan.model_copy(update={"agent_argv": tuple(agent_argv)})
    if on_plan is not None:
        on_plan(plan)
    if dry_run:
        return UpOutcome(reason="dry-run", exit_code=0, plan=plan)
    return run_plan(plan, grace=grace, sink=sink)
