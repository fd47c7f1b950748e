"""TAB completion's light reader (punie.cli.fastcomplete) against click's whole CLI: the same slots,
the same answers, and none of the CLI's heavy imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.shell_completion import get_completion_class

from punie.cli import main
from punie.cli._common import complete_adapters, complete_profiles
from punie.cli.fastcomplete import ADAPTERS_DIR, CONFIG_NAME, SLOTS, answer

PROFILES = ("alpha", "beta", "b2", "dotted.name")
TOML = "".join(f'[profiles."{name}"]\nmodel = "m"\n' for name in PROFILES)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    (root / "sub").mkdir(parents=True)
    (root / CONFIG_NAME).write_text(TOML)
    for name in ("tool-v1", "tool-v2", "other"):
        (root / ADAPTERS_DIR / name).mkdir(parents=True)
        (root / ADAPTERS_DIR / name / "adapter_config.json").write_text("{}")
    (root / ADAPTERS_DIR / "no-config").mkdir()
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text('[profiles.far]\nmodel = "m"\n[profiles.farther]\nmodel = "m"\n')
    monkeypatch.chdir(root / "sub")  # the file is found from a subfolder, as click's path does
    monkeypatch.delenv("PUNIE_CONFIG", raising=False)
    return root


def _walk(group: click.Group, ctx: click.Context, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], dict[str, str]]:
    found: dict[tuple[str, ...], dict[str, str]] = {}
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        if isinstance(command, click.Group):
            found |= _walk(command, click.Context(command, info_name=name, parent=ctx), (*path, name))
            continue
        slots = {}
        positional = [p for p in command.params if isinstance(p, click.Argument)]
        for param in command.params:
            kind = {complete_profiles: "profiles", complete_adapters: "adapters"}.get(param._custom_shell_complete)
            if kind is None:
                continue
            if isinstance(param, click.Argument):
                slot = "ARGS" if param.nargs == -1 else "ARG"
                if positional.index(param) > 0:
                    slot = f"ARG{positional.index(param) + 1}"
            else:
                slot = "|".join(param.opts + param.secondary_opts)
            slots[slot] = kind
        if slots:
            found[(*path, name)] = slots
    return found


def test_the_light_slots_are_the_clis_name_completing_parameters() -> None:
    cli = _walk(main, click.Context(main, info_name="punie"))
    # A positional after the first (ide's PROFILE) is left to click: the light table lists the command empty.
    light_view = {path: {k: v for k, v in slots.items() if not k.startswith("ARG") or k in ("ARG", "ARGS")}
                  for path, slots in cli.items()}
    assert {p: s for p, s in SLOTS.items()} == light_view


def _click_answer(shell: str, environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> str:
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    cls = get_completion_class(shell)
    assert cls is not None
    return cls(main, {}, "punie", "_PUNIE_COMPLETE").complete()


LINES = [  # (the command line before the cursor, the word being completed)
    ("punie up", ""), ("punie up", "b"), ("punie up", "z"), ("punie check", ""), ("punie check alpha", "b"),
    ("punie profiles show", "al"), ("punie ask 'a question' -p", ""), ("punie ask --profile", "be"),
    ("punie serve --adapter", "tool"), ("punie serve -a", ""), ("punie serve --model m -p", "d"),
    ("punie adapters compose", ""), ("punie adapters compose tool-v1", "o"), ("punie train", ""),
    ("punie eval", "alp"), ("punie eval alpha --vs", ""), ("punie -v up", ""),
    ("punie --config ../../elsewhere.toml up", "f"), ("punie --config=../../elsewhere.toml eval", ""),
    ("punie --set server.port=9 up", "a"),
]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
@pytest.mark.parametrize(("line", "word"), LINES)
def test_the_light_answers_are_clicks_answers(project: Path, monkeypatch: pytest.MonkeyPatch, shell: str,
                                              line: str, word: str) -> None:
    words = f"{line} {word}"
    if shell == "fish":
        environ = {"COMP_WORDS": words, "COMP_CWORD": word}
    else:
        environ = {"COMP_WORDS": words, "COMP_CWORD": str(len(line.split()) if "'" not in line else 4)}
    light = answer({**environ, "_PUNIE_COMPLETE": f"{shell}_complete"})
    assert light is not None, (shell, line, word)  # every line here is the light reader's to answer
    assert light == _click_answer(shell, environ, monkeypatch)
    if word == "z":
        assert light == ""  # nothing starts with it
    elif "elsewhere" not in line:
        assert light  # names were offered (not both empty)
    if word == "b":
        assert light.splitlines()[-2:] == ["plain,beta", "plain,b2"] if shell != "zsh" else "beta" in light


@pytest.mark.parametrize(("line", "word"), [
    ("punie", "u"), ("punie up", "--"), ("punie up alpha", ""), ("punie ide zed", ""), ("punie up --format", ""),
    ("punie up --format json", ""), ("punie --config", ""), ("punie --config nowhere.toml up", ""),
    ("punie profiles", ""), ("punie nosuch", ""),
])
def test_other_words_are_left_to_click(project: Path, line: str, word: str) -> None:
    environ = {"COMP_WORDS": f"{line} {word}", "COMP_CWORD": str(len(line.split())), "_PUNIE_COMPLETE": "bash_complete"}
    assert answer(environ) is None


def test_no_profiles_file_is_left_to_click_and_its_built_in_profiles(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PUNIE_CONFIG", raising=False)
    environ = {"COMP_WORDS": "punie up ", "COMP_CWORD": "2"}
    assert answer({**environ, "_PUNIE_COMPLETE": "bash_complete"}) is None
    assert "plain,demo" in _click_answer("bash", environ, monkeypatch)


def test_the_light_path_imports_neither_click_nor_pydantic(project: Path) -> None:
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print('HEAVY', sorted({m.split('.')[0] for m in sys.modules} & "
             "{'click', 'pydantic', 'pydantic_core', 'anyio', 'httpx', 'tomlkit', 'numpy'}), file=sys.stderr))\n"
             "import punie.cli\n")
    env = {**os.environ, "_PUNIE_COMPLETE": "bash_complete", "COMP_WORDS": "punie up ", "COMP_CWORD": "2"}
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"plain,{name}" for name in PROFILES]
    assert "HEAVY []" in proc.stderr, proc.stderr
    # and through the console entry's path (python -m punie) the same answer
    proc = subprocess.run([sys.executable, "-m", "punie"], env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0 and proc.stdout.splitlines() == [f"plain,{name}" for name in PROFILES]


def test_the_light_readers_names_are_the_cores() -> None:
    from punie.adapters.files import ADAPTERS_DIR as CORE_ADAPTERS_DIR
    from punie.config.loader import CONFIG_NAME as CORE_CONFIG_NAME

    assert (CONFIG_NAME, ADAPTERS_DIR) == (CORE_CONFIG_NAME, CORE_ADAPTERS_DIR)
