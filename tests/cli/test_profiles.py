"""`punie profiles`, `punie profiles show` and `punie schema` through the real CLI group."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from punie.cli import main
from punie.cli.profiles import profiles_group
from punie.config.schema import schema_text

FILE = """\
#:schema ./schemas/punie.schema.json
default_profile = "demo"

[defaults.agent.permissions]
run_command = "deny"

[profiles.demo]
description = "the demo"
model = "builtin:smollm2-135m-instruct"

[profiles.tool]
model = "org/coder"
adapter = "adapters/tool-v1"
server.port = 8081

[profiles.mix]
extends = "tool"
adapters = ["a", { path = "b", weight = 0.5 }]
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "punie.toml").write_text(FILE, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run(*args: str, env: dict[str, str] | None = None) -> click.testing.Result:
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_profiles_lists_name_model_adapter_port_description(project: Path) -> None:
    result = run("profiles")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "# punie.toml"
    assert lines[1].split() == ["NAME", "MODEL", "ADAPTER", "PORT", "DESCRIPTION"]
    assert lines[2].split() == ["*", "demo", "builtin:smollm2-135m-instruct", "-", "8080", "the", "demo"]
    assert lines[3].split() == ["tool", "org/coder", "adapters/tool-v1", "8081"]
    assert lines[4].split() == ["mix", "org/coder", "a", "+", "b*0.5", "8081"]


def test_profiles_json_and_overrides(project: Path) -> None:
    result = run("--set", "server.port=9001", "profiles", "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["default"] == "demo"
    assert data["config_path"] == str(project / "punie.toml")
    assert [p["name"] for p in data["profiles"]] == ["demo", "tool", "mix"]
    assert {p["port"] for p in data["profiles"]} == {9001}
    assert data["profiles"][2]["adapters"] == [{"path": "a", "weight": 1.0}, {"path": "b", "weight": 0.5}]


def test_adapter_and_adapters_in_one_table_is_a_config_error(project: Path) -> None:
    (project / "punie.toml").write_text(FILE.replace("adapters = [", 'adapter = "x"\nadapters = ['), encoding="utf-8")
    result = run("profiles")
    assert result.exit_code == 2
    assert result.stderr.startswith("punie: error: punie.toml:16: profiles.mix: set either 'adapter' or 'adapters'")
    assert "Traceback" not in result.output


def test_show_prints_values_and_sources(project: Path) -> None:
    result = run("--set", "agent.max_turns=5", "profiles", "show", "tool", env={"PUNIE_SERVER__HOST": "::1"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"profile tool  ({project / 'punie.toml'})"
    assert lines[1].split() == ["KEY", "SOURCE", "VALUE"]
    rows = {line.split()[0]: line for line in lines[2:]}
    assert rows["model"].split() == ["model", "file", '"org/coder"']
    assert rows["server.port"].split() == ["server.port", "file", "8081"]
    assert rows["server.host"].split() == ["server.host", "env", '"::1"']
    assert rows["agent.max_turns"].split() == ["agent.max_turns", "cli", "5"]
    assert rows["agent.permissions.run_command"].split() == ["agent.permissions.run_command", "file", "(defaults)",
                                                             '"deny"']
    assert rows["server.temperature"].split() == ["server.temperature", "default", "(not", "set)"]


def test_show_json_with_local_set_after_global_set(project: Path) -> None:
    result = run("--set", "server.port=9001", "profiles", "show", "mix", "--set", "server.port=9002",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["name"] == "mix"
    assert data["profile"]["server"]["port"] == 9002
    assert data["sources"]["server.port"] == "cli"
    assert data["sources"]["model"] == "file (extends tool)"
    assert data["sources"]["adapter"] == "default" and data["profile"]["adapter"] is None


def test_show_without_name_uses_the_default(project: Path) -> None:
    assert run("profiles", "show").stdout.startswith("profile demo ")
    assert run("profiles", "show", env={"PUNIE_PROFILE": "tool"}).stdout.startswith("profile tool ")


def test_unknown_profile_exits_2_with_did_you_mean(project: Path) -> None:
    result = run("profiles", "show", "dmo")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("punie: error: punie.toml: unknown profile 'dmo', did you mean 'demo'?")


def test_bad_file_and_bad_set_exit_2_without_traceback(project: Path) -> None:
    (project / "punie.toml").write_text('[profiles.demo]\nmodel = "m"\nserver.port = 99999\n', encoding="utf-8")
    result = run("profiles")
    assert result.exit_code == 2
    assert result.stderr == (
        "punie: error: punie.toml:3: profiles.demo.server.port: Input should be less than or equal to 65535\n"
    )
    (project / "punie.toml").write_text('[profiles.demo]\nmodel = "m"\n', encoding="utf-8")
    result = run("profiles", "show", "--set", "server.prot=1")
    assert result.exit_code == 2
    assert result.stderr.startswith("punie: error: --set server.prot=1: unknown key 'server.prot', did you mean")


def test_missing_config_file_exits_2(project: Path) -> None:
    result = run("--config", "nope.toml", "profiles")
    assert result.exit_code == 2
    assert "profiles file not found: nope.toml" in result.stderr
    result = run("profiles", env={"PUNIE_CONFIG": "other.toml"})
    assert result.exit_code == 2 and "profiles file not found: other.toml" in result.stderr


def test_config_option_and_env_choose_the_file(project: Path) -> None:
    (project / "other.toml").write_text('[profiles.elsewhere]\nmodel = "m"\n', encoding="utf-8")
    assert "elsewhere" in run("--config", "other.toml", "profiles").stdout
    assert "elsewhere" in run("profiles", env={"PUNIE_CONFIG": "other.toml"}).stdout


def test_embedded_default_without_any_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("profiles")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == "# <built-in punie.toml>"
    assert "builtin:smollm2-135m-instruct" in result.stdout
    shown = run("profiles", "show")
    assert shown.exit_code == 0 and shown.stdout.startswith("profile demo  (<built-in punie.toml>)")


def test_schema_prints_writes_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    printed = run("schema")
    assert printed.exit_code == 0 and printed.stdout == schema_text()
    missing = run("schema", "--check")
    assert missing.exit_code == 1 and "schemas/punie.schema.json: missing" in missing.stderr
    written = run("schema", "--output", "schemas/punie.schema.json")
    assert written.exit_code == 0
    assert (tmp_path / "schemas" / "punie.schema.json").read_text(encoding="utf-8") == schema_text()
    assert run("schema", "--check").exit_code == 0
    (tmp_path / "schemas" / "punie.schema.json").write_text("{}\n", encoding="utf-8")
    stale = run("schema", "--check")
    assert stale.exit_code == 1 and "stale" in stale.stderr


def test_other_modules_can_attach_subcommands() -> None:
    assert isinstance(profiles_group, click.Group)
    assert "show" in profiles_group.commands
    assert main.commands["profiles"] is profiles_group
    assert "schema" in main.commands
