"""The terminal mode: the interactive agent loop a person types into.

It runs when stdin and stdout are both a terminal: ``punie agent --mode repl``
(or ``auto``), the agent ``punie up PROFILE`` starts in a terminal, ``punie
serve --model local:URL``. Otherwise :func:`punie.cli.agent.run_agent_process`
uses the plain line loop.

* Line editing and history (prompt_toolkit). The history is the workspace's
  :func:`punie.paths.history_file` (``.punie/history``).
* While a turn runs: the answer is streamed as it arrives, a line per tool
  call when the call ends, and a spinner with the elapsed time whenever the
  cursor is at the start of an empty line (waiting for the first token, or for
  the model after a tool), erased as soon as anything else is written.
* Everything the loop shows goes to ONE stream, the terminal on stdout, through
  one :class:`Screen`. Under ``punie up`` the agent's stderr is a pipe the
  supervisor reads and relays line by line in its own time, so a tool line
  written to stderr reached the screen after the answer written straight to
  stdout. Logs still go to stderr (and ``.punie/logs/``).
* Ctrl-C during a turn cancels the turn and returns to the prompt; once the
  answer is whole on the screen (the model's end-of-turn token went by) it only
  cuts what is left of the stream: no "turn cancelled", the answer is kept. The
  terminal stays in raw mode during the turn and the key is read here, because
  under ``punie up`` the agent runs in a session of its own: the terminal's
  SIGINT would reach the supervisor (and stop everything), never the agent. A
  SIGINT that does arrive (``kill -INT``) cancels the turn too. At the prompt
  Ctrl-C clears a line with text; Ctrl-C or Ctrl-D on an empty line quits
  (exit status 0).

``punie ask`` with stderr on a terminal uses the same :class:`Screen` there
(:func:`spinning_turn`): the spinner and each tool line as the call ends; the
answer goes to stdout when the turn is over. No spinner when the stream is not
a terminal (or ``TERM=dumb``).

prompt_toolkit is imported only when the loop starts, so importing this module
costs nothing (``punie ask`` imports it for :func:`tool_line`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

logger = logging.getLogger(__name__)

PROMPT = "punie> "
#: How often the spinner is redrawn (seconds).
SPINNER_INTERVAL = 0.1
SPINNER_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
ASCII_FRAMES = "|/-\\"
#: Carriage return, then erase the whole line: what removes a drawn spinner.
ERASE_LINE = "\r\x1b[2K"
#: What a turn stopped by Ctrl-C leaves on the screen.
CANCELLED = "punie: turn cancelled"


def is_terminal(stdin: TextIO | None = None, stdout: TextIO | None = None) -> bool:
    """Whether the terminal mode can run: stdin and stdout are both a terminal."""
    inp, out = stdin or sys.stdin, stdout or sys.stdout
    try:
        return bool(inp.isatty() and out.isatty())
    except (AttributeError, ValueError):  # a closed or fake stream
        return False


def _format_args(args: Any) -> str:
    if not isinstance(args, dict):
        return repr(args)[:120]
    shown = []
    for key, value in args.items():
        text = repr(value)
        if len(text) > 60:
            text = text[:57] + "...'"
        shown.append(f"{key}={text}")
    return ", ".join(shown)


def tool_line(call: Any) -> str:
    """How a tool call is shown: ``  tool name(args) -> status: summary``."""
    summary = call.summary
    if summary.startswith(f"{call.status}: "):  # the model's text of a failure says "error: ..." itself
        summary = summary[len(call.status) + 2:]
    return f"  tool {call.name}({_format_args(call.args)}) -> {call.status}: {summary}"


def elapsed_text(seconds: float) -> str:
    """``4.2s`` under a minute, ``1m05s`` after."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class Screen:
    """What the terminal mode writes, in order, on one stream, with a spinner drawn between outputs.

    The spinner is shown only while :meth:`busy` and only when the cursor is at
    the start of a line, so it never lands in the middle of streamed text; any
    :meth:`write` erases it first.
    """

    def __init__(self, stream: TextIO, *, spinner: bool | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        # A dumb terminal cannot erase a line: no spinner there (unless asked for).
        self.spinner = spinner if spinner is not None else os.environ.get("TERM") != "dumb"
        self.clock = clock
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self.frames = SPINNER_FRAMES if encoding == "utf8" else ASCII_FRAMES
        self.at_line_start = True
        self._busy_since: float | None = None
        self._drawn = False
        self._paused = 0
        self._frame = 0

    def write(self, text: str) -> None:
        """Write ``text`` as it is (a piece of the streamed answer)."""
        if not text:
            return
        self._erase()
        self.stream.write(text)
        self.stream.flush()
        self.at_line_start = text.endswith("\n")

    def line(self, text: str) -> None:
        """Write ``text`` as a line of its own (after ending the current one, if text is on it)."""
        self.end_line()
        self.write(text + "\n")

    def end_line(self) -> None:
        """End the current line unless the cursor is at the start of one."""
        if not self.at_line_start:
            self.write("\n")

    def busy(self) -> None:
        """The model is working: the spinner may be shown, its time counted from now."""
        self._busy_since = self.clock()

    def idle(self) -> None:
        """The turn is over: erase the spinner and show it no more."""
        self._busy_since = None
        self._erase()
        self.stream.flush()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        """No spinner inside the block (someone else writes: a permission question)."""
        self._paused += 1
        self._erase()
        self.stream.flush()
        try:
            yield
        finally:
            self._paused -= 1
            self.at_line_start = True  # prompt_toolkit ends its line when the answer is entered

    def spinner_text(self) -> str:
        """The spinner line as drawn now: a frame, the elapsed time, how to stop."""
        since = self._busy_since if self._busy_since is not None else self.clock()
        frame = self.frames[self._frame % len(self.frames)]
        return f"{frame} working {elapsed_text(self.clock() - since)} (Ctrl-C to stop)"

    def tick(self) -> None:
        """Draw the next spinner frame, when one is to be shown."""
        if not self.spinner or self._busy_since is None or self._paused or not self.at_line_start:
            return
        self._frame += 1
        self.stream.write(ERASE_LINE + self.spinner_text())
        self.stream.flush()
        self._drawn = True

    async def spin(self) -> None:
        """Redraw the spinner every :data:`SPINNER_INTERVAL` until cancelled."""
        while True:
            self.tick()
            await asyncio.sleep(SPINNER_INTERVAL)

    @contextlib.asynccontextmanager
    async def spinning(self) -> AsyncIterator[None]:
        """Busy (the spinner turning) for the block; erased at its end, however it ends."""
        self.busy()
        task = asyncio.create_task(self.spin())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.idle()

    def pausing(self, asker: Callable[[Any], Awaitable[Any]]) -> Callable[[Any], Awaitable[Any]]:
        """``asker`` with the spinner paused while it asks (it writes its own question)."""
        async def ask(request: Any) -> Any:
            with self.pause():
                self.end_line()
                return await asker(request)
        return ask

    def _erase(self) -> None:
        if self._drawn:
            self.stream.write(ERASE_LINE)
            self._drawn = False


def _history(path: Path) -> Any:
    """The prompt history kept in ``path``; in memory (with a warning) when the folder cannot be made."""
    from prompt_toolkit.history import FileHistory, InMemoryHistory

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(exist_ok=True)
    except OSError as exc:
        logger.warning("prompt history not kept (%s: %s)", path, exc.strerror or exc)
        return InMemoryHistory()
    return FileHistory(str(path))


class TerminalLoop:
    """The interactive loop: prompt, run a turn, show it; :meth:`ask_permission` is the agent's asker.

    Made before the agent (the agent is built with :meth:`ask_permission`),
    then :meth:`run` with it.
    """

    def __init__(self, stdin: TextIO | None = None, stdout: TextIO | None = None) -> None:
        from prompt_toolkit.input import create_input
        from prompt_toolkit.output import create_output

        stdout = stdout or sys.stdout
        self.input = create_input(stdin or sys.stdin)
        self.output = create_output(stdout)
        self.screen = Screen(stdout)
        self._turn: asyncio.Task[Any] | None = None

    # -- permission ------------------------------------------------------------------------------

    async def ask_permission(self, request: Any) -> Any:
        """Ask y/N/a(lways) on the terminal; Ctrl-C or Ctrl-D there cancels the turn."""
        from prompt_toolkit import PromptSession

        from punie.api.agent import Answer

        question = f"punie: allow {request.tool}: {request.summary}? [y/N/a(lways)] "
        with self.screen.pause():
            self.screen.end_line()
            try:
                # handle_sigint=False: the turn's own SIGINT handler stays in place.
                reply = await PromptSession(input=self.input, output=self.output).prompt_async(
                    question, handle_sigint=False)
            except (EOFError, KeyboardInterrupt):
                if self._turn is not None:
                    self._turn.cancel()
                return Answer(False, reason="the user cancelled the turn")
        reply = reply.strip().lower()
        if reply in ("a", "always"):
            return Answer(True, always=True)
        if reply in ("y", "yes"):
            return Answer(True)
        return Answer(False, reason="the user refused")

    # -- the loop --------------------------------------------------------------------------------

    def _session(self, history_path: Path) -> Any:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.key_binding import KeyBindings

        bindings = KeyBindings()

        @bindings.add("c-c")
        def _interrupt(event: Any) -> None:
            # A line with text is cleared (as in a shell); on an empty line Ctrl-C quits.
            buffer = event.app.current_buffer
            if buffer.text:
                buffer.reset()
            else:
                event.app.exit(exception=KeyboardInterrupt())

        return PromptSession(history=_history(history_path), input=self.input, output=self.output,
                             key_bindings=bindings)

    async def run(self, agent: Any) -> None:
        """Prompt and run turns until Ctrl-D (or Ctrl-C on an empty line)."""
        from punie.api.agent import history_file

        session = self._session(history_file(agent.workspace.root))
        self.screen.line(f"punie: agent on {agent.base_url}, workspace {agent.workspace.root} "
                         "(Ctrl-D quits, Ctrl-C stops a turn)")
        history: list[Any] = []
        while True:
            try:
                text = await session.prompt_async(PROMPT)
            except (EOFError, KeyboardInterrupt):
                return
            prompt = text.strip()
            if not prompt:
                continue
            messages = await self.turn(agent, prompt, history)
            if messages is not None:
                history = messages

    async def turn(self, agent: Any, prompt: str, history: list[Any]) -> list[Any] | None:
        """Run one turn on the screen; the conversation's messages after it (None: cancelled or failed)."""
        from punie.api.agent import ToolHooks, run_turn
        from punie.cli._common import error_line
        from punie.errors import AgentError

        screen = self.screen
        streamed: list[str] = []
        answered = False

        async def on_text(piece: str) -> None:
            nonlocal answered
            streamed.append(piece)
            answered = False
            screen.write(piece)

        async def on_answered() -> None:
            nonlocal answered
            answered = True

        async def on_tool(record: Any) -> None:
            nonlocal answered
            answered = False
            screen.line(tool_line(record))

        async def on_status(text: str) -> None:  # e.g. the model is loaded again after an idle unload
            screen.line(f"punie: {text}")

        task = asyncio.create_task(run_turn(agent, prompt, history=history, on_text=on_text,
                                            on_answered=on_answered, on_status=on_status,
                                            hooks=ToolHooks(on_end=on_tool, on_invalid=on_tool)))
        self._turn = task
        try:
            async with screen.spinning():
                with self._cancel_keys(task):
                    await asyncio.wait({task})
        finally:
            self._turn = None
        if task.cancelled() and answered:
            # The answer was whole on the screen (the model only had debris left to send): the turn
            # is over, not cancelled, and the conversation keeps the answer.
            screen.end_line()
            return [*history, *answered_messages(prompt, "".join(streamed))]
        if task.cancelled():
            screen.line(CANCELLED)
            return None
        exc = task.exception()
        if isinstance(exc, AgentError):
            screen.line(error_line(exc))
            return None
        if exc is not None:
            raise exc
        result = task.result()
        if result.answer and not streamed:
            screen.write(result.answer)
        screen.end_line()
        return list(result.messages)

    @contextlib.contextmanager
    def _cancel_keys(self, task: asyncio.Task[Any]) -> Iterator[None]:
        """During the turn: the terminal in raw mode, Ctrl-C (or SIGINT) cancels ``task``.

        Other keys typed meanwhile are kept for the next prompt (type-ahead).
        """
        from prompt_toolkit.input.typeahead import store_typeahead
        from prompt_toolkit.keys import Keys

        inp = self.input

        def keys_ready() -> None:
            keys = inp.read_keys()
            if any(key.key == Keys.ControlC for key in keys):
                task.cancel()
            elif keys:
                store_typeahead(inp, keys)

        loop = asyncio.get_running_loop()
        with inp.raw_mode(), inp.attach(keys_ready):
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread
                loop.add_signal_handler(signal.SIGINT, task.cancel)
            try:
                yield
            finally:
                with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                    loop.remove_signal_handler(signal.SIGINT)


def answered_messages(prompt: str, answer: str) -> list[Any]:
    """The messages of a turn whose answer was whole when its stream was cut: the prompt and the answer."""
    from pydantic_ai.messages import ModelRequest, ModelResponse, TextPart, UserPromptPart

    return [ModelRequest(parts=[UserPromptPart(content=prompt)]), ModelResponse(parts=[TextPart(content=answer)])]


async def spinning_turn(agent: Any, prompt: str, screen: Screen, *, show_tools: bool = True) -> Any:
    """One turn of ``punie ask`` with stderr on a terminal: the spinner, and each tool line as the call ends.

    The answer is not streamed: it goes to stdout once the turn is over (stdout may be a file).
    """
    from punie.api.agent import ToolHooks, run_turn

    async def on_tool(record: Any) -> None:
        screen.line(tool_line(record))

    hooks = ToolHooks(on_end=on_tool, on_invalid=on_tool) if show_tools else None
    async with screen.spinning():
        return await run_turn(agent, prompt, hooks=hooks)


def warnings_to_log(project_dir: str | Path) -> None:
    """Python warnings (a library's DeprecationWarning, say) go to :func:`punie.paths.terminal_log`, not
    the screen a person reads: the calm terminal. Best effort: without a writable log they stay as they were."""
    from punie.api.agent import terminal_log

    path = terminal_log(project_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        logger.debug("warnings stay on stderr: %s", exc)
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    captured = logging.getLogger("py.warnings")
    captured.addHandler(handler)
    captured.propagate = False
    logging.captureWarnings(True)


def preload() -> None:
    """Import what the loop will (prompt_toolkit): under `punie up`, while the model loads."""
    import prompt_toolkit
    import prompt_toolkit.history
    import prompt_toolkit.input
    import prompt_toolkit.input.typeahead
    import prompt_toolkit.key_binding
    import prompt_toolkit.keys
    import prompt_toolkit.output  # noqa: F401


def run_terminal(build: Callable[[Any], Any]) -> None:
    """Build the agent with the terminal's permission asker (``build(asker)``) and run the loop to its end."""
    loop = TerminalLoop()
    agent = build(loop.ask_permission)
    warnings_to_log(agent.workspace.root)
    try:
        asyncio.run(loop.run(agent))
    except KeyboardInterrupt:  # a SIGINT outside a turn and outside the prompt: a clean stop all the same
        loop.screen.end_line()
