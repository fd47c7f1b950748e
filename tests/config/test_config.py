"""Loading profiles: layers, provenance, file search, and every kind of configuration error."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from punie.config import (
    EMBEDDED_DEFAULT_TOML,
    LEAF_KEYS,
    describe_source,
    find_config,
    list_profiles,
    load_profile,
    load_profiles,
)
from punie.errors import ConfigError

BASIC = """\
default_profile = "demo"

[defaults.server]
host = "127.0.0.1"
port = 9000

[defaults.agent.permissions]
run_command = "deny"

[profiles.demo]
model = "builtin:smollm2-135m-instruct"

[profiles.tool]
description = "coder"
model = "org/coder"
adapter = "adapters/tool-v1"
server.port = 8081
server.chat_template_args = { enable_thinking = false }

[profiles.tool-hot]
extends = "tool"
agent.temperature = 1.2

[profiles.tool-hot.server]
temperature = 0.9
"""


def write(tmp_path: Path, text: str, name: str = "punie.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, *, name: str | None = None, **kwargs) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_profile(name, config=str(path), env=kwargs.pop("env", {}), cwd=tmp_path, **kwargs)
    assert info.value.exit_code == 2
    return info.value.render()


# --- happy paths ---------------------------------------------------------------------------------


def test_defaults_and_model_defaults_apply(tmp_path: Path) -> None:
    resolved = load_profile("demo", config=str(write(tmp_path, BASIC)), env={})
    assert resolved.name == "demo"
    assert resolved.profile.model == "builtin:smollm2-135m-instruct"
    assert resolved.profile.server.port == 9000
    assert resolved.profile.agent.permissions.run_command == "deny"
    assert resolved.profile.agent.permissions.write_file == "ask"
    assert resolved.sources["model"] == "file"
    assert resolved.sources["server.port"] == "file (defaults)"
    assert resolved.sources["agent.permissions.write_file"] == "default"
    assert resolved.config_path == str(tmp_path / "punie.toml")
    assert resolved.project_dir == str(tmp_path)


def test_every_leaf_key_has_a_source(tmp_path: Path) -> None:
    resolved = load_profile("tool", config=str(write(tmp_path, BASIC)), env={})
    assert set(resolved.sources) == set(LEAF_KEYS)
    assert {"model", "server.port", "agent.permissions.run_command", "server.chat_template_args"} <= set(LEAF_KEYS)
    allowed = {"file", "file (defaults)", "env", "cli", "default"}
    assert all(v in allowed or v.startswith("file (extends ") for v in resolved.sources.values())


def test_extends_chain_deep_merges_tables(tmp_path: Path) -> None:
    resolved = load_profile("tool-hot", config=str(write(tmp_path, BASIC)), env={})
    p = resolved.profile
    assert p.extends == "tool"
    assert p.model == "org/coder" and p.adapter == "adapters/tool-v1"
    # server merges key by key: port from the base profile, temperature from this one, host from defaults
    assert (p.server.port, p.server.temperature, p.server.host) == (8081, 0.9, "127.0.0.1")
    assert p.server.chat_template_args == {"enable_thinking": False}
    assert p.agent.temperature == 1.2
    assert resolved.sources["server.port"] == "file (extends tool)"
    assert resolved.sources["server.temperature"] == "file"
    assert resolved.sources["server.host"] == "file (defaults)"
    assert resolved.sources["extends"] == "file"


def test_three_level_extends_base_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [profiles.a]
        model = "m-a"
        server.port = 1001
        agent.max_turns = 3
        [profiles.b]
        extends = "a"
        server.port = 1002
        [profiles.c]
        extends = "b"
        agent.tools = ["read_file"]
        """,
    )
    resolved = load_profile("c", config=str(path), env={})
    assert resolved.profile.server.port == 1002
    assert resolved.profile.agent.max_turns == 3
    assert resolved.profile.agent.tools == ["read_file"]
    assert resolved.sources["server.port"] == "file (extends b)"
    assert resolved.sources["agent.max_turns"] == "file (extends a)"
    assert resolved.sources["model"] == "file (extends a)"


def test_lists_replace_instead_of_merging(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [defaults.server]
        extra_args = ["--a", "--b"]
        [profiles.x]
        model = "m"
        server.extra_args = ["--c"]
        """,
    )
    assert load_profile("x", config=str(path), env={}).profile.server.extra_args == ["--c"]


def test_adapter_in_a_higher_layer_clears_adapters_below(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        [profiles.base]
        model = "m"
        adapters = ["a", { path = "b", weight = 0.5 }]
        [profiles.single]
        extends = "base"
        adapter = "c"
        """,
    )
    base = load_profile("base", config=str(path), env={})
    assert [(r.path, r.weight) for r in base.profile.adapter_refs()] == [("a", 1.0), ("b", 0.5)]
    single = load_profile("single", config=str(path), env={})
    assert single.profile.adapter == "c" and single.profile.adapters == []
    assert single.sources["adapters"] == "default"
    via_cli = load_profile("single", config=str(path), env={}, overrides=["adapters=['x']"])
    assert via_cli.profile.adapter is None and via_cli.profile.adapters == ["x"]
    assert via_cli.sources["adapter"] == "default" and via_cli.sources["adapters"] == "cli"


def test_env_overrides_file_and_cli_overrides_env(tmp_path: Path) -> None:
    path = write(tmp_path, BASIC)
    env = {
        "PUNIE_SERVER__PORT": "8500",
        "PUNIE_MODEL": "org/other",
        "PUNIE_AGENT__PERMISSIONS__WRITE_FILE": "allow",
        "PUNIE_AGENT__TOOLS": '["read_file", "search"]',
        "PUNIE_CONFIG": "",
        "PUNIE_CACHE_DIR": "/tmp/whatever",
        "HOME": "/root",
    }
    resolved = load_profile("tool", config=str(path), env=env, overrides=["server.port=8600"])
    p = resolved.profile
    assert p.server.port == 8600 and resolved.sources["server.port"] == "cli"
    assert p.model == "org/other" and resolved.sources["model"] == "env"
    assert p.agent.permissions.write_file == "allow"
    assert resolved.sources["agent.permissions.write_file"] == "env"
    assert p.agent.tools == ["read_file", "search"] and resolved.sources["agent.tools"] == "env"
    assert p.adapter == "adapters/tool-v1" and resolved.sources["adapter"] == "file"


def test_os_environ_is_used_when_env_is_not_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest sets PUNIE_CACHE_DIR: it is not a profile field and must be ignored.
    monkeypatch.setenv("PUNIE_SERVER__PORT", "8123")
    monkeypatch.setenv("PUNIE_PROFILE", "tool")
    resolved = load_profile(None, config=str(write(tmp_path, BASIC)))
    assert resolved.name == "tool"
    assert resolved.profile.server.port == 8123 and resolved.sources["server.port"] == "env"


def test_set_values_are_parsed_as_toml(tmp_path: Path) -> None:
    resolved = load_profile(
        "demo",
        config=str(write(tmp_path, BASIC)),
        env={},
        overrides=[
            "server.port=8081",
            "server.allow_remote=true",
            "server.temperature=0.5",
            "server.extra_args=['--x', '--y']",
            "server.chat_template_args={ enable_thinking = true }",
            "agent.permissions.run_command=allow",
            'description="quoted # not a comment"',
            "agent.instructions=Be brief, please",
            "server.host=0.0.0.0",
        ],
    )
    p = resolved.profile
    assert p.server.port == 8081 and p.server.allow_remote is True and p.server.temperature == 0.5
    assert p.server.extra_args == ["--x", "--y"]
    assert p.server.chat_template_args == {"enable_thinking": True}
    assert p.agent.permissions.run_command == "allow"
    assert p.description == "quoted # not a comment"
    assert p.agent.instructions == "Be brief, please"
    assert p.server.host == "0.0.0.0"
    assert resolved.sources["server.chat_template_args"] == "cli"


def test_later_set_wins(tmp_path: Path) -> None:
    resolved = load_profile("demo", config=str(write(tmp_path, BASIC)), env={},
                            overrides=["server.port=1", "server.port=2"])
    assert resolved.profile.server.port == 2


def test_profile_selection_order(tmp_path: Path) -> None:
    path = str(write(tmp_path, BASIC))
    assert load_profile(None, config=path, env={}).name == "demo"  # default_profile
    assert load_profile(None, config=path, env={"PUNIE_PROFILE": "tool"}).name == "tool"
    assert load_profile("tool-hot", config=path, env={"PUNIE_PROFILE": "tool"}).name == "tool-hot"
    only = write(tmp_path / "only", '[profiles.solo]\nmodel = "m"\n')
    assert load_profile(None, config=str(only), env={}).name == "solo"


def test_load_profiles_all_in_file_order_or_named(tmp_path: Path) -> None:
    path = str(write(tmp_path, BASIC))
    assert [r.name for r in load_profiles(config=path, env={})] == ["demo", "tool", "tool-hot"]
    assert [r.name for r in load_profiles(["tool-hot", "demo"], config=path, env={})] == ["tool-hot", "demo"]
    with pytest.raises(ConfigError, match="unknown profile 'tol', did you mean 'tool'"):
        load_profiles(["demo", "tol"], config=path, env={})


def test_search_finds_file_in_a_parent(tmp_path: Path) -> None:
    write(tmp_path, BASIC)
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert find_config(env={}, cwd=deep) == tmp_path / "punie.toml"
    resolved = load_profile("tool", env={}, cwd=deep)
    assert resolved.config_path == str(tmp_path / "punie.toml")
    assert resolved.profile.server.port == 8081


def test_nearest_file_wins(tmp_path: Path) -> None:
    write(tmp_path, BASIC)
    inner = write(tmp_path / "sub", '[profiles.inner]\nmodel = "m"\n')
    assert find_config(env={}, cwd=tmp_path / "sub") == inner


def test_punie_config_and_config_argument(tmp_path: Path) -> None:
    other = write(tmp_path / "elsewhere", '[profiles.other]\nmodel = "m"\n', name="custom.toml")
    write(tmp_path, BASIC)
    env = {"PUNIE_CONFIG": str(other)}
    assert find_config(env=env, cwd=tmp_path) == other
    assert load_profile(None, env=env, cwd=tmp_path).name == "other"
    # --config beats PUNIE_CONFIG; relative paths resolve against cwd
    assert find_config("punie.toml", env=env, cwd=tmp_path) == tmp_path / "punie.toml"
    assert load_profile(None, config="elsewhere/custom.toml", env={}, cwd=tmp_path).name == "other"


def test_embedded_default_when_no_file_anywhere(tmp_path: Path) -> None:
    assert find_config(env={}, cwd=tmp_path) is None
    resolved = load_profile(None, env={}, cwd=tmp_path)
    assert resolved.name == "demo"
    assert resolved.config_path is None
    assert resolved.profile.model == "builtin:smollm2-135m-instruct"
    assert resolved.profile.adapter is None and resolved.profile.adapters == []
    assert "demo" in EMBEDDED_DEFAULT_TOML
    # overrides and env still apply on top of the embedded default
    moved = load_profile(None, env={"PUNIE_SERVER__PORT": "8088"}, cwd=tmp_path, overrides=["agent.max_turns=2"])
    assert moved.profile.server.port == 8088 and moved.profile.agent.max_turns == 2


def test_listing_names_the_default(tmp_path: Path) -> None:
    listing = list_profiles(config=str(write(tmp_path / "with-file", BASIC)), env={})
    assert listing.default == "demo"
    assert [r.name for r in listing.profiles] == ["demo", "tool", "tool-hot"]
    empty = tmp_path / "empty"
    empty.mkdir()
    embedded = list_profiles(env={}, cwd=empty)
    assert embedded.config_path is None and embedded.default == "demo"


def test_describe_source_points_at_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, BASIC)
    resolved = load_profile("tool-hot", config=str(path), env={"PUNIE_AGENT__MAX_TURNS": "4"},
                            overrides=["agent.name=x"])
    lines = BASIC.splitlines()

    def at(line: str) -> str:
        return f"punie.toml:{lines.index(line) + 1}"

    assert describe_source(resolved, "server.temperature") == at("temperature = 0.9")
    assert describe_source(resolved, "server.port") == at("server.port = 8081")
    assert describe_source(resolved, "server.host") == at('host = "127.0.0.1"')
    assert describe_source(resolved, "agent.max_turns") == "PUNIE_AGENT__MAX_TURNS"
    assert describe_source(resolved, "agent.name") == "--set agent.name"


def test_the_repository_example_file_loads() -> None:
    root = Path(__file__).resolve().parents[2]
    text = (root / "punie.toml").read_text(encoding="utf-8")
    assert text.startswith("#:schema ./schemas/punie.schema.json\n")
    profiles = {r.name: r for r in load_profiles(config=str(root / "punie.toml"), env={})}
    assert profiles["demo"].profile.model == "builtin:smollm2-135m-instruct"
    assert profiles["demo"].profile.server.port == 8080 and profiles["demo"].profile.adapter is None
    tool = profiles["tool-calling"].profile
    assert (tool.model, tool.adapter, tool.server.port) == ("builtin:smollm2-135m-instruct", "tool-calling-v3", 8081)
    assert {profiles[f"tool-calling-v{n}"].profile.adapter for n in (1, 2)} == {"tool-calling-v1", "tool-calling-v2"}
    # Every profile of the shipped file runs offline; the hub model is an example of its own.
    assert all(r.profile.model.startswith("builtin:") for r in profiles.values())
    hub = load_profile(None, config=str(root / "examples" / "hub-coder.toml"), env={})
    assert hub.profile.model == "mlx-community/Qwen2.5-Coder-1.5B-Instruct-4bit"
    assert load_profile(None, config=str(root / "punie.toml"), env={}).name == "demo"
    assert any(r.profile.extends for r in profiles.values())


# --- errors --------------------------------------------------------------------------------------


def test_malformed_toml_names_line_and_column(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.demo]\nmodel = "m"\nserver.port = \n')
    assert message.startswith("punie.toml:3:15: invalid TOML: ")
    assert "Traceback" not in message


def test_duplicate_key_is_a_syntax_error(tmp_path: Path) -> None:
    assert error_of(tmp_path, '[profiles.demo]\nmodel = "a"\nmodel = "b"\n').startswith("punie.toml:3:")


def test_unknown_key_did_you_mean_with_line(tmp_path: Path) -> None:
    text = '[profiles.demo]\nmodel = "m"\n\n[profiles.demo.server]\nhost = "h"\nprot = 8081\n'
    assert error_of(tmp_path, text) == "punie.toml:6: profiles.demo.server.prot: unknown key, did you mean 'port'?"


def test_unknown_top_level_table(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profile.demo]\nmodel = "m"\n')
    assert message == "punie.toml:1: profile: unknown key, did you mean 'profiles'?"


def test_key_of_a_subtable_written_at_profile_level(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.demo]\nmodel = "m"\nport = 1\n')
    assert message == "punie.toml:3: profiles.demo.port: unknown key, did you mean 'server.port'?"


def test_unknown_key_without_close_match_lists_valid_keys(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.demo]\nmodel = "m"\nagent.permissions.xyzzy = "allow"\n')
    assert message.startswith("punie.toml:3: profiles.demo.agent.permissions.xyzzy: unknown key (valid keys:")
    assert "write_file, run_command" in message


def test_wrong_type_with_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.demo]\nmodel = "m"\nserver = { port = "eighty" }\n')
    assert message.startswith("punie.toml:3: profiles.demo.server.port: Input should be a valid integer")


def test_port_out_of_range_in_the_issue_format(tmp_path: Path) -> None:
    text = "[profiles.demo]\n" + "# filler\n" * 11 + 'model = "m"\n[profiles.demo.server]\nport = 70000\n'
    message = error_of(tmp_path, text)
    assert message == "punie.toml:15: profiles.demo.server.port: Input should be less than or equal to 65535"


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.a]\nmodel = "m"\nserver.port = 0\n[profiles.b]\nmodel = 3\n')
    assert "punie.toml:3: profiles.a.server.port" in message
    assert "punie.toml:5: profiles.b.model: Input should be a valid string" in message


def test_bad_value_in_defaults_is_located(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[defaults]\nagent.permissions.run_command = "sometimes"\n[profiles.a]\nmodel = "m"\n')
    assert message.startswith("punie.toml:2: defaults.agent.permissions.run_command: Input should be 'ask'")


def test_union_list_items_get_one_message(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.a]\nmodel = "m"\nadapters = ["x", { path = "y", weight = "w" }, 3]\n')
    lines = message.splitlines()
    assert lines[0].startswith("punie.toml:3: profiles.a.adapters[1].weight: Input should be a valid number")
    assert lines[1].startswith("punie.toml:3: profiles.a.adapters[2]: Input should be a valid string or ")
    assert len(lines) == 2


def test_unknown_key_inside_a_list_item(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.a]\nmodel = "m"\nadapters = [{ path = "x", wieght = 2 }]\n')
    assert message == "punie.toml:3: profiles.a.adapters[0].wieght: unknown key, did you mean 'weight'?"


def test_multiline_strings_do_not_confuse_line_numbers(tmp_path: Path) -> None:
    text = '[profiles.a]\nmodel = "m"\ndescription = """\n[profiles.b]\nserver.port = 1\n"""\nserver.port = 0\n'
    assert error_of(tmp_path, text).startswith("punie.toml:7: profiles.a.server.port: Input should be greater")


def test_adapter_and_adapters_together(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.a]\nmodel = "m"\nadapter = "x"\nadapters = ["y"]\n')
    assert message == "punie.toml:1: profiles.a: set either 'adapter' or 'adapters', not both"


def test_extends_cycle_is_named(tmp_path: Path) -> None:
    text = '[profiles.a]\nmodel = "m"\nextends = "b"\n[profiles.b]\nextends = "c"\n[profiles.c]\nextends = "a"\n'
    message = error_of(tmp_path, text)
    assert message == "punie.toml:3: profiles.a.extends: cycle in extends: a -> b -> c -> a"


def test_extends_itself(tmp_path: Path) -> None:
    assert error_of(tmp_path, '[profiles.a]\nmodel = "m"\nextends = "a"\n').endswith("cycle in extends: a -> a")


def test_extends_unknown_profile_did_you_mean(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.demo]\nmodel = "m"\n[profiles.x]\nextends = "dmeo"\n')
    assert message == "punie.toml:4: profiles.x.extends: unknown profile 'dmeo', did you mean 'demo'?"


def test_extends_not_allowed_in_defaults(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[defaults]\nextends = "a"\n[profiles.a]\nmodel = "m"\n')
    assert message == "punie.toml:2: defaults.extends: 'extends' is not allowed in [defaults]"


def test_default_profile_must_exist(tmp_path: Path) -> None:
    message = error_of(tmp_path, 'default_profile = "dem"\n[profiles.demo]\nmodel = "m"\n')
    assert message == "punie.toml:1: default_profile: unknown profile 'dem', did you mean 'demo'?"


def test_unknown_profile_name_did_you_mean(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASIC, name="toll")
    assert message.startswith("punie.toml: unknown profile 'toll', did you mean 'tool'?")
    assert "hint: profiles: demo, tool, tool-hot" in message


def test_unknown_profile_from_punie_profile(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASIC, env={"PUNIE_PROFILE": "tool-ho"})
    assert message.startswith("PUNIE_PROFILE: unknown profile 'tool-ho', did you mean 'tool-hot'?")


def test_no_default_among_several_profiles(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[profiles.a]\nmodel = "m"\n[profiles.b]\nmodel = "m"\n')
    assert message.startswith("punie.toml: no profile named and no default_profile set; profiles: a, b")


def test_no_profiles_at_all(tmp_path: Path) -> None:
    assert error_of(tmp_path, "# empty\n").startswith("punie.toml: no profiles defined")


def test_a_profile_on_a_running_server_needs_no_model(tmp_path: Path) -> None:
    path = write(tmp_path, '[profiles.ext.server]\nurl = "http://127.0.0.1:8080"\n')
    profile = load_profile("ext", config=str(path)).profile
    assert profile.model is None and profile.server.url == "http://127.0.0.1:8080"


def test_model_is_required_after_resolution(tmp_path: Path) -> None:
    message = error_of(tmp_path, '[defaults.server]\nport = 1\n\n[profiles.a]\ndescription = "no model"\n')
    assert message.startswith("punie.toml:4: profiles.a: no model set")
    # ...and is satisfied by [defaults], the environment or --set
    path = str(tmp_path / "punie.toml")
    assert load_profile("a", config=path, env={"PUNIE_MODEL": "org/m"}).profile.model == "org/m"
    assert load_profile("a", config=path, env={}, overrides=["model=org/n"]).profile.model == "org/n"


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^--config: profiles file not found: nope.toml"):
        load_profile(None, config="nope.toml", env={}, cwd=tmp_path)
    with pytest.raises(ConfigError, match=r"^PUNIE_CONFIG: profiles file not found: /no/such.toml"):
        load_profile(None, env={"PUNIE_CONFIG": "/no/such.toml"}, cwd=tmp_path)
    with pytest.raises(ConfigError, match="is a directory"):
        load_profile(None, config=str(tmp_path), env={}, cwd=tmp_path)


def test_no_file_found_without_fallback_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_profile(None, env={}, cwd=tmp_path, fallback=None)
    message = info.value.render()
    assert f"no punie.toml found in {tmp_path} or any parent directory" in message
    assert "[profiles.demo]" in message and "--config" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_bytes(b'[profiles.a]\nmodel = "\xff"\n')
    with pytest.raises(ConfigError, match=r"^punie.toml:2: not UTF-8 text"):
        load_profile(None, config=str(path), env={}, cwd=tmp_path)


def test_deep_nesting_is_a_config_error(tmp_path: Path) -> None:
    depth = 5000
    message = error_of(tmp_path, "[profiles.a]\nmodel = " + "[" * depth + "]" * depth + "\n")
    assert message == "punie.toml: invalid TOML: values nested too deeply"


# --- --set and environment errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("server.prot=1", "--set server.prot=1: unknown key 'server.prot', did you mean 'port'?"),
        ("sever.port=1", "--set sever.port=1: unknown key 'sever', did you mean 'server'?"),
        ("model", "--set model: expected KEY=VALUE, e.g. --set server.port=8081"),
        ("=3", "--set =3: empty key"),
        ("server..port=3", "--set server..port=3: empty key"),
        ("server.port.x=1", "--set server.port.x=1: 'server.port' is a single value"),
        ("extends=demo", "--set extends=demo: 'extends' can only be set in the profiles file"),
        ("server.port=abc", "--set server.port=abc: profiles.demo.server.port: Input should be a valid integer"),
        ("server.port=70000",
         "--set server.port=70000: profiles.demo.server.port: Input should be less than or equal to 65535"),
        ("agent.tools=['read_file', 'rm']", "--set agent.tools=['read_file', 'rm']: profiles.demo.agent.tools[1]:"),
        ("server={ prot = 1 }", "--set server={ prot = 1 }: profiles.demo.server.prot: unknown key, did you mean"),
    ],
)
def test_bad_overrides(tmp_path: Path, override: str, expected: str) -> None:
    assert error_of(tmp_path, BASIC, overrides=[override]).startswith(expected)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"PUNIE_SERVER__PORT": "abc"}, "PUNIE_SERVER__PORT: profiles.demo.server.port: Input should be a valid integer"),
        ({"PUNIE_SERVER__PORT": "0"}, "PUNIE_SERVER__PORT: profiles.demo.server.port: Input should be greater than"),
        ({"PUNIE_SERVER__PROT": "1"}, "PUNIE_SERVER__PROT: profiles.demo.server.prot: unknown key, did you mean 'port'?"),
        ({"PUNIE_AGENT__TOOLS": "read_file"}, "PUNIE_AGENT__TOOLS: agent: value is not valid JSON"),
        ({"PUNIE_EXTENDS": "tool"}, "PUNIE_EXTENDS: 'extends' can only be set in the profiles file"),
    ],
)
def test_bad_environment(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    assert error_of(tmp_path, BASIC, env=env).startswith(expected)


def test_unknown_top_level_env_var_is_only_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(write(tmp_path, BASIC))
    resolved = load_profile("demo", config=path, env={"PUNIE_MODLE": "x", "PUNIE_PROFILE": "demo"})
    assert resolved.profile.model == "builtin:smollm2-135m-instruct"
    assert "PUNIE_MODLE" in caplog.text and "did you mean 'model'?" in caplog.text


def test_error_is_blamed_on_the_layer_that_set_the_key(tmp_path: Path) -> None:
    message = error_of(tmp_path, BASIC, env={"PUNIE_SERVER__PROT": "1"}, overrides=["server.host=::1"])
    assert message.startswith("PUNIE_SERVER__PROT: profiles.demo.server.prot: unknown key")
    message = error_of(tmp_path, BASIC, env={"PUNIE_SERVER__HOST": "::1"}, overrides=["server.port=0"])
    assert message.startswith("--set server.port=0: profiles.demo.server.port: Input should be greater")
