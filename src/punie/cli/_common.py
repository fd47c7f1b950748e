"""Shared pieces of the CLI edge: state, error rendering, output formats."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from punie.errors import PunieError

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class State:
    """Options of the top-level group, handed to every command."""

    config: str | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)

    def with_overrides(self, extra: tuple[str, ...]) -> tuple[str, ...]:
        """The global --set values, then a command's own (which win)."""
        return (*self.overrides, *extra)


def state_of(ctx: click.Context) -> State:
    """The top-level group's State (a default one when a command runs on its own, as in tests)."""
    return ctx.find_object(State) or State()


def set_option(example: str = "server.port=8081") -> Callable[[F], F]:
    """A command's own ``--set KEY=VALUE`` (applied after the global one)."""
    return click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help=f"Override a profile value (after the global --set), e.g. --set {example}.",
    )


def format_option(help: str = "Output format.") -> Callable[[F], F]:
    """``--format text|json``."""
    return click.option(
        "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help=help,
    )


class PunieGroup(click.Group):
    """A click group that renders PunieError as a message and its exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PunieError as exc:
            click.echo(f"punie: error: {exc.render()}", err=True)
            ctx.exit(exc.exit_code)


def render_progress(stage: str, done: int | None, total: int | None) -> None:
    """Show a provisioning step on stderr (stdout may belong to the agent protocol)."""
    if stage == "download" and done is None:
        size = f" ({total >> 20} MB, once)" if total else ""
        click.echo(f"punie: downloading the model from PyPI{size}...", err=True)
    elif done is None or not total or (done == 0 and stage != "extract"):
        click.echo(f"punie: {stage}...", err=True)
    elif stage == "extract":
        # A line every 32 MB or so, plus the first and the last.
        if done in (0, total) or done % (1 << 25) < (1 << 22):
            click.echo(f"punie: {stage} {done * 100 // total}% ({done >> 20}/{total >> 20} MB)", err=True)
    elif done == total:
        click.echo(f"punie: {stage} done", err=True)


def echo_json(value: Any) -> None:
    """Write one JSON document to stdout."""
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def is_tty(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


pass_state = click.make_pass_decorator(State)
