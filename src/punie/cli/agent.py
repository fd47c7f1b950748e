"""CLI: the coding agent (`punie agent`, `punie ask`, `punie serve`).

* ``punie agent --base-url URL --options JSON`` is what the supervisor starts:
  ACP over stdio (stdout is the protocol, logs go to stderr). When stdin is a
  terminal it is the interactive loop instead, so a person running ``punie up``
  can talk to it: the terminal mode of :mod:`punie.cli.terminal` when stdout is
  a terminal too, else a plain line loop (prompt and tool calls on stderr,
  answers on stdout).
* ``punie ask "PROMPT"`` runs one turn against a profile's server and prints
  the tool calls (stderr) and the answer (stdout), or both as JSON.
* ``punie serve --model local:URL`` runs the agent against a running server;
  ``punie serve --model M [--adapter A] [--port P]`` starts and supervises
  mlx_lm.server first, through the same path as ``punie up``.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from typing import Any

import click

from punie.cli._common import (
    State,
    complete_adapters,
    complete_profiles,
    echo_json,
    format_option,
    print_error,
    print_outcome,
    render_progress,
    say,
    set_option,
    state_of,
)
from punie.cli.terminal import is_terminal, tool_line
from punie.errors import AgentError, ExitCode, UsageError

LOCAL_PREFIX = "local:"


def render_tool_calls(calls: Sequence[Any]) -> None:
    """One line per tool call on stderr: name(args) -> status: summary."""
    for call in calls:
        click.echo(tool_line(call), err=True)


def _load_target(state: State, profile: str | None, overrides: Sequence[str], base_url: str | None) -> Any:
    from punie.api.agent import load_target

    return load_target(profile, state.config, overrides=state.with_overrides(overrides), base_url=base_url)


async def _repl(agent: Any) -> None:
    """The plain line loop, for a stdin or stdout that is not a terminal (punie.cli.terminal otherwise)."""
    from punie.api.agent import run_turn

    say(f"agent on {agent.base_url}, workspace {agent.workspace.root} (Ctrl-D to quit)")
    history: list[Any] = []
    while True:
        click.echo("punie> ", err=True, nl=False)
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            click.echo("", err=True)
            return
        prompt = line.strip()
        if not prompt:
            continue
        try:
            result = await run_turn(agent, prompt, history=history)
        except AgentError as exc:
            print_error(exc)
            continue
        history = result.messages
        render_tool_calls(result.tool_calls)
        click.echo(result.answer)


def run_agent_process(options: Any, base_url: str, *, mode: str = "auto", base_dir: str | None = None,
                      profile: str | None = None, profiles: dict[str, Any] | None = None,
                      model_name: str | None = None, models: dict[str, str] | None = None,
                      config: str | None = None, warm_cache: bool = False) -> None:
    """ACP on stdio, or the interactive loop when stdin is a terminal (``mode`` auto|acp|repl).

    In ACP mode the workspace is relative to each session's cwd (the IDE's
    project); in the interactive loop to ``base_dir`` (default: cwd).
    ``profile``/``profiles``: the profile the options come from and those a
    session may switch to on this server. ``warm_cache``: warm the server's prompt cache
    with the agent's prefix at start (`punie.agent.warm`).
    """
    from punie.api.agent import build_agent, gated, through_gate
    from punie.api.agent import warm_cache as start_warming

    interactive = mode == "repl" or (mode == "auto" and sys.stdin.isatty())
    terminal = interactive and is_terminal()
    # What the mode needs is loaded first: behind `punie up`'s start gate it loads while the model does.
    window = None
    if not interactive:
        from punie.api.agent import context_window, load_acp

        load_acp()
        window = context_window(profile, config)
    elif terminal:
        from punie.cli.terminal import preload

        preload()
    if gated():  # wait for the server; it warms the server's prompt cache before `punie up` says ready
        if not through_gate(options, base_url, warm=warm_cache, base_dir=base_dir, model_name=model_name):
            return  # the session ended before the server answered
    elif warm_cache:  # the server's prompt cache gets our system prompt and tools now, not at the first question
        start_warming(options, base_url, base_dir=base_dir, model_name=model_name)
    if not interactive:
        from punie.api.agent import serve_stdio

        try:
            serve_stdio(options, base_url, profile=profile, profiles=profiles, model_name=model_name,
                        models=models, config=config, context_window=window)
        except KeyboardInterrupt:  # Ctrl-C on the supervisor's terminal: a clean stop
            pass
        return
    from punie.api.agent import terminal_asker

    def build(asker: Any) -> Any:
        return build_agent(options, base_url, permission_asker=asker, base_dir=base_dir,
                           **({"model_name": model_name} if model_name else {}))

    if terminal:  # line editing, history, spinner, Ctrl-C stops a turn
        from punie.cli.terminal import run_terminal

        run_terminal(build)
        return
    agent = build(terminal_asker())
    try:
        asyncio.run(_repl(agent))
    except KeyboardInterrupt:
        click.echo("", err=True)


@click.command("agent")
@click.option("--base-url", required=True, metavar="URL", help="OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1.")
@click.option("--options", "options_text", metavar="JSON", help="Agent options (the profile's [agent] table) as JSON.")
@click.option("--mode", type=click.Choice(["auto", "acp", "repl"]), default="auto", show_default=True,
              help="auto: ACP on stdio unless stdin is a terminal.")
@click.option("--model-name", metavar="ID", help="The request's model id (a vLLM LoRA id; default: mlx_lm's).")
@click.option("--models", "models_text", metavar="JSON",
              help='Profile -> model id on a shared server; an ACP session picks one with '
                   '_meta {"punie/profile": NAME}.')
@click.option("--profile", "profile", metavar="NAME",
              help="The profile the options come from: the IDE may switch to the profiles sharing its server.")
@click.option("--config", "config", metavar="PATH", type=click.Path(dir_okay=False),
              help="punie.toml the profiles are read from (default: found from the current directory).")
@click.option("--warm", "warm_cache", is_flag=True,
              help="At start, have the server process the system prompt and tools once (its prompt cache "
                   "then holds them for the first question); `punie up` passes it. PUNIE_WARM=off turns it off.")
def agent_command(base_url: str, options_text: str | None, mode: str, model_name: str | None,
                  models_text: str | None, profile: str | None, config: str | None, warm_cache: bool = False) -> None:
    """Run the coding agent: Agent Client Protocol over stdio (used by `punie up` and IDEs)."""
    import json

    from punie.api.agent import parse_options, switchable_profiles

    try:
        models = json.loads(models_text) if models_text else None
    except ValueError as exc:
        raise UsageError(f"--models is not valid JSON: {exc}") from None
    options = parse_options(options_text)
    profiles = switchable_profiles(profile, config) if profile else None
    run_agent_process(options, base_url, mode=mode, profile=profile, profiles=profiles, model_name=model_name,
                      models=models, config=config, warm_cache=warm_cache)


@click.command("ask")
@click.argument("prompt")
@click.option("--profile", "-p", "profile", metavar="NAME", shell_complete=complete_profiles,
              help="Profile to use (default: the file's default).")
@click.option("--base-url", metavar="URL", help="Talk to this server instead of the profile's.")
@set_option()
@format_option("json: the answer and tool calls as one JSON document.")
@click.pass_context
def ask_command(ctx: click.Context, prompt: str, profile: str | None, base_url: str | None,
                overrides: tuple[str, ...], fmt: str) -> None:
    """Run one agent turn in the terminal and print the tool calls and the answer.

    With stderr on a terminal a spinner shows while the model works and each
    tool call is shown as it ends. Ctrl-C stops the turn (exit code 130).
    """
    from punie.api.agent import build_agent, run_turn_sync, terminal_asker, wake_through
    from punie.cli.terminal import Screen, spinning_turn, warnings_to_log

    target = _load_target(state_of(ctx), profile, overrides, base_url)
    wake_through(target)  # the profile's `punie up` unloads its idle server: the request wakes it
    screen = Screen(sys.stderr) if sys.stderr.isatty() else None
    if screen is not None:
        warnings_to_log(target.base_dir or ".")
    asker = terminal_asker()
    agent = build_agent(target.options, target.base_url, permission_asker=screen.pausing(asker) if screen else asker,
                        base_dir=target.base_dir, model_name=target.model_name)
    try:
        if screen is not None:
            result = asyncio.run(spinning_turn(agent, prompt, screen, show_tools=fmt != "json"))
        else:
            result = run_turn_sync(agent, prompt)
    except KeyboardInterrupt:
        if screen is not None:
            screen.end_line()
        say("turn cancelled")
        ctx.exit(ExitCode.INTERRUPTED)
    if fmt == "json":
        echo_json(result.to_json())
        return
    if screen is None:  # on a terminal they were shown as each call ended
        render_tool_calls(result.tool_calls)
    click.echo(result.answer)


@click.command("serve")
@click.option("--model", "-m", "model", required=True, metavar="SPEC",
              help="local:URL to use a running server, or a model to serve (path, HF id, builtin:NAME).")
@click.option("--adapter", "-a", metavar="SPEC", shell_complete=complete_adapters,
              help="LoRA adapter to serve with the model.")
@click.option("--port", type=click.IntRange(1, 65535), help="Port for mlx_lm.server.")
@click.option("--host", metavar="ADDR", help="Address mlx_lm.server binds to.")
@click.option("--profile", "-p", "profile", metavar="NAME", shell_complete=complete_profiles,
              help="Take the agent options from this profile.")
@set_option()
@click.option("--mode", type=click.Choice(["auto", "acp", "repl"]), default="auto", show_default=True,
              help="With local:URL: ACP on stdio unless stdin is a terminal.")
@click.option("--dry-run", is_flag=True, help="Print the launch plan (after checking) and start nothing.")
@click.pass_context
def serve_command(ctx: click.Context, model: str, adapter: str | None, port: int | None,
                  host: str | None, profile: str | None, overrides: tuple[str, ...], mode: str,
                  dry_run: bool) -> None:
    """Serve the agent: on a running server (local:URL), or start mlx_lm.server with a model first."""
    from punie.api import ResolvedProfile, load_profile

    state = state_of(ctx)
    resolved: ResolvedProfile | None = None
    if profile or overrides:
        resolved = load_profile(profile, state.config, overrides=state.with_overrides(overrides))
    if model.startswith(LOCAL_PREFIX):
        url = model[len(LOCAL_PREFIX):]
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"--model {model}: expected local:http://HOST:PORT[/v1]")
        if adapter or port or host:
            raise UsageError("--adapter, --port and --host start a server; with --model local:URL "
                             "the server is already running (serve the adapter there)")
        from punie.api.agent import AgentOptions, openai_base_url

        run_agent_process(resolved.profile.agent if resolved else AgentOptions(), openai_base_url(url), mode=mode,
                          base_dir=resolved.project_dir if resolved else None)
        return

    from punie.api.launch import serve_model

    # As `punie up`: the interactive agent shares this terminal, so the server's output goes to its log.
    outcome = serve_model(model, adapter=adapter, port=port, host=host, base=resolved, dry_run=dry_run,
                          progress=render_progress, follow_server=not sys.stdin.isatty())
    if dry_run:
        if outcome.plan is not None:
            click.echo(outcome.plan.render_text())
        return
    print_outcome(outcome.message, outcome.exit_code)
    ctx.exit(outcome.exit_code)


def register(group: click.Group) -> None:
    """Add this module's commands to the top-level group."""
    group.add_command(agent_command)
    group.add_command(ask_command)
    group.add_command(serve_command)

