"""CLI: `punie profiles` (list), `punie profiles show NAME`, `punie schema`.

The editing subcommands (new, set, rm...) are attached to ``profiles_group`` by
punie.cli from punie.cli.profiles_edit; this module does not import that one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from punie.cli._common import complete_profiles, echo_json, format_option, set_option, state_of, table, toml_value
from punie.config import EMBEDDED_NAME, list_profiles, load_profile
from punie.config.models import Profile, ResolvedProfile
from punie.config.resolve import LEAF_KEYS
from punie.config.schema import SCHEMA_RELPATH, check_schema, schema_text, write_schema

_FORMAT = format_option()
_SET = set_option()


def _leaf_value(profile: Profile, key: str) -> Any:
    value: Any = profile.model_dump(mode="json")
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _adapter_text(profile: Profile) -> str:
    if profile.adapter:
        return profile.adapter
    if profile.adapters:
        return " + ".join(
            ref.path if ref.weight == 1 else f"{ref.path}*{ref.weight:g}" for ref in profile.adapter_refs()
        )
    return "-"


def _origin(resolved: ResolvedProfile) -> str:
    return resolved.config_path or EMBEDDED_NAME


@click.group("profiles", invoke_without_command=True)
@_FORMAT
@_SET
@click.pass_context
def profiles_group(ctx: click.Context, fmt: str, overrides: tuple[str, ...]) -> None:
    """List the profiles of punie.toml: name, model, adapter, port, description.

    The profile marked * is the one used when none is named (PUNIE_PROFILE,
    else default_profile, else the only one).
    """
    if ctx.invoked_subcommand is not None:
        return
    state = state_of(ctx)
    listing = list_profiles(config=state.config, overrides=state.with_overrides(overrides))
    if fmt == "json":
        echo_json(
            {
                "config_path": listing.config_path,
                "default": listing.default,
                "profiles": [
                    {
                        "name": r.name,
                        "model": r.profile.model,
                        "adapter": r.profile.adapter,
                        "adapters": [ref.model_dump() for ref in r.profile.adapter_refs()],
                        "port": r.profile.server.port,
                        "url": r.profile.server.url,
                        "description": r.profile.description,
                    }
                    for r in listing.profiles
                ],
            }
        )
        return
    click.echo(f"# {listing.display}")
    if not listing.profiles:
        click.echo("(no profiles)")
        return
    rows = []
    for r in listing.profiles:
        p = r.profile
        rows.append(
            [
                "*" if r.name == listing.default else "",
                r.name,
                p.model or "-",
                _adapter_text(p),
                p.server.url or str(p.server.port),
                p.description or "",
            ]
        )
    for line in table(["", "NAME", "MODEL", "ADAPTER", "PORT", "DESCRIPTION"], rows):
        click.echo(line)


def shown_keys(backend: str, *, every: bool = False) -> list[str]:
    """The keys ``profiles show`` lists for a profile on ``backend``: not those only another backend
    reads (its ``key_prefixes``, `punie.launch.backends`), unless ``every``."""
    from punie.launch.backends import BACKENDS, backend_of

    own = backend_of(backend)
    other = [prefix for b in BACKENDS.values() if b is not own for prefix in b.key_prefixes]
    return [k for k in LEAF_KEYS if every or not k.startswith(tuple(other))]


@profiles_group.command("show")
@click.argument("name", required=False, shell_complete=complete_profiles)
@click.option("--all", "every", is_flag=True, help="Also list the keys only the other backend reads (server.vllm.*).")
@_FORMAT
@_SET
@click.pass_context
def show(ctx: click.Context, name: str | None, every: bool, fmt: str, overrides: tuple[str, ...]) -> None:
    """Print the fully resolved profile NAME and where each value came from.

    Sources: file, file (defaults), file (extends NAME), env (PUNIE_* variables),
    cli (--set) or default. Without NAME, the default profile is shown. The keys only
    another backend reads are left out unless --all is given.
    """
    state = state_of(ctx)
    resolved = load_profile(name, config=state.config, overrides=state.with_overrides(overrides))
    if fmt == "json":
        echo_json(
            {
                "name": resolved.name,
                "config_path": resolved.config_path,
                "profile": resolved.profile.model_dump(mode="json"),
                "sources": resolved.sources,
            }
        )
        return
    click.echo(f"profile {resolved.name}  ({_origin(resolved)})")
    rows = [[key, resolved.sources.get(key, "default"), toml_value(_leaf_value(resolved.profile, key))]
            for key in shown_keys(resolved.profile.server.backend, every=every)]
    for line in table(["KEY", "SOURCE", "VALUE"], rows):
        click.echo(line)


@click.command("schema")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False),
    help=f"Write the schema to this file (with --check: the file to compare; default {SCHEMA_RELPATH}).",
)
@click.option("--check", is_flag=True, help="Exit 1 when the schema file is missing or stale.")
def schema_command(output: str | None, check: bool) -> None:
    """Print the JSON schema of punie.toml, generated from Punie's models.

    Editors read it through the `#:schema ./schemas/punie.schema.json` line at
    the top of punie.toml (Taplo / Even Better TOML).
    """
    if check:
        target = Path(output) if output else SCHEMA_RELPATH
        check_schema(target)
        click.echo(f"{target} is up to date", err=True)
    elif output:
        click.echo(f"wrote {write_schema(output)}", err=True)
    else:
        click.echo(schema_text(), nl=False)


def register(group: click.Group) -> None:
    """Add `profiles` and `schema` to the top-level group."""
    group.add_command(profiles_group)
    group.add_command(schema_command)
