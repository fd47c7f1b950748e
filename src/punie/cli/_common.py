"""Shared pieces of the CLI edge: state, the one error printer, options, output formats.

Every command gets the top-level options through `state_of`, renders errors
through `print_error` (the one printer of `punie.errors.error_line`), takes
``--format text|json`` from `format_option` and its own ``--set`` from `set_option`.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import click

from punie.errors import ExitCode, InternalError, PunieError
from punie.errors import error_line as _error_line
from punie.textsafe import printable

F = TypeVar("F", bound=Callable[..., Any])

PREFIX = "punie"


@dataclass(frozen=True)
class State:
    """Options of the top-level group, handed to every command."""

    config: str | None = None
    overrides: tuple[str, ...] = field(default_factory=tuple)

    def with_overrides(self, extra: tuple[str, ...]) -> tuple[str, ...]:
        """The global --set values, then a command's own (which win)."""
        return (*self.overrides, *extra)


def state_of(ctx: click.Context | None = None) -> State:
    """The top-level group's State (a default one when a command runs on its own, as in tests)."""
    ctx = ctx or click.get_current_context()
    return ctx.find_object(State) or State()


def configure_logging(verbose: int) -> None:
    """Core modules log; the CLI shows warnings (-v: info, -vv: debug) on stderr as ``punie: LEVEL: ...``."""
    import logging

    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format=f"{PREFIX}: %(levelname)s: %(message)s")


def echo(text: str, *, err: bool = False, nl: bool = True) -> None:
    """``click.echo`` through `printable`."""
    click.echo(printable(text), err=err, nl=nl)


def say(message: str) -> None:
    """A status line on stderr (stdout may belong to the agent protocol)."""
    echo(f"{PREFIX}: {message}", err=True)


def error_line(error: PunieError | str) -> str:
    """The one wording of an error for the user (`punie.errors.error_line`), control characters escaped."""
    return printable(_error_line(error))


def print_error(error: PunieError | str) -> None:
    """The one way an error reaches the user: :func:`error_line` on stderr (the terminal mode shows it
    on its screen instead)."""
    click.echo(error_line(error), err=True)


def print_outcome(message: str | None, exit_code: int) -> None:
    """A supervisor's final message: an error when the exit code says so, else a status line."""
    if message:
        (print_error if exit_code else say)(message)


def set_option(example: str = "server.port=8081") -> Callable[[F], F]:
    """A command's own ``--set KEY=VALUE`` (applied after the global one)."""
    return click.option(
        "--set", "overrides", multiple=True, metavar="KEY=VALUE",
        help=f"Override a profile value (after the global --set), e.g. --set {example}.",
    )


def format_option(help: str = "Output format.") -> Callable[[F], F]:
    """``--format text|json`` as the command's ``fmt`` argument.

    ``--json`` is kept, hidden, as a deprecated spelling of ``--format json``.
    """

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if kwargs.pop("json_alias", False):
                say("warning: --json is deprecated, use --format json")
                kwargs["fmt"] = "json"
            return func(*args, **kwargs)

        wrapped = click.option("--json", "json_alias", is_flag=True, hidden=True,
                               help="Deprecated: --format json.")(wrapper)
        return click.option(  # type: ignore[return-value]
            "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help=help,
        )(wrapped)

    return decorate


def _root_config(ctx: click.Context) -> str | None:
    return ctx.find_root().params.get("config")


def complete_profiles(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion: the profile names of the profiles file the command line would use."""
    from click.shell_completion import CompletionItem

    try:
        from punie.api.profiles import profile_names

        names = profile_names(_root_config(ctx))
    except Exception:  # completing must never print a traceback into the shell
        return []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def complete_adapters(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[Any]:
    """Shell completion: adapter names under the project's adapters/, and latest / best."""
    from click.shell_completion import CompletionItem

    from punie.api.adapters import adapter_names

    try:
        names = adapter_names(_root_config(ctx))
    except Exception:  # completing must never print a traceback into the shell
        names = []
    return [CompletionItem(name) for name in names if name.startswith(incomplete)]


def _only_leaf(exc: BaseException) -> BaseException:
    """The one exception inside (nested) exception groups of one member each (task groups wrap)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def internal_error(exc: BaseException) -> InternalError:
    """An unexpected exception as the one message of exit code 3. Its traceback goes to a private
    file in the temporary directory (named in the message) and, with -vv, to stderr too."""
    import logging
    import os
    import tempfile
    import traceback

    text = "".join(traceback.format_exception(exc))
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        click.echo(text, err=True, nl=False)
    try:
        fd, name = tempfile.mkstemp(prefix="punie-crash-", suffix=".txt")  # 0600: it may show paths
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError:
        name = None
    return InternalError(exc, name)


class PunieGroup(click.Group):
    """A click group with THE crash rule of every command: a PunieError becomes its message and exit
    code; Ctrl-C exits 130; any other exception is a bug: one message, exit code 3 (`internal_error`)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise  # click's own: exit codes and usage errors (2) it renders itself
        except KeyboardInterrupt:
            say("interrupted")
            ctx.exit(ExitCode.INTERRUPTED)
        except Exception as exc:  # the one place an unexpected exception is caught
            leaf = _only_leaf(exc)
            error = leaf if isinstance(leaf, PunieError) else internal_error(leaf)
            print_error(error)
            ctx.exit(error.exit_code)


def render_progress(stage: str, done: int | None, total: int | None) -> None:
    """Show a provisioning step on stderr (stdout may belong to the agent protocol)."""
    if stage == "download" and done is None:
        size = f" ({total >> 20} MB, once)" if total else ""
        say(f"downloading the model from PyPI{size}...")
    elif done is None or not total or (done == 0 and stage != "extract"):
        say(f"{stage}...")
    elif stage == "extract":
        # A line every 32 MB or so, plus the first and the last.
        if done in (0, total) or done % (1 << 25) < (1 << 22):
            say(f"{stage} {done * 100 // total}% ({done >> 20}/{total >> 20} MB)")
    elif done == total:
        say(f"{stage} done")


def echo_json(value: Any) -> None:
    """Write one JSON document to stdout."""
    click.echo(json.dumps(value, indent=2, sort_keys=False, default=str))


def is_tty(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)())


def table(heads: list[str], rows: list[list[str]]) -> list[str]:
    """The one table style of the CLI: UPPERCASE headers, columns padded to their widest cell
    (the last one is not padded), two spaces between them."""
    every = [[h.upper() for h in heads], *rows]
    widths = [max(len(row[i]) for row in every) for i in range(len(heads))]
    widths[-1] = 0
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in every]


def toml_value(value: Any) -> str:
    """A value written the way it would be in punie.toml (``"text"``, ``8080``, ``["a"]``)."""
    from punie.api.profiles import dotted

    if value is None:
        return "(not set)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{dotted([k])} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value, default=str)
