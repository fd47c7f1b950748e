"""`punie check` on the command line: text and JSON, exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from punie.cli import main
from tests.support.ports import free_port


def _config(tmp_path: Path, model: Path, adapter: Path, wide: Path) -> Path:
    path = tmp_path / "punie.toml"
    path.write_text(
        f"[profiles.good]\nmodel = {json.dumps(str(model))}\nadapter = {json.dumps(str(adapter))}\n"
        f"[profiles.good.server]\nport = {free_port()}\n"
        f"[profiles.bad]\nmodel = {json.dumps(str(wide))}\nadapter = {json.dumps(str(adapter))}\n"
        f"[profiles.bad.server]\nport = {free_port()}\n"
    )
    return path


def test_all_profiles_text_exit_1(tmp_path: Path, tiny_model: Path, tiny_adapter: Path, tiny_model_wide: Path) -> None:
    config = _config(tmp_path, tiny_model, tiny_adapter, tiny_model_wide)
    result = CliRunner().invoke(main, ["--config", str(config), "check"])
    assert result.exit_code == 1, result.output
    assert "profile good: ok" in result.output and "profile bad: FAILED" in result.output
    assert "does not match" in result.output


def test_named_profile_passes_exit_0(
    tmp_path: Path, tiny_model: Path, tiny_adapter: Path, tiny_model_wide: Path
) -> None:
    config = _config(tmp_path, tiny_model, tiny_adapter, tiny_model_wide)
    result = CliRunner().invoke(main, ["--config", str(config), "check", "good"])
    assert result.exit_code == 0, result.output
    assert "profile bad" not in result.output


def test_json_format(tmp_path: Path, tiny_model: Path, tiny_adapter: Path, tiny_model_wide: Path) -> None:
    config = _config(tmp_path, tiny_model, tiny_adapter, tiny_model_wide)
    result = CliRunner().invoke(main, ["--config", str(config), "check", "--format", "json"])
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False
    assert {p["name"]: p["ok"] for p in doc["profiles"]} == {"good": True, "bad": False}
    bad = doc["profiles"][1]
    assert bad["model_path"] == str(tiny_model_wide.resolve()) and bad["adapter_path"]
    assert sum(p["code"] == "shape-mismatch" for p in bad["problems"]) == 28


def test_set_override_fixes_the_profile(tmp_path: Path, tiny_model: Path, tiny_adapter: Path,
                                        tiny_model_wide: Path) -> None:
    config = _config(tmp_path, tiny_model, tiny_adapter, tiny_model_wide)
    result = CliRunner().invoke(main, ["--config", str(config), "check", "bad", "--set", f"model={tiny_model}"])
    assert result.exit_code == 0, result.output


def test_unknown_profile_is_a_usage_error(tmp_path: Path, tiny_model: Path, tiny_adapter: Path,
                                          tiny_model_wide: Path) -> None:
    config = _config(tmp_path, tiny_model, tiny_adapter, tiny_model_wide)
    result = CliRunner().invoke(main, ["--config", str(config), "check", "godo"])
    assert result.exit_code == 2
    assert "punie: error:" in result.output


def test_subprocess_exit_code(tmp_path: Path, tiny_model: Path, tiny_adapter: Path, tiny_model_wide: Path) -> None:
    config = _config(tmp_path, tiny_model, tiny_adapter, tiny_model_wide)
    proc = subprocess.run([sys.executable, "-m", "punie", "--config", str(config), "check", "bad", "--format", "json"],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["profiles"][0]["name"] == "bad"


def test_problems_name_the_line_the_value_is_written_on(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        (tmp_path / "punie.toml").write_text(
            "# profiles\n"
            "[defaults.server]\n"
            f"port = {busy.getsockname()[1]}\n"
            "\n"
            "[profiles.p]\n"
            'model = "no-such-dir/"\n'
            'adapter = "missing"\n'
        )
        result = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), "check", "--format", "json",
                                           "--set", "server.host=0.0.0.0"])
    finally:
        busy.close()
    assert result.exit_code == 1, result.output
    where = {p["code"]: p["where"] for p in json.loads(result.stdout)["profiles"][0]["problems"]}
    assert where["port"] == "punie.toml:3: defaults.server.port"
    assert where["model-not-found"] == "punie.toml:6: profiles.p.model"
    assert where["adapter-not-found"] == "punie.toml:7: profiles.p.adapter"
    assert where["remote-host"] == "--set server.host"


def test_a_value_from_defaults_is_named_where_it_is_written(tmp_path: Path) -> None:
    (tmp_path / "punie.toml").write_text(
        '[defaults]\nmodel = "no-such-dir/"\n\n[profiles.p]\ndescription = "x"\n'
        f"[profiles.p.server]\nport = {free_port()}\n"
    )
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "punie.toml"), "check", "--format", "json"])
    assert result.exit_code == 1, result.output
    (problem,) = json.loads(result.stdout)["profiles"][0]["problems"]
    assert (problem["code"], problem["where"]) == ("model-not-found", "punie.toml:2: defaults.model")
