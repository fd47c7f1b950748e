"""The calm terminal's CLI side (issue 24): one TOML error format for every reader, one table style,
`profiles show` per backend, help texts and exit codes that are true, one instance per profile and port."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from punie.cli import COMMANDS, main
from punie.config import load_profile
from punie.config.edit import set_value
from punie.errors import ConfigError
from punie.launch.instances import claim, refuse_running, running
from tests.support.launch_helpers import fake_plan

GOOD = '#:schema ./schemas/punie.schema.json\n[profiles.a]\nmodel = "m"\n'
#: Broken documents: (text, line, column) of the error tomllib reports.
BROKEN = [
    ('[profiles.a]\nmodel = "m"\n[profiles.b]\nmodel = [1, 2 x]\n', 4, 15),
    ('[profiles.a]\nmodel = "m"\nserver.port = \n', 3, 15),
    ('[profiles.a\nmodel = "m"\n', 1, 12),
    ('[profiles.a]\nmodel = "m"\nmodel = "n"\n', 3, 12),
    ('[profiles.a]\nmodel = "unclosed\n', 2, 18),  # the caret after the line's end: the newline
    ('[profiles.a]\nmodel = [1, 2\n', 2, None),  # at the end of the document: no column
]


def _shown(message: str) -> tuple[str, str, str]:
    """The message's first line without the file name, the quoted line and the caret line."""
    first, code, caret = message.splitlines()[:3]
    return re.sub(r"^.*?\.toml", "FILE", first), code, caret


@pytest.mark.parametrize(("text", "line", "col"), BROKEN)
def test_every_reader_says_a_toml_error_the_same_way_with_the_line_and_a_caret(
        tmp_path: Path, text: str, line: int, col: int | None) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as loaded:
        load_profile("a", config=str(path), env={})
    with pytest.raises(ConfigError) as edited:
        set_value(text, "a", "server.port", 8090)
    runner = CliRunner()
    checked = runner.invoke(main, ["--config", str(path), "check"])
    setting = runner.invoke(main, ["--config", str(path), "profiles", "set", "a", "server.port", "8090"])
    assert checked.exit_code == setting.exit_code == 2, (checked.output, setting.output)
    readers = [loaded.value.render(), edited.value.render(), checked.stderr.removeprefix("punie: error: "),
               setting.stderr.removeprefix("punie: error: ")]
    shown = {_shown(r) for r in readers}
    assert len(shown) == 1, readers  # one format, one position, one message
    first, code, caret = shown.pop()
    where = f"FILE:{line}" + (f":{col}" if col else "")
    assert first.startswith(f"{where}: invalid TOML: "), first
    assert code == "    " + text.splitlines()[line - 1]
    source = text.splitlines()[line - 1]
    assert caret == "    " + " " * ((col or len(source) + 1) - 1) + "^"
    assert path.read_text() == text  # the edit changed nothing


def test_the_edited_profile_error_names_the_snippet_and_shows_its_line(tmp_path: Path) -> None:
    from punie.config.edit.profiles import replace_profile

    with pytest.raises(ConfigError) as err:
        replace_profile(GOOD, "a", "[profiles.a]\nmodel = [1, 2 x]\n")
    assert err.value.render().splitlines() == [
        "edited profile:2:15: invalid TOML: Unclosed array", "    model = [1, 2 x]", "                  ^"]


def test_profiles_show_leaves_the_other_backends_keys_out_unless_all(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_text('[profiles.a]\nmodel = "m"\n[profiles.v]\nmodel = "m"\nserver.backend = "vllm"\n')
    runner = CliRunner()

    def keys(*args: str) -> list[str]:
        result = runner.invoke(main, ["--config", str(path), "profiles", "show", *args])
        assert result.exit_code == 0, result.output
        return [line.split()[0] for line in result.stdout.splitlines()[2:]]

    mlx, every, vllm = keys("a"), keys("a", "--all"), keys("v")
    assert not [k for k in mlx if k.startswith("server.vllm.")], mlx
    assert [k for k in every if k.startswith("server.vllm.")] and set(mlx) < set(every)
    assert [k for k in vllm if k.startswith("server.vllm.")]
    assert "server.port" in mlx and "server.port" in vllm


def test_every_table_has_one_style_uppercase_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PUNIE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "punie.toml"
    path.write_text(GOOD)
    adapter = tmp_path / "adapters" / "one"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"model": "m", "num_layers": 2, "lora_parameters": {"rank": 4}}')
    runner = CliRunner()
    for args in (["profiles"], ["profiles", "show", "a"], ["models", "list"], ["adapters", "list"]):
        result = runner.invoke(main, ["--config", str(path), *args])
        assert result.exit_code == 0, (args, result.output)
        lines = [line for line in result.stdout.splitlines() if not line.startswith(("#", "profile "))]
        header = lines[0]
        assert header == header.upper() and re.match(r"^\s*[A-Z]+(  +[A-Z ]+)+$", header), (args, header)
        assert len(lines) >= 2, (args, result.stdout)


def _every_command(group: click.Group, ctx: click.Context) -> list[tuple[str, click.Command]]:
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        found.append((f"{ctx.command_path} {name}", command))
        if isinstance(command, click.Group):
            found += _every_command(command, click.Context(command, info_name=name, parent=ctx))
    return found


def test_help_texts_have_no_raw_markup_and_completion_does_not_point_to_itself() -> None:
    ctx = click.Context(main, info_name="punie")
    commands = _every_command(main, ctx)
    assert {path.split()[1] for path, _ in commands} == set(COMMANDS)
    for path, command in commands:
        text = command.get_help(click.Context(command, info_name=path, parent=ctx))
        assert "``" not in text, (path, text)
        assert f"see `{path.removeprefix('punie ')} --help`" not in text and f"`{path} --help`" not in text, path


def test_up_help_says_the_exit_codes_that_up_returns(tmp_path: Path) -> None:
    help_text = CliRunner().invoke(main, ["up", "--help"]).output
    codes = dict(re.findall(r"^\s+(\d+)\s+(.*)$", help_text, re.M))
    assert set(codes) == {"0", "1", "2", "3", "130"}, help_text
    runner = CliRunner()

    def code(profile: str, text: str) -> int:
        path = tmp_path / "punie.toml"
        path.write_text(text)
        return runner.invoke(main, ["--config", str(path), "up", profile]).exit_code

    assert code("nosuch", GOOD) == 2  # unknown profile: the command line is wrong
    assert code("a", GOOD + 'server.port = "x"\n') == 2  # an invalid value in punie.toml
    assert code("a", GOOD + "[profiles.a\n") == 2  # invalid TOML
    assert code("a", GOOD + 'adapter = "adapters/missing"\n') == 1  # the check finds a missing adapter
    one, two = re.split(r"\n\s+2\s+", help_text.split("Options:")[0])
    assert "missing" in one.split("\n    1 ")[1] and "unknown profile" in two


# -- instances ----------------------------------------------------------------------------------


def test_a_second_instance_on_the_same_port_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path)
    with claim(plan) as first:
        assert first == plan  # the first instance keeps the plain log names
        other = subprocess.run(
            [sys.executable, "-c", "import sys, json; from punie.launch.instances import claim; "
             "from punie.launch.plan import LaunchPlan; "
             "plan = LaunchPlan.model_validate_json(sys.stdin.read())\n"
             "try:\n  with claim(plan): print('claimed')\nexcept Exception as e: print(e.render())"],
            input=plan.model_dump_json(), capture_output=True, text=True, timeout=60, env={**os.environ})
        assert re.match(rf"profile {plan.profile} is already running on port {plan.port} \(pid {os.getpid()}, "
                        r"since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\)", other.stdout), other
        refuse_running(plan.project_dir, plan.profile, plan.port)  # this process's own instance: no error
        assert [i.pid for i in running(plan.project_dir, plan.profile)] == [os.getpid()]
    assert running(plan.project_dir) == []  # the file is gone with the session


def test_a_second_instance_on_another_port_writes_its_own_logs(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path)
    moved = plan.model_copy(update={"port": plan.port + 1})
    code = ("import sys, time; from punie.launch.instances import claim; from punie.launch.plan import LaunchPlan\n"
            "plan = LaunchPlan.model_validate_json(sys.stdin.readline())\n"
            "with claim(plan) as mine:\n  print(mine.server_log, mine.agent_log, flush=True); sys.stdin.readline()\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(plan.model_dump_json() + "\n")
        proc.stdin.flush()
        first_logs = proc.stdout.readline().split()
        assert first_logs == [plan.server_log, plan.agent_log]
        with claim(moved) as second:
            logs = [second.server_log, second.agent_log]
            assert not set(logs) & set(first_logs)  # never the first instance's files
            assert [Path(x).name for x in logs] == [f"{plan.profile}@{moved.port}-server.log",
                                                   f"{plan.profile}@{moved.port}-agent.log"]
            assert sorted(i.port for i in running(plan.project_dir, plan.profile)) == [plan.port, moved.port]
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0
    finally:
        proc.kill()
        proc.wait()


def test_a_stale_instance_file_does_not_block(tmp_path: Path) -> None:
    plan = fake_plan(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = Path(plan.project_dir) / ".punie" / "run"
    run.mkdir(parents=True)
    (run / f"{plan.profile}.json").write_text(json.dumps(
        {"profile": plan.profile, "pid": dead.pid, "port": plan.port, "started": 0.0, "ticks": None}))
    assert running(plan.project_dir) == []
    refuse_running(plan.project_dir, plan.profile, plan.port)  # no error
    with claim(plan) as mine:
        assert mine == plan
        assert json.loads((run / f"{plan.profile}.json").read_text())["pid"] == os.getpid()
