"""CLI: `punie models pull|list|import-gguf`."""

from __future__ import annotations

import click

from punie.cli._common import echo_json, format_option, render_progress, table


def register(group: click.Group) -> None:
    """Add this module's commands to the top-level group."""

    @group.group("models")
    def models() -> None:
        """Builtin models and GGUF import."""

    @models.command("pull")
    @click.argument("name")
    def pull(name: str) -> None:
        """Provision builtin model NAME into Punie's cache (idempotent)."""
        from punie.api.models import ensure_builtin

        click.echo(str(ensure_builtin(name, progress=render_progress)))

    @models.command("list")
    @format_option()
    def list_(fmt: str) -> None:
        """List builtin models and whether they are provisioned."""
        from punie.api.models import builtin_models

        rows = [{"name": b.name, "provisioned": b.provisioned, "path": str(b.path), "description": b.description}
                for b in builtin_models()]
        if fmt == "json":
            echo_json(rows)
            return
        cells = [[r["name"], "provisioned" if r["provisioned"] else "not provisioned", r["path"], r["description"]]
                 for r in rows]
        for line in table(["name", "state", "path", "description"], cells):
            click.echo(line)

    @models.command("import-gguf")
    @click.argument("file", type=click.Path(dir_okay=False))
    @click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output model dir.")
    def import_gguf_cmd(file: str, out: str) -> None:
        """Convert a llama GGUF (Q4_0/Q4_1/Q8_0/F16/F32) into an mlx_lm model directory."""
        from punie.api.models import import_gguf

        click.echo(str(import_gguf(file, out)))
