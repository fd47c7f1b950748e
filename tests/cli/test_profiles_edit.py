"""`punie profiles new|set|unset|rename|rm|edit` through the real CLI group."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from punie.cli import main
from punie.cli.profiles import profiles_group
from punie.cli.profiles_edit import attach

if "set" not in profiles_group.commands:  # until punie.cli registers them itself
    attach(profiles_group)

FILE = """\
# project profiles
default_profile = "base"

[profiles.base]
model = 'builtin:smollm2-135m-instruct'  # tiny
server.port = 8081

# tuned on our data
[profiles.tuned]
extends = "base"
adapter = "latest"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "punie.toml"
    path.write_text(FILE)
    return path


def _run(*args: str, input: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_set_writes_only_the_value(config: Path) -> None:
    code, _, err = _run("profiles", "set", "base", "server.port", "9000")
    assert code == 0, err
    assert config.read_text() == FILE.replace("server.port = 8081", "server.port = 9000")
    assert "profiles.base.server.port = 9000" in err


def test_set_string_value_and_unset_round_trip(config: Path) -> None:
    assert _run("profiles", "set", "tuned", "description", "Tuned on our data")[0] == 0
    assert tomllib.loads(config.read_text())["profiles"]["tuned"]["description"] == "Tuned on our data"
    assert _run("profiles", "unset", "tuned", "description")[0] == 0
    assert config.read_text() == FILE


def test_set_unknown_key_exits_2_and_keeps_file(config: Path) -> None:
    code, _, err = _run("profiles", "set", "base", "server.prot", "9000")
    assert code == 2
    assert "punie: error: punie.toml:4: profiles.base: unknown key 'server.prot', did you mean 'port'?" in err
    assert config.read_text() == FILE


def test_set_invalid_value_exits_2_and_keeps_file(config: Path) -> None:
    code, _, err = _run("profiles", "set", "base", "server.port", "0")
    assert code == 2
    assert "punie.toml:6: profiles.base.server.port" in err
    assert config.read_text() == FILE


def test_global_config_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "elsewhere.toml"
    other.write_text(FILE)
    code, _, err = _run("--config", str(other), "profiles", "set", "base", "server.port", "9001")
    assert code == 0, err
    assert "server.port = 9001" in other.read_text()


def test_new_creates_file_and_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert _run("profiles", "new", "demo")[0] == 0
    assert _run("profiles", "set", "demo", "model", "builtin:smollm2-135m-instruct")[0] == 0
    assert _run("profiles", "new", "copy", "--from", "demo")[0] == 0
    data = tomllib.loads((tmp_path / "punie.toml").read_text())
    # The copy is the source on a port of its own (issue 15: two profiles on one port cannot both run).
    assert data["profiles"]["demo"] == {"model": "builtin:smollm2-135m-instruct"}
    assert data["profiles"]["copy"] == {"model": "builtin:smollm2-135m-instruct", "server": {"port": 8081}}
    code, out, _ = _run("profiles")
    assert code == 0 and "copy" in out and "demo" in out


def test_commands_other_than_new_need_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err = _run("profiles", "set", "demo", "model", "x")
    assert code == 2 and "no punie.toml found" in err
    assert not (tmp_path / "punie.toml").exists()


def test_rename_and_rm(config: Path) -> None:
    code, _, err = _run("profiles", "rm", "base")
    assert code == 2 and "extended by 'tuned'" in err and "--force" in err
    assert _run("profiles", "rename", "base", "plain")[0] == 0
    text = config.read_text()
    assert "[profiles.plain]" in text and 'extends = "plain"' in text and 'default_profile = "plain"' in text
    assert _run("profiles", "rm", "plain", "--force")[0] == 0
    data = tomllib.loads(config.read_text())
    assert list(data["profiles"]) == ["tuned"] and "default_profile" not in data


def _editor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *replacements: tuple[str, str]) -> Path:
    """An $EDITOR that applies one (old, new) text replacement per run; logs each run."""
    script = tmp_path / "editor.py"
    log = tmp_path / "editor.log"
    script.write_text(
        "import sys, pathlib\n"
        f"steps = {list(replacements)!r}\n"
        f"log = pathlib.Path({str(log)!r})\n"
        "run = len(log.read_text().splitlines()) if log.exists() else 0\n"
        "path = pathlib.Path(sys.argv[1])\n"
        "text = path.read_text()\n"
        "with log.open('a') as f:\n"
        "    f.write(repr(text) + '\\n')\n"
        "old, new = steps[min(run, len(steps) - 1)]\n"
        "path.write_text(text.replace(old, new))\n"
    )
    monkeypatch.delenv("VISUAL", raising=False)
    monkeypatch.setenv("EDITOR", f'"{sys.executable}" "{script}"')
    return log


def test_edit_splices_the_profile_back(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _editor(tmp_path, monkeypatch, ("server.port = 8081", "server.port = 8090\nserver.max_tokens = 64"))
    code, _, err = _run("profiles", "edit", "base")
    assert code == 0, err
    assert config.read_text() == FILE.replace("server.port = 8081", "server.port = 8090\nserver.max_tokens = 64")
    shown = eval(log.read_text().splitlines()[0])  # the text the editor was given
    assert shown.startswith("[profiles.base]\nmodel = 'builtin:smollm2-135m-instruct'  # tiny\n")
    assert "tuned" not in shown
    assert "updated profile base" in err


def test_edit_invalid_then_fixed(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = _editor(
        tmp_path,
        monkeypatch,
        ("server.port = 8081", "server.port = 0"),  # first save: invalid
        ("server.port = 0", "server.port = 8085"),  # after "edit again": fixed
    )
    code, _, err = _run("profiles", "edit", "base", input="y\n")
    assert code == 0, err
    assert "profiles.base.server.port: Input should be greater than or equal to 1" in err
    assert "Edit again?" in err
    runs = log.read_text().splitlines()
    assert len(runs) == 2 and "server.port = 0" in eval(runs[1])  # re-edit starts from the bad text
    assert config.read_text() == FILE.replace("server.port = 8081", "server.port = 8085")


def test_edit_invalid_and_declined_keeps_file(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _editor(tmp_path, monkeypatch, ("[profiles.base]", "[profiles.base]\nsever.port = 1"))
    code, _, err = _run("profiles", "edit", "base", input="n\n")
    assert code == 2
    assert "profiles.base.sever: unknown key, did you mean 'server'?" in err
    assert config.read_text() == FILE


def test_edit_without_changes(config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _editor(tmp_path, monkeypatch, ("nothing-matches-this", ""))
    code, _, err = _run("profiles", "edit", "tuned")
    assert code == 0 and "no changes" in err
    assert config.read_text() == FILE


def test_set_same_value_reports_nothing_changed(config: Path) -> None:
    before = config.stat().st_mtime_ns
    code, _, err = _run("profiles", "set", "base", "server.port", "8081")
    assert code == 0 and "nothing changed" in err
    assert config.read_text() == FILE and config.stat().st_mtime_ns == before


def test_unset_missing_key_exits_2(config: Path) -> None:
    code, _, err = _run("profiles", "unset", "tuned", "server.port")
    assert code == 2 and "profiles.tuned: 'server.port' is not set" in err
    assert config.read_text() == FILE


CHAIN = """\
default_profile = "demo"

# the base
[profiles.demo]
model = "builtin:smollm2-135m-instruct"
server.port = 8090
agent.max_turns = 4

[profiles.demo-tools]
extends = "demo"
adapter = "demo-tools-v1"

[profiles.deeper]
extends = "demo-tools"
description = "two levels down"

[profiles.other]
model = "builtin:smollm2-135m-instruct"
server.port = 8091
"""


@pytest.fixture
def chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "punie.toml"
    path.write_text(CHAIN)
    return path


def test_rm_refuses_to_break_extends_and_names_the_dependants(chain: Path) -> None:
    code, _, err = _run("profiles", "rm", "demo")
    assert code == 2
    assert "extended by 'demo-tools' (and 'deeper' through them)" in err
    assert "--cascade" in err and "--force" in err
    assert chain.read_text() == CHAIN


def test_rm_force_keeps_dependants_resolving_the_same(chain: Path) -> None:
    from punie.config import load_profile

    before = {n: load_profile(n, config=chain).profile for n in ("demo-tools", "deeper", "other")}
    code, _, err = _run("profiles", "rm", "demo", "--force")
    assert code == 0, err
    assert "removed profile demo; demo-tools now holds the values inherited from it" in err
    data = tomllib.loads(chain.read_text())
    assert "demo" not in data["profiles"] and "default_profile" not in data
    assert "extends" not in data["profiles"]["demo-tools"]
    assert data["profiles"]["deeper"]["extends"] == "demo-tools"
    for name, profile in before.items():
        now = load_profile(name, config=chain).profile
        assert now.model_dump(exclude={"extends"}) == profile.model_dump(exclude={"extends"}), name
    code, out, _ = _run("profiles")  # every profile of the file resolves
    assert code == 0 and "demo-tools" in out


def test_rm_cascade_removes_the_dependants(chain: Path) -> None:
    code, _, err = _run("profiles", "rm", "demo-tools", "--cascade")
    assert code == 0, err
    assert "removed profile demo-tools and deeper (extending it)" in err
    data = tomllib.loads(chain.read_text())
    assert list(data["profiles"]) == ["demo", "other"]
    assert chain.read_text().startswith(CHAIN[: CHAIN.index("[profiles.demo-tools]")])
    # The default profile is among the removed ones: that needs --force as well.
    code, _, err = _run("profiles", "rm", "demo", "--cascade")
    assert code == 2 and "it is the default_profile" in err
    assert _run("profiles", "rm", "demo", "--cascade", "--force")[0] == 0
    assert list(tomllib.loads(chain.read_text())["profiles"]) == ["other"]


def test_new_from_picks_a_port_no_other_profile_uses(chain: Path) -> None:
    assert _run("profiles", "new", "copy", "--from", "demo")[0] == 0
    # 8090 is demo's (and demo-tools' and deeper's, through extends), 8091 is other's.
    assert tomllib.loads(chain.read_text())["profiles"]["copy"]["server"]["port"] == 8092
    assert _run("profiles", "new", "copy2", "--from", "copy")[0] == 0
    assert tomllib.loads(chain.read_text())["profiles"]["copy2"]["server"]["port"] == 8093
    # Copying a profile that inherits its port gets one of its own too.
    assert _run("profiles", "new", "copy3", "--from", "deeper")[0] == 0
    copy3 = tomllib.loads(chain.read_text())["profiles"]["copy3"]
    assert copy3["server"]["port"] == 8094 and copy3["extends"] == "demo-tools"


def test_new_from_with_set_port_keeps_the_given_port(chain: Path) -> None:
    code, _, err = _run("profiles", "new", "copy", "--from", "demo", "--set", "server.port=8090", "--set", "agent.max_turns=9")
    assert code == 0, err
    copy = tomllib.loads(chain.read_text())["profiles"]["copy"]
    assert copy["server"]["port"] == 8090 and copy["agent"]["max_turns"] == 9
    code, _, err = _run("profiles", "new", "bad", "--set", "server.port")
    assert code == 2 and "KEY=VALUE" in err


def test_new_from_a_remote_profile_sets_no_port(chain: Path) -> None:
    assert _run("profiles", "set", "other", "server.url", "http://127.0.0.1:9999")[0] == 0
    assert _run("profiles", "new", "remote", "--from", "other")[0] == 0
    # It starts no server, so its (copied, unused) port is left as it was.
    assert tomllib.loads(chain.read_text())["profiles"]["remote"]["server"] == {
        "port": 8091,
        "url": "http://127.0.0.1:9999",
    }
