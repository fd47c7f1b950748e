"""CLI: `punie completion bash|zsh|fish`: click's shell completion, with profile and adapter names.

    eval "$(punie completion bash)"          # ~/.bashrc
    eval "$(punie completion zsh)"           # ~/.zshrc
    punie completion fish > ~/.config/fish/completions/punie.fish

The script calls punie back with _PUNIE_COMPLETE set; click then completes commands and
options, and `complete_profiles` / `complete_adapters` read the profiles file to offer names.
"""

from __future__ import annotations

import click

from punie.cli.fastcomplete import COMPLETE_VAR


@click.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish); install it as below.

    \b
    bash:  eval "$(punie completion bash)"     (in ~/.bashrc)
    zsh:   eval "$(punie completion zsh)"      (in ~/.zshrc)
    fish:  punie completion fish > ~/.config/fish/completions/punie.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # the Choice above names only shells click supports
    root = click.get_current_context().find_root().command
    click.echo(cls(root, {}, "punie", COMPLETE_VAR).source())


def register(group: click.Group) -> None:
    """Add `punie completion` to the top-level group."""
    group.add_command(completion_command)
