"""CLI: editing punie.toml: `punie profiles new|set|unset|rename|rm|edit`.

Each command calls one function of punie.config.edit through ``apply_edit``:
the edit is validated before the file is (atomically) replaced, and comments,
blank lines and formatting outside the changed value are kept.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from punie.api.profiles import (
    CONFIG_NAME,
    apply_edit,
    create_profile,
    dependants,
    find_config,
    parse_value,
    profile_snippet,
    remove_profile,
    rename_profile,
    replace_profile,
    set_value,
    unset_value,
)
from punie.cli._common import print_error, state_of
from punie.errors import ConfigError, UsageError


def _config_path(ctx: click.Context, *, create: bool = False) -> Path:
    """The file to edit: --config / PUNIE_CONFIG, else punie.toml here or in a parent.

    With ``create`` (for `new`) a missing file means ./punie.toml (or the --config path).
    """
    state = state_of(ctx)
    if create and state.config and not Path(state.config).exists():
        return Path(state.config)
    found = find_config(state.config)
    if found is not None:
        return found
    if create:
        return Path.cwd() / CONFIG_NAME
    raise ConfigError(
        f"no {CONFIG_NAME} found in {Path.cwd()} or any parent directory",
        hint="create one with `punie profiles new NAME`, or name one with --config FILE",
    )


def _done(path: Path, message: str) -> None:
    click.echo(f"{_shown(path)}: {message}", err=True)


def _shown(path: Path) -> str:
    try:
        return str(path.absolute().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _edit(ctx: click.Context, fn: Callable[[str], str], message: str, *, create: bool = False) -> None:
    path = _config_path(ctx, create=create)
    seen: list[str] = []

    def edit(text: str) -> str:
        seen.append(text)  # what the edit saw, under the lock: no race with other writers
        return fn(text)

    after = apply_edit(path, edit, create=create)
    _done(path, message if not seen or after != seen[0] else "nothing changed")


def attach(group: click.Group) -> None:
    """Add the editing subcommands to the `punie profiles` group."""
    for command in (new_command, set_command, unset_command, rename_command, rm_command, edit_command):
        group.add_command(command)


@click.command("new")
@click.argument("name")
@click.option("--from", "from_", metavar="OTHER", help="Start as a copy of profile OTHER (on a port of its own).")
@click.option(
    "--set",
    "values",
    metavar="KEY=VALUE",
    multiple=True,
    help="Set KEY of the new profile (repeatable); --set server.port=N keeps the port of your choice.",
)
@click.pass_context
def new_command(ctx: click.Context, name: str, from_: str | None, values: tuple[str, ...]) -> None:
    """Add profile NAME to punie.toml (empty, or a copy of OTHER).

    A copy gets the first port above OTHER's that no other profile uses, unless
    --set server.port=N is given. Creates ./punie.toml when there is none.
    """
    pairs = [_pair(text) for text in values]
    what = f"added profile {name}" + (f" (copy of {from_})" if from_ else "")
    _edit(ctx, lambda text: create_profile(text, name, from_, pairs), what, create=True)


def _pair(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"expected KEY=VALUE, not {text!r}", where="--set", hint="e.g. --set server.port=8090")
    return key.strip(), parse_value(raw)


@click.command("set")
@click.argument("name")
@click.argument("key")
@click.argument("value")
@click.pass_context
def set_command(ctx: click.Context, name: str, key: str, value: str) -> None:
    """Set KEY (e.g. server.port) of profile NAME to VALUE.

    VALUE is read as TOML when it is TOML (8081, true, 0.7, '["a", "b"]',
    '"quoted"'), else as text (builtin:smollm2-135m-instruct).
    """
    parsed = parse_value(value)
    _edit(ctx, lambda text: set_value(text, name, key, parsed), f"profiles.{name}.{key} = {_toml(parsed)}")


@click.command("unset")
@click.argument("name")
@click.argument("key")
@click.pass_context
def unset_command(ctx: click.Context, name: str, key: str) -> None:
    """Remove KEY from profile NAME (it falls back to [defaults], extends or the built-in default)."""
    _edit(ctx, lambda text: unset_value(text, name, key), f"removed profiles.{name}.{key}")


@click.command("rename")
@click.argument("old")
@click.argument("new")
@click.pass_context
def rename_command(ctx: click.Context, old: str, new: str) -> None:
    """Rename profile OLD to NEW (extends and default_profile that name it follow)."""
    _edit(ctx, lambda text: rename_profile(text, old, new), f"renamed profile {old} to {new}")


@click.command("rm")
@click.argument("name")
@click.option("--cascade", is_flag=True, help="Also remove the profiles that extend NAME (directly or not).")
@click.option(
    "--force",
    is_flag=True,
    help="Keep the profiles that extend NAME working: copy NAME's values into them and point their "
    "extends at NAME's parent; also drop a default_profile that names a removed profile.",
)
@click.pass_context
def rm_command(ctx: click.Context, name: str, cascade: bool, force: bool) -> None:
    """Remove profile NAME; refused while other profiles extend it (named in the error)
    unless --cascade or --force, so the file never keeps a broken extends."""
    gone: list[str] = []
    repointed: list[str] = []

    def remove(text: str) -> str:
        gone[:] = dependants(text, name) if cascade else []
        repointed[:] = dependants(text, name, direct=True) if force and not cascade else []
        return remove_profile(text, name, force=force, cascade=cascade)

    path = _config_path(ctx)
    apply_edit(path, remove)
    extra = f" and {', '.join(gone)} (extending it)" if gone else ""
    if repointed:
        extra += f"; {', '.join(repointed)} now hold{'s' if len(repointed) == 1 else ''} the values inherited from it"
    _done(path, f"removed profile {name}{extra}")


@click.command("edit")
@click.argument("name")
@click.pass_context
def edit_command(ctx: click.Context, name: str) -> None:
    """Open profile NAME in $VISUAL / $EDITOR; the edit is checked before it is saved.

    On an error the reason is shown and you can edit again (the file is not
    changed until the profile is valid).
    """
    path = _config_path(ctx)
    original = profile_snippet(path.read_text(encoding="utf-8"), name)
    current = original
    while True:
        edited = click.edit(current, extension=".toml", require_save=False)
        if edited is None or edited == original:
            _done(path, f"profile {name}: no changes")
            return
        try:
            apply_edit(path, lambda text, edited=edited: replace_profile(text, name, edited))
        except ConfigError as exc:
            print_error(exc)
            if not _ask_again():
                _done(path, "not changed")
                ctx.exit(exc.exit_code)
            current = edited
            continue
        _done(path, f"updated profile {name}")
        return


def _ask_again() -> bool:
    try:
        return click.confirm("Edit again?", default=True, err=True)
    except click.Abort:  # no one to answer (end of input): keep the file as it is
        return False


def _toml(value: object) -> str:
    from punie.cli._common import toml_value

    return toml_value(value)
