"""The CLI edge: one error printer, one --format option, shell completion, `punie ide`,
the message when no punie.toml is found, shared ports, quiet first-run provisioning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from punie.api.ide import agent_entry, merge_entry, strip_jsonc, write_settings
from punie.cli import COMMANDS, main

SRC = Path(__file__).resolve().parents[2] / "src" / "punie"

TWO_PROFILES = """\
[profiles.alpha]
model = "builtin:smollm2-135m-instruct"
server.port = 18123

[profiles.beta]
model = "builtin:smollm2-135m-instruct"
server.port = 18123

[profiles.gamma]
model = "builtin:smollm2-135m-instruct"
server.port = 18124
"""


def _all_commands() -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    ctx = click.Context(main)

    def walk(prefix: str, command: click.Command) -> None:
        found.append((prefix, command))
        if isinstance(command, click.Group):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                assert sub is not None, name
                walk(f"{prefix} {name}", sub)

    walk("punie", main)
    return found


def test_punie_error_is_written_in_one_place_only() -> None:
    from punie.errors import error_line

    places = sorted(p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
                    if "punie: error" in p.read_text(encoding="utf-8") or ": error: " in p.read_text(encoding="utf-8"))
    assert places == ["errors.py"]  # error_line; the CLI's print_error is its one printer
    assert error_line("boom") == "punie: error: boom"
    assert "print_error(" in (SRC / "cli" / "_common.py").read_text(encoding="utf-8")


def test_every_command_spells_json_output_as_format_json() -> None:
    commands = _all_commands()
    assert {name.split()[1] for name, _ in commands if " " in name} == set(COMMANDS)
    for name, command in commands:
        for param in command.params:
            if "--json" in getattr(param, "opts", []):
                assert getattr(param, "hidden", False), f"{name} shows --json: use format_option"
                assert any("--format" in getattr(p, "opts", []) for p in command.params), name


def test_json_is_a_deprecated_alias_of_format_json() -> None:
    result = CliRunner().invoke(main, ["models", "list", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["name"] == "builtin:smollm2-135m-instruct"
    assert "--json is deprecated, use --format json" in result.stderr
    assert json.loads(CliRunner().invoke(main, ["models", "list", "--format", "json"]).stdout) == json.loads(
        result.stdout)


def test_no_punie_toml_says_so_and_names_config_and_punie_config(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PUNIE_CONFIG"}
    proc = subprocess.run([sys.executable, "-m", "punie", "up", "demo-tools"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert f"no punie.toml found in {tmp_path} or its parents" in proc.stderr
    assert "--config FILE or PUNIE_CONFIG" in proc.stderr
    assert "unknown profile" not in proc.stderr
    assert proc.stderr.startswith("punie: error: ") and "Traceback" not in proc.stderr


def test_check_warns_when_two_profiles_share_a_port(tmp_path: Path) -> None:
    config = tmp_path / "punie.toml"
    config.write_text(TWO_PROFILES)
    result = CliRunner().invoke(main, ["--config", str(config), "check", "--format", "json"])
    report = json.loads(result.stdout)
    shared = {p["profile"]: p for p in (q for prof in report["profiles"] for q in prof["problems"])
              if p["code"] == "shared-port"}
    assert set(shared) == {"alpha", "beta"}
    assert shared["alpha"]["severity"] == "warning" and "profile beta" in shared["alpha"]["message"]
    assert shared["alpha"]["where"] == "punie.toml:3: profiles.alpha.server.port"
    # Checking one of them alone has nobody to collide with.
    alone = CliRunner().invoke(main, ["--config", str(config), "check", "alpha", "--format", "json"])
    assert "shared-port" not in alone.stdout


def _complete(args: str, cwd: Path, extra_env: dict[str, str] | None = None) -> list[str]:
    words = f"punie {args}"
    env = {**os.environ, "_PUNIE_COMPLETE": "bash_complete", "COMP_WORDS": words,
           "COMP_CWORD": str(len(words.split()) - (0 if words.endswith(" ") else 1)), **(extra_env or {})}
    env.pop("PUNIE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "punie"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    return [line.split(",", 1)[1] for line in proc.stdout.splitlines() if line]


@pytest.mark.slow
def test_shell_completion_offers_profile_and_adapter_names(tmp_path: Path) -> None:
    (tmp_path / "punie.toml").write_text(TWO_PROFILES)
    for name in ("tools-v1", "tools-v2"):
        (tmp_path / "adapters" / name).mkdir(parents=True)
        (tmp_path / "adapters" / name / "adapter_config.json").write_text("{}")
    (tmp_path / "adapters" / "not-an-adapter").mkdir()
    assert _complete("up ", tmp_path) == ["alpha", "beta", "gamma"]
    assert _complete("check al", tmp_path) == ["alpha"]
    assert _complete("eval alpha --vs g", tmp_path) == ["gamma"]
    assert _complete("adapters compose to", tmp_path) == ["tools-v1", "tools-v2"]
    assert _complete("serve --model m --adapter ", tmp_path) == ["tools-v1", "tools-v2", "latest", "best"]
    # --config names another file: its profiles are offered.
    other = tmp_path / "other.toml"
    other.write_text('[profiles.zeta]\nmodel = "m"\n')
    assert _complete(f"--config {other} up ", tmp_path) == ["zeta"]
    # A broken file offers nothing rather than a traceback.
    (tmp_path / "punie.toml").write_text("[profiles.x\n")
    assert _complete("up ", tmp_path) == []


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_the_shells_script(shell: str) -> None:
    result = CliRunner().invoke(main, ["completion", shell])
    assert result.exit_code == 0
    assert "_PUNIE_COMPLETE" in result.stdout and f"{shell}_complete" in result.stdout


def test_ide_entry_is_absolute(tmp_path: Path) -> None:
    config = tmp_path / "punie.toml"
    config.write_text(TWO_PROFILES)
    result = CliRunner().invoke(main, ["--config", str(config), "ide", "zed", "alpha"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["agent_servers"]["Punie"]
    assert Path(entry["command"]).is_absolute() and os.access(entry["command"], os.X_OK)
    assert entry["args"][-4:] == ["--config", str(config), "up", "alpha"]
    assert entry["type"] == "custom" and entry["env"] == {}
    assert "type" not in agent_entry("jetbrains", config, None)
    # The command really is this Punie: it resolves the profile from any directory.
    dry = subprocess.run([entry["command"], *entry["args"][:-2], "profiles", "show", "alpha", "--format", "json"],
                         cwd="/", capture_output=True, text=True, timeout=180)
    assert json.loads(dry.stdout)["profile"]["server"]["port"] == 18123
    unknown = CliRunner().invoke(main, ["--config", str(config), "ide", "zed", "nope"])
    assert unknown.exit_code == 2 and "unknown profile 'nope'" in unknown.stderr


def test_ide_write_merges_and_keeps_every_other_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = home / ".config" / "zed" / "settings.json"
    settings.parent.mkdir(parents=True)
    original = """// Zed settings
{
  "theme": "One Dark", // a comment with "quotes" and a // inside
  /* block */ "url": "http://x//y",
  "agent_servers": {"Other": {"command": "other", "args": [],},},
}
"""
    settings.write_text(original)
    config = tmp_path / "punie.toml"
    config.write_text(TWO_PROFILES)
    env = {**os.environ, "HOME": str(home)}
    env.pop("XDG_CONFIG_HOME", None)
    result = CliRunner(env=env).invoke(main, ["--config", str(config), "ide", "zed", "beta", "--write"])
    assert result.exit_code == 0, result.output
    data = json.loads(settings.read_text())
    assert data["theme"] == "One Dark" and data["url"] == "http://x//y"
    assert data["agent_servers"]["Other"] == {"command": "other", "args": []}
    assert data["agent_servers"]["Punie"]["args"][-2:] == ["up", "beta"]
    assert (settings.parent / "settings.json.punie-backup").read_text() == original  # comments kept there
    # JetBrains: no file yet.
    result = CliRunner(env=env).invoke(main, ["--config", str(config), "ide", "jetbrains", "--write"])
    assert result.exit_code == 0, result.output
    acp = json.loads((home / ".jetbrains" / "acp.json").read_text())
    assert acp["agent_servers"]["Punie"]["args"][-1] == "up"


def test_ide_write_refuses_a_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "acp.json"
    path.write_text("{ not json")
    with pytest.raises(Exception, match="not JSON"):
        write_settings(path, {"command": "x"})
    assert path.read_text() == "{ not json"


def test_strip_jsonc_keeps_strings_intact() -> None:
    text = '{"a": "// no", "b": "/* no */", "c": "\\"//\\"", /* x */ "d": [1, 2,], // end\n}'
    assert json.loads(strip_jsonc(text)) == {"a": "// no", "b": "/* no */", "c": '"//"', "d": [1, 2]}
    assert merge_entry(None, {"command": "p"}) == {"agent_servers": {"Punie": {"command": "p"}}}


@pytest.mark.slow
def test_first_run_provisioning_is_info_and_said_once(tmp_path: Path) -> None:
    """`punie up` on a builtin model that is not provisioned yet: no WARNING, one INFO line (-v)."""
    config = tmp_path / "punie.toml"
    config.write_text('[profiles.demo]\nmodel = "builtin:smollm2-135m-instruct"\n')
    env = {**os.environ, "PUNIE_CACHE_DIR": str(tmp_path / "empty-cache")}
    quiet = subprocess.run([sys.executable, "-m", "punie", "--config", str(config), "up", "--dry-run"],
                           env=env, capture_output=True, text=True, timeout=180)
    assert quiet.returncode == 0, quiet.stderr
    assert "WARNING" not in quiet.stderr
    loud = subprocess.run([sys.executable, "-m", "punie", "-v", "--config", str(config), "up", "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert "WARNING" not in loud.stderr
    lines = [line for line in loud.stderr.splitlines() if "not provisioned" in line or "provisioning" in line]
    assert len(lines) == 1 and lines[0].startswith("punie: INFO: "), loud.stderr


@pytest.mark.slow
def test_check_and_dry_run_do_not_import_pydantic_settings_or_asyncio(tmp_path: Path) -> None:
    """The start-up every `punie up` and CI check pays: pydantic-settings (which imports asyncio)
    is loaded only when a PUNIE_ profile variable or --set gives it something to read."""
    config = tmp_path / "punie.toml"
    config.write_text('[profiles.demo]\nmodel = "builtin:smollm2-135m-instruct"\nserver.port = 18125\n')
    code = (
        "import sys; from punie.cli import main\n"
        "try:\n    main(sys.argv[1:], prog_name='punie')\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('asyncio', 'pydantic_settings', 'httpx') if m in sys.modules), "
        "file=sys.stderr)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PUNIE_")}
    env["PUNIE_CACHE_DIR"] = str(tmp_path / "cache")
    for args in (["check"], ["up", "--dry-run"]):
        proc = subprocess.run([sys.executable, "-c", code, "--config", str(config), *args], env=env,
                              capture_output=True, text=True, timeout=180)
        assert proc.stderr.strip().splitlines()[-1] == "[]", (args, proc.stderr)
    proc = subprocess.run([sys.executable, "-c", code, "--config", str(config), "--set", "server.port=18126",
                           "check"], env=env, capture_output=True, text=True, timeout=180)
    assert "pydantic_settings" in proc.stderr.strip().splitlines()[-1]  # --set goes through it


def test_profile_resolved_without_pydantic_settings_equals_the_one_through_it(tmp_path: Path) -> None:
    from punie.config import load_profile

    config = tmp_path / "punie.toml"
    config.write_text(
        '[defaults.server]\nhost = "127.0.0.1"\n[profiles.base]\nmodel = "m"\nadapters = ["a", {path = "b", weight = 0.5}]\n'
        '[profiles.p]\nextends = "base"\nserver.port = 8081\nagent.permissions.run_command = "allow"\n'
        'agent.tools = ["read_file"]\n'
    )
    plain = load_profile("p", config=str(config), env={})
    through = load_profile("p", config=str(config), env={"PUNIE_SERVER__PORT": "8081"})
    assert through.sources["server.port"] == "env" and plain.sources["server.port"] == "file"
    assert plain.profile == through.profile
    assert load_profile("p", config=str(config), env={}, overrides=["server.port=8081"]).profile == plain.profile
