"""Examples of punie.config.edit: each form a key can be written in, errors, apply_edit."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from punie.config.edit import (
    apply_edit,
    new_profile,
    parse_value,
    profile_snippet,
    remove_profile,
    rename_profile,
    replace_profile,
    set_value,
    unset_value,
    validate_text,
)
from punie.errors import ConfigError, UsageError

FILE = """\
#:schema ./schemas/punie.schema.json
# Profiles of this project.
default_profile = 'base'

[defaults]
model = "builtin:smollm2-135m-instruct"   # small and local

# The plain one.
[profiles.base]
description = 'Base model'
server.port = 8081  # fixed port
server.host = "127.0.0.1"

[profiles.base.agent]
temperature = 0.2

# Extends base.
[profiles.tuned]
extends = "base"
adapter = "latest"
server = { port = 8082, max_tokens = 512 }

[profiles.remote.server]
url = "http://127.0.0.1:9000"
"""


def _diff(before: str, after: str) -> tuple[list[str], list[str]]:
    old, new = before.splitlines(), after.splitlines()
    return [line for line in old if line not in new], [line for line in new if line not in old]


def test_fixture_file_is_valid() -> None:
    validate_text(FILE)


def test_set_existing_dotted_key_keeps_its_comment() -> None:
    after = set_value(FILE, "base", "server.port", 9090)
    assert _diff(FILE, after) == (["server.port = 8081  # fixed port"], ["server.port = 9090  # fixed port"])


def test_set_existing_string_keeps_single_quotes() -> None:
    after = set_value(FILE, "base", "description", "Plain base")
    assert _diff(FILE, after) == (["description = 'Base model'"], ["description = 'Plain base'"])


def test_set_string_needing_escapes_switches_to_double_quotes() -> None:
    after = set_value(FILE, "base", "description", "it's")
    assert 'description = "it\'s"' in after
    assert tomllib.loads(after)["profiles"]["base"]["description"] == "it's"


def test_set_new_key_joins_its_dotted_siblings() -> None:
    after = set_value(FILE, "base", "server.max_tokens", 256)
    lines = after.splitlines()
    assert lines[lines.index('server.host = "127.0.0.1"') + 1] == "server.max_tokens = 256"
    assert unset_value(after, "base", "server.max_tokens") == FILE


def test_set_new_key_in_existing_sub_table() -> None:
    after = set_value(FILE, "base", "agent.max_turns", 5)
    assert "temperature = 0.2\nmax_turns = 5\n\n# Extends base." in after
    assert unset_value(after, "base", "agent.max_turns") == FILE


def test_set_new_key_in_inline_table_keeps_its_style() -> None:
    after = set_value(FILE, "tuned", "server.temperature", 0.7)
    assert "server = { port = 8082, max_tokens = 512, temperature = 0.7 }" in after
    assert unset_value(after, "tuned", "server.temperature") == FILE


def test_set_in_inline_table_replaces_the_value_in_place() -> None:
    after = set_value(FILE, "tuned", "server.port", 8090)
    assert _diff(FILE, after) == (
        ["server = { port = 8082, max_tokens = 512 }"],
        ["server = { port = 8090, max_tokens = 512 }"],
    )


def test_set_new_table_becomes_a_dotted_key() -> None:
    after = set_value(FILE, "tuned", "agent.permissions.write_file", "allow")
    assert 'agent.permissions.write_file = "allow"' in after
    assert tomllib.loads(after)["profiles"]["tuned"]["agent"] == {"permissions": {"write_file": "allow"}}
    assert unset_value(after, "tuned", "agent.permissions.write_file") == FILE


def test_set_on_profile_without_header_adds_one_and_unset_removes_it() -> None:
    after = set_value(FILE, "remote", "description", "Already running")
    assert '[profiles.remote]\ndescription = "Already running"\n\n[profiles.remote.server]' in after
    validate_text(after)
    assert unset_value(after, "remote", "description") == FILE


def test_set_free_form_table_key() -> None:
    after = set_value(FILE, "base", "server.chat_template_args.enable_thinking", False)
    assert "server.chat_template_args.enable_thinking = false" in after
    assert unset_value(after, "base", "server.chat_template_args.enable_thinking") == FILE


def test_set_list_value() -> None:
    after = set_value(FILE, "base", "agent.tools", parse_value('["read_file", "search"]'))
    assert tomllib.loads(after)["profiles"]["base"]["agent"]["tools"] == ["read_file", "search"]


def test_unset_last_key_removes_the_empty_table_but_not_the_next_heading() -> None:
    after = unset_value(FILE, "base", "agent.temperature")
    assert "[profiles.base.agent]" not in after
    assert "# Extends base.\n[profiles.tuned]" in after
    assert "agent" not in tomllib.loads(after)["profiles"]["base"]


def test_unset_keeps_a_table_that_has_a_comment() -> None:
    text = '[profiles.a]\nmodel = "m"\n\n[profiles.a.agent]\n# tuned by hand\nmax_turns = 3\n'
    after = unset_value(text, "a", "agent.max_turns")
    assert after == '[profiles.a]\nmodel = "m"\n\n[profiles.a.agent]\n# tuned by hand\n'


def test_unset_whole_inline_table_line() -> None:
    after = unset_value(unset_value(FILE, "tuned", "server.port"), "tuned", "server.max_tokens")
    assert "server = {" not in after
    assert _diff(FILE, after) == (["server = { port = 8082, max_tokens = 512 }"], [])


def test_unset_never_removes_the_profile() -> None:
    after = unset_value(FILE, "remote", "server.url")
    assert "remote" in tomllib.loads(after)["profiles"]


def test_unset_missing_key_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="'server.max_tokens' is not set"):
        unset_value(FILE, "base", "server.max_tokens")


@pytest.mark.parametrize(
    ("profile", "key", "message"),
    [
        ("base", "server.prot", "unknown key 'server.prot', did you mean 'port'"),
        ("base", "modle", "did you mean 'model'"),
        ("base", "model.name", "'model' is a single value"),
        ("base", "server", "'server' is a table"),
        ("bsae", "model", "no profile named 'bsae'"),
    ],
)
def test_set_refuses_with_reason(profile: str, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        set_value(FILE, profile, key, 1)
    assert message in info.value.render()


def test_no_profile_hint_is_did_you_mean() -> None:
    with pytest.raises(ConfigError) as info:
        set_value(FILE, "bsae", "model", "x")
    assert info.value.hint == "did you mean 'base'?"


def test_new_profile_appends_a_table() -> None:
    after = new_profile(FILE, "fresh")
    assert after == FILE + "\n[profiles.fresh]\n"
    validate_text(after)


def test_new_profile_from_copies_tables_and_comments() -> None:
    after = new_profile(FILE, "copy", from_="base")
    assert after.startswith(FILE)
    added = after[len(FILE) :]
    assert "# The plain one.\n[profiles.copy]\n" in added and "[profiles.copy.agent]" in added
    data = tomllib.loads(after)["profiles"]
    assert data["copy"] == data["base"]


def test_new_profile_from_inline_profile() -> None:
    text = '[profiles]\na = { model = "m", server = { port = 1 } }\n'
    after = new_profile(text, "b", from_="a")
    assert tomllib.loads(after)["profiles"]["b"] == {"model": "m", "server": {"port": 1}}


def test_new_profile_refuses_existing_name() -> None:
    with pytest.raises(ConfigError, match="already exists"):
        new_profile(FILE, "base")


def test_rename_follows_extends_and_default_profile() -> None:
    after = rename_profile(FILE, "base", "plain")
    removed, added = _diff(FILE, after)
    assert removed == ["default_profile = 'base'", "[profiles.base]", "[profiles.base.agent]", 'extends = "base"']
    assert added == ["default_profile = 'plain'", "[profiles.plain]", "[profiles.plain.agent]", 'extends = "plain"']
    assert rename_profile(after, "plain", "base") == FILE


def test_rename_header_keeps_its_comment() -> None:
    text = "[profiles.a]  # the first\nmodel = 'm'\n"
    assert rename_profile(text, "a", "b") == "[profiles.b]  # the first\nmodel = 'm'\n"


def test_rename_quotes_names_that_need_it() -> None:
    after = rename_profile(FILE, "remote", "far away")
    assert '[profiles."far away".server]' in after
    assert "far away" in tomllib.loads(after)["profiles"]


def test_rename_inline_profile() -> None:
    text = '[profiles]\na = { model = "m" }  # note\nb = { extends = "a" }\n'
    after = rename_profile(text, "a", "z")
    assert after == '[profiles]\nz = { model = "m" }  # note\nb = { extends = "z" }\n'


def test_rename_refuses_existing_target() -> None:
    with pytest.raises(ConfigError, match="already exists"):
        rename_profile(FILE, "base", "tuned")


def test_remove_profile_takes_its_tables_and_heading() -> None:
    after = remove_profile(FILE, "tuned")
    assert "tuned" not in after and "Extends base" not in after
    assert after == FILE.replace(FILE[FILE.index("# Extends base.") : FILE.index("[profiles.remote.server]")], "")


def test_remove_refuses_extended_profile() -> None:
    with pytest.raises(ConfigError) as info:
        remove_profile(FILE, "base")
    assert "extended by 'tuned'" in info.value.message and "default_profile" in info.value.message
    assert "--force" in (info.value.hint or "")


def test_remove_force_drops_references() -> None:
    after = remove_profile(FILE, "base", force=True)
    data = tomllib.loads(after)
    assert "base" not in data["profiles"] and "default_profile" not in data
    assert "extends" not in data["profiles"]["tuned"]
    validate_text(after)


def test_snippet_and_replace() -> None:
    snippet = profile_snippet(FILE, "base")
    assert snippet.startswith("# The plain one.\n[profiles.base]\n")
    assert "[profiles.tuned]" not in snippet
    edited = snippet.replace("temperature = 0.2", "temperature = 0.3")
    after = replace_profile(FILE, "base", edited)
    assert _diff(FILE, after) == (["temperature = 0.2"], ["temperature = 0.3"])


def test_replace_refuses_other_tables() -> None:
    with pytest.raises(ConfigError, match="may only hold profiles.base"):
        replace_profile(FILE, "base", "[profiles.base]\nmodel = 'x'\n[profiles.other]\n")
    with pytest.raises(ConfigError, match="no longer holds"):
        replace_profile(FILE, "base", "# gone\n")
    with pytest.raises(ConfigError, match=r"edited profile:1:15: invalid TOML: Expected .\]. at the end of a table declaration\n    \[profiles.base\n {18}\^"):
        replace_profile(FILE, "base", "[profiles.base\n")


def test_apply_edit_refuses_invalid_result_and_keeps_file(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(FILE)
    with pytest.raises(ConfigError) as info:
        apply_edit(path, lambda text: set_value(text, "base", "server.port", 70000))
    assert "profiles.base.server.port" in info.value.render()
    assert ":11" in (info.value.where or "")  # the line of server.port in the edited text
    assert path.read_text() == FILE


def test_apply_edit_refuses_broken_extends(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(FILE)
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        apply_edit(path, lambda text: set_value(text, "tuned", "extends", "nope"))
    with pytest.raises(ConfigError, match="cycle"):
        apply_edit(path, lambda text: set_value(text, "base", "extends", "tuned"))
    assert path.read_text() == FILE


def test_apply_edit_names_file_and_line_for_core_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "punie.toml"
    path.write_text(FILE)
    with pytest.raises(ConfigError) as info:
        apply_edit(path, lambda text: set_value(text, "base", "server.prot", 1))
    assert info.value.render().startswith("punie.toml:9: profiles.base: unknown key 'server.prot'")


def test_apply_edit_writes_valid_edit(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    path.write_text(FILE)
    result = apply_edit(path, lambda text: set_value(text, "base", "server.port", 9000))
    assert path.read_text() == result
    assert tomllib.loads(result)["profiles"]["base"]["server"]["port"] == 9000


def test_apply_edit_create(tmp_path: Path) -> None:
    path = tmp_path / "punie.toml"
    with pytest.raises(ConfigError, match="no such profiles file"):
        apply_edit(path, lambda text: new_profile(text, "a"))
    apply_edit(path, lambda text: new_profile(text, "a"), create=True)
    assert path.read_text() == "[profiles.a]\n"


def test_parse_value_rule() -> None:
    assert parse_value("8081") == 8081
    assert parse_value("true") is True
    assert parse_value("0.5") == 0.5
    assert parse_value('"8081"') == "8081"
    assert parse_value("builtin:smollm2-135m-instruct") == "builtin:smollm2-135m-instruct"
    assert parse_value('["a", "b"]') == ["a", "b"]


@pytest.mark.parametrize("key", ["", "a..b", "a = 1\nb", "server.port = 2 #", "[x]"])
def test_split_key_refuses_non_keys(key: str) -> None:
    with pytest.raises(UsageError, match="not a valid key"):
        set_value(FILE, "base", key, 1)


def test_quoted_key_parts() -> None:
    after = set_value(FILE, "base", 'server.chat_template_args."enable.thinking"', True)
    assert tomllib.loads(after)["profiles"]["base"]["server"]["chat_template_args"] == {"enable.thinking": True}
    assert unset_value(after, "base", 'server.chat_template_args."enable.thinking"') == FILE


def test_remove_force_inlines_nested_tables_and_respects_the_adapter_form() -> None:
    from punie.config.loader import parse_config
    from punie.config.resolve import resolve_many

    text = """\
[profiles.root]
model = "builtin:smollm2-135m-instruct"

[profiles.mid]
extends = "root"
adapter = "a1"
server = { port = 8100, chat_template_args = { x = { y = 1 }, "odd key" = true } }

[profiles.leaf]  # keeps its comment
extends = "mid"
adapters = ["b1", "b2"]

[profiles.leaf.server.chat_template_args.x]
z = 2
"""

    def resolved(t: str) -> dict[str, object]:
        source = parse_config(t, display="punie.toml")
        return {r.name: r.profile.model_dump(exclude={"extends"}) for r in resolve_many(source, (), env={})}

    after = remove_profile(text, "mid", force=True)
    assert "[profiles.leaf]  # keeps its comment" in after
    leaf = tomllib.loads(after)["profiles"]["leaf"]
    assert leaf["extends"] == "root" and "adapter" not in leaf
    assert leaf["server"]["chat_template_args"] == {"x": {"y": 1, "z": 2}, "odd key": True}
    before = resolved(text)
    assert resolved(after) == {"root": before["root"], "leaf": before["leaf"]}
