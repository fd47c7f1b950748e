"""Every command of the README is run by a test (issue 24, "a README that runs as written").

The README holds two kinds of commands:

- **commands to type** (``console`` blocks' ``$`` lines, ``bash`` blocks): each is run here as
  written (in a copy of the project, with a private HOME), or, where running it takes a server
  and minutes, is listed in ``COVERED`` with the test that runs it, which must exist;
- **mentions** (inline ```punie ...``` spans, the command table's synopses): each names a real
  command, and every option it names exists on that command (asked of the CLI itself); a
  synopsis with its placeholders filled in parses as a command line. Benchmarks and scripts
  named exist and accept the options named.

A new command in the README that no rule covers fails
`test_every_command_to_type_is_run_or_covered`: add it to ``RUN`` or ``COVERED``.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from tests.support.ports import free_port
from tests.support.tmux import Tmux, private_tmux, wait_gone

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"

_PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z_]*|\.\.\.|local:URL)$")


def _strip_comment(line: str) -> str:
    return re.split(r"\s+#\s", line, maxsplit=1)[0].strip()


def commands_to_type(text: str | None = None) -> list[str]:
    """The commands a reader types: ``$`` lines of ``console`` blocks and the lines of ``bash`` blocks."""
    text = README.read_text(encoding="utf-8") if text is None else text
    found: list[str] = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", text, re.S):
        for line in body.splitlines():
            if lang == "console" and line.startswith("$ "):
                found.append(_strip_comment(line[2:]))
            elif lang == "bash" and line.strip() and not line.lstrip().startswith("#"):
                found.append(_strip_comment(line))
    return list(dict.fromkeys(found))


def mentions(text: str | None = None) -> list[str]:
    """Inline code spans outside code blocks that are commands (punie, a bench, a script)."""
    text = README.read_text(encoding="utf-8") if text is None else text
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    pattern = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:punie |(?:\.venv/bin/)?python bench/|bash scripts/)")
    return list(dict.fromkeys(s.replace("\\|", "|") for s in spans if pattern.match(s)))


# ---------------------------------------------------------------------------------------------- mentions


def _cli() -> click.Group:
    from punie.cli import main

    return main


def _resolve(words: list[str]) -> tuple[list[click.Command], list[str]]:
    """The chain of commands ``words`` names (top group first) and the words after it."""
    cli = _cli()
    chain: list[click.Command] = [cli]
    ctx = click.Context(cli, info_name="punie")
    rest = list(words)
    while rest and isinstance(chain[-1], click.Group):
        word = rest[0]
        if word.startswith("-"):
            option = _option(chain[-1], word)
            assert option is not None, f"punie: no option {word}"
            rest = rest[1 + (0 if option.is_flag or option.count else 1):]
            continue
        group = chain[-1]
        assert isinstance(group, click.Group)
        names = word.split("/")  # `profiles new/set/unset`: each must exist
        sub = None
        for name in names:
            sub = group.get_command(ctx, name)
            assert sub is not None, f"punie {' '.join(c.name or '' for c in chain[1:])} has no command {name!r}"
        if len(names) > 1:
            return [*chain, sub], []  # a list of siblings: their options are not named
        chain.append(sub)
        rest = rest[1:]
    return chain, rest


def _option(command: click.Command, flag: str) -> click.Option | None:
    for param in command.params:
        if isinstance(param, click.Option) and flag in (*param.opts, *param.secondary_opts):
            return param
    return None


def _flags(words: list[str]) -> list[str]:
    return [re.sub(r"[=\]].*$", "", w.lstrip("[")) for w in words if w.lstrip("[").startswith("--")]


def check_mention(span: str) -> None:
    """Fail unless ``span`` names a real command and each option it names exists on it."""
    words = [w for w in re.split(r"\s+", span.strip()) if w]
    while words and re.match(r"^[A-Z_]+=", words[0]):  # PUNIE_X=... before the command
        words = words[1:]
    if words[0] == "punie":
        chain, rest = _resolve(_command_words(words[1:]))
        rest = words[1 + len(_command_words(words[1:])):]
        command = chain[-1]
        for flag in _flags(words[1:]):
            assert any(_option(c, flag) for c in chain), f"`{span}`: {command.name} has no option {flag}"
        if isinstance(command, click.Group) and not rest:
            return
        choices = [p for p in command.params if isinstance(p, click.Argument) and isinstance(p.type, click.Choice)]
        for word in rest:  # a choice argument spelled out (`completion bash|zsh|fish`, `ide zed|jetbrains`)
            for value in word.split("|"):
                if choices and not word.startswith(("-", "[", '"')) and not _PLACEHOLDER.match(value):
                    assert any(value in p.type.choices for p in choices), f"`{span}`: {value!r} is not a choice"
        return
    if words[0] == "bash":
        assert (REPO / words[1]).is_file(), f"`{span}`: no {words[1]}"
        return
    script = next(w for w in words if w.startswith("bench/"))
    path = REPO / script
    assert path.is_file(), f"`{span}`: no {script}"
    declared = set(re.findall(r"""add_argument\(\s*["'](--[\w-]+)""", path.read_text(encoding="utf-8")))
    for flag in _flags(words):
        assert flag in declared, f"`{span}`: {script} has no option {flag}"
    ast.parse(path.read_text(encoding="utf-8"))


def _command_words(words: list[str]) -> list[str]:
    """The words that select the command: up to the first argument, placeholder or bracket."""
    out: list[str] = []
    for word in words:
        if word.startswith("--"):
            # a global option before the command (`punie --config FILE check`) keeps its value
            if not out or not any(not w.startswith("-") for w in out):
                out.append(word)
                continue
            break
        if word.startswith(("[", '"', "-")) or _PLACEHOLDER.match(word) or "|" in word:
            break
        if out and out[-1].startswith("--"):
            out.append(word)  # the value of a global option
            continue
        out.append(word)
    return out


# ------------------------------------------------------------------------------------ commands to type

#: Commands to type that a test in this module runs as written (see the tests below).
RUN = {
    "punie check": "test_punie_check_passes_in_the_project",
    "punie --config examples/hub-coder.toml check": "test_the_hub_example_is_checked",
    "bash scripts/up.sh": "test_the_quick_start_runs_as_written",
    "source .venv/bin/activate": "test_source_activate_puts_punie_on_path",
}
#: Commands to type that take a real server or minutes: the test that runs them (it must exist).
COVERED = {
    "punie up tool-calling": "tests/launch/test_dense.py::test_tool_calling_canary_matches_through_punie_up_on_the_dense_copy",
    "bash scripts/test.sh": ".ci/run",
    "bash scripts/setup-vllm.sh": ".ci/run",
}


def test_every_command_to_type_is_run_or_covered() -> None:
    commands = commands_to_type()
    assert "bash scripts/up.sh" in commands and "punie check" in commands  # the extraction sees the README
    unknown = [c for c in commands if c not in RUN and c not in COVERED]
    assert not unknown, f"README commands no test runs (add them to RUN or COVERED): {unknown}"
    module = Path(__file__).read_text(encoding="utf-8")
    for command, test in RUN.items():
        assert f"def {test}(" in module, f"{command}: {test} is not in this module"
    ci = (REPO / ".ci/run").read_text(encoding="utf-8")
    for command, where in COVERED.items():
        if where == ".ci/run":
            assert re.search(rf"^{re.escape(command)}\b", ci, re.M), f"{command}: .ci/run does not run it"
            continue
        path, name = where.split("::")
        assert f"def {name}(" in (REPO / path).read_text(encoding="utf-8"), f"{command}: no test {where}"


def test_the_extraction_finds_commands_and_mentions() -> None:
    sample = ("Run `punie up NAME` or `python bench/x.py --y`, not `foo`.\n```console\n$ punie check   # all\n"
              "```\n```bash\n# comment\nbash scripts/up.sh   # go\n```\n```toml\nx = 1\n```\n")
    assert commands_to_type(sample) == ["punie check", "bash scripts/up.sh"]
    assert mentions(sample) == ["punie up NAME", "python bench/x.py --y"]


@pytest.mark.parametrize("span", mentions())
def test_each_mention_names_a_real_command_and_its_options(span: str) -> None:
    check_mention(span)


@pytest.mark.parametrize("bad", ["punie frobnicate", "punie up --no-such-flag", "punie adapters fuse --nope",
                                 "punie completion bash|tcsh", "python bench/first_answer.py --no-such",
                                 "bash scripts/nothing.sh", "punie profiles new/frob"])
def test_a_wrong_mention_is_caught(bad: str) -> None:
    with pytest.raises(AssertionError):
        check_mention(bad)


#: Values for a synopsis' placeholders, so that the filled-in line parses as a command line.
FILL = {"PROFILE": "demo", "NAME": "tool-calling-v1", "A": "tool-calling", "B": "demo", "P": "demo",
        "DIR": "out", "PEFT_DIR": "peft", "N": "4", "M": "model", "K": "2",
        "D": "float32", "DATE": "2026-01-01", "URL": "http://127.0.0.1:8080/v1", '"PROMPT"': "hello",
        "PROFILE...": "demo", "local:URL": "local:http://127.0.0.1:8080/v1"}


def fill(synopsis: str) -> list[str]:
    """A synopsis with its placeholders filled in, optional parts kept, the first of alternatives taken."""
    words: list[str] = []
    for word in synopsis.replace("[", " ").replace("]", " ").split():
        word = word.split("|")[0]
        words.append(FILL.get(word, word))
    return words[1:]


def _synopses() -> list[str]:
    text = README.read_text(encoding="utf-8")
    table = text.split("## Commands", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)`", table, re.M)
    lists = re.compile(r"^[a-z-]+(?:/[a-z-]+)+$")  # `profiles new/set/...`: several commands, no line to parse
    return [r.replace("\\|", "|") for r in rows if not any(lists.match(w) for w in r.split())]


def parse_only(args: list[str]) -> click.Context:
    """Parse ``punie ARGS`` as click would run it, down to the leaf command, without running anything."""
    ctx = _cli().make_context("punie", list(args))
    while isinstance(ctx.command, click.Group):
        rest = [*ctx._protected_args, *ctx.args]
        if not rest:
            break
        name, command, sub = ctx.command.resolve_command(ctx, rest)
        assert command is not None and name is not None
        ctx = command.make_context(name, sub, parent=ctx)
    return ctx


@pytest.mark.parametrize("synopsis", _synopses())
def test_each_synopsis_filled_in_parses(synopsis: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in ("out", "peft", "model"):  # click checks that path arguments exist
        (tmp_path / folder).mkdir()
    monkeypatch.chdir(tmp_path)
    args = fill(synopsis)
    try:
        ctx = parse_only(args)
    except click.UsageError as exc:
        pytest.fail(f"`{synopsis}` filled in as `punie {' '.join(args)}` does not parse: {exc.format_message()}")
    assert ctx.command.name == _resolve(_command_words(args))[0][-1].name


def test_a_synopsis_that_does_not_parse_is_caught() -> None:
    for bad in (["up", "demo", "extra"], ["eval", "--no-such"], ["adapters", "fuse", "--bits"]):
        with pytest.raises(click.UsageError):
            parse_only(bad)


# ------------------------------------------------------------------------------------------ runs


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what the README's commands read: punie.toml, its schema, the adapters, the examples."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy2(REPO / "punie.toml", root / "punie.toml")
    for name in ("schemas", "adapters", "examples"):
        shutil.copytree(REPO / name, root / name, symlinks=True)
    (root / ".venv").symlink_to(Path(sys.executable).resolve().parents[1] if not (REPO / ".venv").exists()
                                else REPO / ".venv")
    return root


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8", "HF_HUB_OFFLINE": "1", "MLX_DISABLE_COMPILE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PUNIE_CACHE_DIR": os.environ["PUNIE_CACHE_DIR"],
           "HF_HOME": os.environ["HF_HOME"]}
    return env | extra


def _punie(project: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(project / ".venv/bin/punie"), *args], cwd=project, env=env, capture_output=True,
                          text=True, timeout=300)


def test_punie_check_passes_in_the_project(project: Path, tmp_path: Path) -> None:
    """`punie check`: "every profile of punie.toml checked: exit 0" (the builtin model not yet fetched
    is said once and is no error)."""
    proc = _punie(project, "check", env=_env(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("demo", "tool-calling", "tool-calling-v1", "tool-calling-v2"):
        assert f"profile {name}" in proc.stdout, proc.stdout


def test_the_hub_example_is_checked(project: Path, tmp_path: Path) -> None:
    """`punie --config examples/hub-coder.toml check` runs and says what a fresh machine lacks: the
    hub model is not in the (empty) cache, which is a finding (exit 1) naming it, not a crash."""
    proc = _punie(project, "--config", "examples/hub-coder.toml", "check", env=_env(tmp_path))
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Qwen" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_source_activate_puts_punie_on_path(project: Path, tmp_path: Path) -> None:
    """`source .venv/bin/activate` then `punie` runs by name (the quick start's sentence)."""
    proc = subprocess.run(["bash", "-c", "source .venv/bin/activate && command -v punie && punie --version"],
                          cwd=project, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith("/bin/punie"), proc.stdout
    assert "version" in proc.stdout


def test_shell_completion_lines_work_as_written(project: Path, tmp_path: Path) -> None:
    """The completion lines of the README: bash's `eval "$(punie completion bash)"` installs a completion
    for `punie`; zsh's script is a zsh completion; fish's line writes a fish completion file."""
    env = _env(tmp_path, PATH=f"{project / '.venv/bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}")
    text = README.read_text(encoding="utf-8")
    assert 'eval "$(punie completion bash)"' in text and "punie completion fish > ~/.config/fish" in text
    bash = subprocess.run(["bash", "-c", 'eval "$(punie completion bash)" && complete -p punie'], cwd=project,
                          env=env, capture_output=True, text=True, timeout=120)
    assert bash.returncode == 0 and "punie" in bash.stdout, bash.stderr
    zsh = _punie(project, "completion", "zsh", env=env)
    assert zsh.returncode == 0 and "compdef" in zsh.stdout, zsh.stderr
    fish_dir = Path(env["HOME"]) / ".config/fish/completions"
    fish_dir.mkdir(parents=True)
    fish = subprocess.run(["bash", "-c", "punie completion fish > ~/.config/fish/completions/punie.fish"],
                          cwd=project, env=env, capture_output=True, text=True, timeout=120)
    assert fish.returncode == 0, fish.stderr
    assert "complete" in (fish_dir / "punie.fish").read_text() and "punie" in (fish_dir / "punie.fish").read_text()


# ------------------------------------------------------------------------------------- the quick start


@pytest.fixture
def term(tmp_path: Path) -> Iterator[Tmux]:
    with private_tmux(tmp_path) as tmux:
        yield tmux


@pytest.mark.slow
@pytest.mark.mlx
@pytest.mark.timeout(900)
def test_the_quick_start_runs_as_written(tmp_path: Path, term: Tmux) -> None:
    """`bash scripts/up.sh` in a terminal at the repository's root, as a new user runs it: setup (done
    already by the test command: it only re-checks), `punie up` on the default profile, "What is the
    capital of France?" answered with Paris, Ctrl-D quits with exit 0 and leaves no process.
    It runs in the repository itself (not a copy: setup.sh would install Punie from the copy into
    the shared .venv); the agent's history and logs go to the repository's ignored .punie/.
    The one change to the README's line: the port (8080 may be taken on a CI machine) comes from
    PUNIE_SERVER__PORT, as the README's profile section describes."""
    from punie.weights.builtin import ensure_builtin

    ensure_builtin("smollm2-135m-instruct")  # into this run's cache (a download on a fresh machine)
    env = _env(tmp_path, TERM="screen", PUNIE_SERVER__PORT=str(free_port()))
    stamp, pyproject = REPO / ".venv/.punie-installed", REPO / "pyproject.toml"
    if not stamp.exists() or pyproject.stat().st_mtime > stamp.stat().st_mtime:
        pytest.skip("scripts/setup.sh would (re)install Punie into .venv: run `bash scripts/setup.sh` first")
    pane = term.start(["bash", "scripts/up.sh"], env=env, cwd=REPO)
    term.wait_text(pane, r"^punie>", timeout=600)
    term.type(pane, "What is the capital of France?")
    term.send(pane, "Enter")
    term.wait_text(pane, r"Paris", timeout=240)
    term.wait_text(pane, r"^punie>\s*$", timeout=240)
    term.send(pane, "C-d")
    assert term.exit_status(pane, timeout=60) == 0, term.screen(pane)
    screen = term.screen(pane)
    assert "Traceback" not in screen, screen
    assert "source " in screen and ".venv/bin/activate" in screen, screen  # up.sh says how to get `punie`
    assert not wait_gone(term.token, timeout=120)
