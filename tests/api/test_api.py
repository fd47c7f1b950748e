"""The public Python API (`punie.api`): the same functions and results as the CLI.

The server context manager is tested against a real mlx_lm.server on the tiny offline
model: after the block returns, raises, is cancelled or is interrupted, no process is left
and the port is free.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import httpx
import pytest
from click.testing import CliRunner

import punie.api as api
from punie.cli import main
from tests.support.launch_helpers import alive, free_port, port_free, reap

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"


def _documented_names() -> set[str]:
    """The names in the README's "Python API" table (first column, in backticks)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    names: set[str] = set()
    for row in rows:
        names |= set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row.split("|")[1]))
    return names


def test_the_public_names_are_exactly_the_documented_ones() -> None:
    assert set(api.__all__) == _documented_names()
    assert len(api.__all__) == len(set(api.__all__))
    for name in api.__all__:
        obj = getattr(api, name)
        assert (obj.__doc__ or "").strip(), f"punie.api.{name} has no docstring"
    public = {n for n, v in vars(api).items() if not n.startswith("_") and getattr(v, "__module__", None) == api.__name__}
    assert public <= set(api.__all__), public - set(api.__all__)  # nothing public by accident


def test_punie_itself_forwards_the_api_lazily() -> None:
    code = "import sys, punie; assert 'punie.api' not in sys.modules; punie.check; assert 'punie.api' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "punie.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_profiles_from_a_file_a_dict_and_the_builtin_resolve_alike(tmp_path: Path) -> None:
    text = """
        [defaults.server]
        port = 9001
        [profiles.a]
        model = "builtin:smollm2-135m-instruct"
        [profiles.b]
        extends = "a"
        [profiles.b.server]
        temperature = 0.3
    """
    path = _write(tmp_path, text)
    from_file = api.load_profiles(path, overrides=["server.max_tokens=7"], env={})
    from_dict = api.load_profiles(
        {"defaults": {"server": {"port": 9001}},
         "profiles": {"a": {"model": "builtin:smollm2-135m-instruct"},
                      "b": {"extends": "a", "server": {"temperature": 0.3}}}},
        overrides=["server.max_tokens=7"], env={}, cwd=tmp_path,
    )
    assert [p.name for p in from_file] == [p.name for p in from_dict] == ["a", "b"]
    assert [p.profile for p in from_file] == [p.profile for p in from_dict]
    b = from_file[1].profile
    assert (b.server.port, b.server.temperature, b.server.max_tokens) == (9001, 0.3, 7)
    env = api.load_profile("b", path, env={"PUNIE_SERVER__PORT": "9002"})
    assert env.profile.server.port == 9002 and env.sources["server.port"] == "env"
    builtin = api.load_profile(source="builtin", env={})
    assert builtin.name == "demo" and builtin.profile.model == "builtin:smollm2-135m-instruct"


def test_configuration_errors_name_the_place_as_on_the_cli(tmp_path: Path) -> None:
    path = _write(tmp_path, """
        [profiles.a]
        model = "m"
        [profiles.a.server]
        prot = 1
    """)
    with pytest.raises(api.ConfigError) as info:
        api.load_profiles(path, env={})
    assert "punie.toml:5" in str(info.value) and "did you mean 'port'" in str(info.value)
    path.write_text('[profiles.alpha]\nmodel = "m"\n', encoding="utf-8")
    with pytest.raises(api.ConfigError, match="did you mean 'alpha'"):
        api.load_profile("alpah", path, env={})
    with pytest.raises(api.ConfigError):
        api.load_profiles({"profiles": {"x": {"model": "m", "server": {"port": "not a port"}}}}, env={})


def test_check_returns_exactly_what_punie_check_prints(tmp_path: Path, tiny_model: Path, tiny_adapter: Path,
                                                        tiny_model_wide: Path) -> None:
    path = _write(tmp_path, f"""
        [profiles.good]
        model = {json.dumps(str(tiny_model))}
        adapter = {json.dumps(str(tiny_adapter))}
        [profiles.good.server]
        port = {free_port()}
        [profiles.bad]
        model = {json.dumps(str(tiny_model_wide))}
        adapter = {json.dumps(str(tiny_adapter))}
        [profiles.bad.server]
        port = {free_port()}
    """)
    report = api.check(api.load_profiles(path))
    result = CliRunner().invoke(main, ["--config", str(path), "check", "--format", "json"])
    assert result.exit_code == 1
    assert report.to_json() == json.loads(result.output)
    assert not report.ok and [p.name for p in report.profiles] == ["good", "bad"]
    assert report.profiles[0].ok and not report.profiles[1].ok
    assert api.check(api.load_profile("good", path)).ok


def test_adapter_registry_and_composition(tmp_path: Path, tiny_adapter: Path) -> None:
    import shutil

    adapters = tmp_path / "adapters"
    shutil.copytree(tiny_adapter, adapters / "one")
    shutil.copytree(tiny_adapter, adapters / "two")
    (adapters / "two" / "punie-adapter.json").write_text(json.dumps(
        {"base_model": "m", "created": "2026-01-01T00:00:00Z", "score": 0.9}), encoding="utf-8")
    os.utime(adapters / "one" / "adapters.safetensors", (2_000_000_000, 2_000_000_000))
    names = [a.name for a in api.list_adapters(tmp_path)]
    assert names == ["one", "two"]
    assert api.best_adapter(tmp_path).name == "two"
    out = api.compose_adapters(["one", ("two", 0.5)], tmp_path / "adapters" / "both", project_dir=tmp_path)
    assert (out / "adapters.safetensors").is_file()
    assert "both" in [a.name for a in api.list_adapters(tmp_path)]
    with pytest.raises(api.AdapterError):
        api.compose_adapters(["one", "missing"], tmp_path / "x", project_dir=tmp_path)


# -- the server context manager, on a real mlx_lm.server ----------------------------------------


def _tiny_profile(tmp_path: Path, model: Path, adapter: Path) -> api.ResolvedProfile:
    path = _write(tmp_path, f"""
        [profiles.tiny]
        model = {json.dumps(str(model))}
        adapter = {json.dumps(str(adapter))}
        [profiles.tiny.server]
        port = {free_port()}
        ready_timeout = 90
    """)
    return api.load_profile("tiny", path, env={})


def _answer(base_url: str) -> dict:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = httpx.post(base_url + "/chat/completions", json=body, timeout=30, trust_env=False)
    response.raise_for_status()
    return response.json()


class Boom(Exception):
    pass


@pytest.mark.slow
@pytest.mark.mlx
def test_serve_answers_then_leaves_nothing_after_the_block_raises(tmp_path: Path, tiny_model: Path,
                                                                   tiny_adapter: Path) -> None:
    resolved = _tiny_profile(tmp_path, tiny_model, tiny_adapter)
    seen: dict[str, object] = {}

    async def run() -> None:
        async with api.serve(resolved, grace=2) as server:
            seen["server"] = server
            seen["answer"] = await anyio.to_thread.run_sync(_answer, server.base_url)
            raise Boom

    with pytest.raises(Boom):
        anyio.run(run)
    server = seen["server"]
    assert isinstance(server, api.Server)
    assert server.base_url == f"http://127.0.0.1:{resolved.profile.server.port}/v1"
    assert server.adapter is not None and Path(server.adapter) == tiny_adapter
    assert seen["answer"]["choices"]  # type: ignore[index]
    assert server.pid is not None and not alive(server.pid)
    assert port_free(resolved.profile.server.port)


@pytest.mark.slow
@pytest.mark.mlx
def test_serve_leaves_nothing_after_cancellation(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    resolved = _tiny_profile(tmp_path, tiny_model, tiny_adapter)
    seen: dict[str, api.Server] = {}

    async def run() -> None:
        with anyio.CancelScope() as scope:
            async with api.serve(resolved, grace=2) as server:
                seen["server"] = server
                scope.cancel()
                await anyio.sleep_forever()
        assert scope.cancelled_caught

    anyio.run(run)
    pid = seen["server"].pid
    assert pid is not None and not alive(pid)
    assert port_free(resolved.profile.server.port)


@pytest.mark.slow
@pytest.mark.mlx
def test_serve_leaves_nothing_after_keyboard_interrupt(tmp_path: Path, tiny_model: Path, tiny_adapter: Path) -> None:
    """Ctrl-C in a script: SIGINT raises KeyboardInterrupt inside the block."""
    resolved = _tiny_profile(tmp_path, tiny_model, tiny_adapter)
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(f"""
        import anyio, signal, sys
        import punie.api as punie

        # As in a terminal: a launcher that ran us as a background job leaves SIGINT ignored.
        signal.signal(signal.SIGINT, signal.default_int_handler)

        async def main():
            profile = punie.load_profile("tiny", {str(tmp_path / 'punie.toml')!r})
            async with punie.serve(profile, grace=2) as server:
                print("READY", server.pid, flush=True)
                await anyio.sleep_forever()

        try:
            anyio.run(main)
        except KeyboardInterrupt:
            print("INTERRUPTED", flush=True)
            sys.exit(130)
    """), encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY"), line
        pid = int(line.split()[1])
        assert alive(pid)
        proc.send_signal(signal.SIGINT)
        rest = proc.communicate(timeout=120)[0]
    finally:
        reap(proc)
    assert proc.returncode == 130 and "INTERRUPTED" in rest
    assert not alive(pid)
    assert port_free(resolved.profile.server.port)


@pytest.mark.slow
@pytest.mark.mlx
def test_serve_refuses_a_mismatched_adapter_before_anything_starts(tmp_path: Path, tiny_model_wide: Path,
                                                                     tiny_adapter: Path) -> None:
    resolved = _tiny_profile(tmp_path, tiny_model_wide, tiny_adapter)

    async def run() -> None:
        async with api.serve(resolved):
            raise AssertionError("the block must not run")

    with pytest.raises(api.CheckFailed):
        anyio.run(run)
    assert port_free(resolved.profile.server.port)


@pytest.mark.slow
def test_every_module_imports_on_its_own() -> None:
    """``import punie.paths`` in a fresh interpreter (no cycle through ``punie.__getattr__``):
    each module is imported in a forked child of an interpreter that has imported nothing of punie."""
    code = textwrap.dedent("""
        import os, sys
        src = sys.argv[1]
        names = []
        for folder, _dirs, files in os.walk(os.path.join(src, "punie")):
            package = os.path.relpath(folder, src).replace(os.sep, ".")
            names += [package if f == "__init__.py" else package + "." + f[:-3] for f in files if f.endswith(".py")]
        # Third-party libraries first, once: each child then pays only for punie's own modules
        # (what this test is about), not for importing pydantic-ai a hundred times over.
        # mlx and mlx_lm start no thread on import (nor do the others: forking after them is safe).
        for lib in ("pydantic", "pydantic_settings", "pydantic_ai", "openai", "httpx", "anyio", "click",
                    "numpy", "tomlkit", "acp", "prompt_toolkit", "psutil", "mlx.core", "mlx_lm", "transformers",
                    "huggingface_hub", "jinja2", "rich", "yaml", "safetensors"):
            try:
                __import__(lib)
            except ImportError:
                pass
        assert not any(m == "punie" or m.startswith("punie.") for m in sys.modules), "punie imported too early"
        failed = []
        for name in names:
            pid = os.fork()
            if pid == 0:
                try:
                    __import__(name)
                except BaseException as exc:
                    print(name, type(exc).__name__, exc, file=sys.stderr)
                    os._exit(1)
                os._exit(0)
            if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
                failed.append(name)
        print(len(names), "modules;", "failed:", failed)
        sys.exit(1 if failed else 0)
    """)
    src = str(REPO / "src")
    result = subprocess.run([sys.executable, "-c", code, src], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
