"""One home per fact: the non-profile PUNIE_ variables, the Hugging Face cache, URLs, loopback."""

from __future__ import annotations

import ast
import functools
import logging
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import punie
from punie import envvars
from punie.config import load_profile
from punie.config.models import Profile
from punie.launch import build_plan
from punie.net import is_loopback_url, openai_base_url, server_root
from punie.paths import current_umask, hf_hub_cache
from punie.weights import resolve
from tests.support.launch_helpers import resolved

SRC = Path(punie.__file__).parent


def test_punie_guard_mode_is_not_warned_about_as_a_profile_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "punie.toml").write_text('[profiles.a]\nmodel = "m"\n')
    monkeypatch.setenv("PUNIE_GUARD_MODE", "watchdog")
    monkeypatch.setenv("PUNIE_MODLE", "x")  # a typo still is
    with caplog.at_level(logging.WARNING):
        load_profile("a", config=tmp_path / "punie.toml")
    assert "PUNIE_GUARD_MODE" not in caplog.text
    assert "ignoring PUNIE_MODLE: not a profile key" in caplog.text


def test_every_punie_variable_in_the_source_is_a_profile_key_or_in_the_one_list() -> None:
    profile_keys = {name.upper() for name in Profile.model_fields}
    seen = set()
    for path in SRC.rglob("*.py"):
        for name in re.findall(r"\bPUNIE_[A-Z][A-Z0-9_]*\b", path.read_text(encoding="utf-8")):
            seen.add(name)
    assert "PUNIE_GUARD_MODE" in seen
    for name in seen:
        head = name.removeprefix("PUNIE_").split("__", 1)[0]
        assert name in envvars.NON_PROFILE or head in profile_keys, f"{name}: add it to punie.envvars"


def test_huggingface_hub_cache_is_seen_by_the_plan_and_the_model_resolver(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy-hub"
    env = {"HUGGINGFACE_HUB_CACHE": str(legacy), "HF_HOME": str(tmp_path / "home")}
    plan = build_plan(resolved(tmp_path), model_path=tmp_path / "model", adapter_path=None, environ=env)
    assert plan.server_env["HF_HUB_CACHE"] == str(legacy) == str(hf_hub_cache(env))
    assert resolve.hf_hub_cache is hf_hub_cache  # one resolver
    both = {**env, "HF_HUB_CACHE": str(tmp_path / "new")}
    plan = build_plan(resolved(tmp_path), model_path=tmp_path / "model", adapter_path=None, environ=both)
    assert plan.server_env["HF_HUB_CACHE"] == str(tmp_path / "new") == str(hf_hub_cache(both))


def test_url_rules() -> None:
    assert server_root("http://h:1/v1/") == "http://h:1" and openai_base_url("http://h:1") == "http://h:1/v1"
    assert is_loopback_url("http://[::1]:8/v1") and is_loopback_url("http://localhost:1")
    assert not is_loopback_url("http://10.0.0.1:1")


def test_umask_is_read_without_changing_it() -> None:
    import os

    old = os.umask(0o027)
    try:
        assert current_umask() == 0o027
        assert current_umask() == 0o027
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- literals with one home
#
# Each fact below has ONE module that defines it; an ast scan of src/punie fails when its literal (or
# its hand-written parse) stands anywhere else. ``allowed`` names the few places that keep one, with
# the reason.

@dataclass(frozen=True)
class Rule:
    fact: str
    home: str  # the module (path under src/punie) that defines the fact
    match: Callable[[ast.AST], bool]
    allowed: Mapping[str, str] = field(default_factory=dict)  # path -> why it keeps its own


def _const(node: ast.AST) -> object:
    return node.value if isinstance(node, ast.Constant) else None


def _grace_binding(node: ast.AST) -> bool:
    """A number bound to something called grace: a parameter default, a constant, a --grace default."""
    def number(value: ast.AST | None) -> bool:
        return value is not None and isinstance(_const(value), float | int) and not isinstance(_const(value), bool)

    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
        args = node.args
        positional = [*args.posonlyargs, *args.args]
        pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults, strict=True))
        pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d is not None]
        return any("grace" in a.arg.lower() and number(d) for a, d in pairs)
    if isinstance(node, ast.Assign | ast.AnnAssign):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        names = [t.id for t in targets if isinstance(t, ast.Name)] + [t.attr for t in targets if isinstance(t, ast.Attribute)]
        return any("grace" in n.lower() for n in names) and number(node.value)
    if isinstance(node, ast.Call) and any(_const(a) == "--grace" for a in node.args):
        return any(k.arg == "default" and number(k.value) for k in node.keywords)
    return False


def _mib(node: ast.AST) -> bool:
    if _const(node) == 1 << 20:
        return True
    if isinstance(node, ast.BinOp):
        pair = (_const(node.left), _const(node.right))
        return (isinstance(node.op, ast.LShift) and pair == (1, 20)) or (isinstance(node.op, ast.Mult) and pair == (1024, 1024))
    return False


def _env_names() -> set[str]:
    return {v for k, v in vars(envvars).items() if k.isupper() and isinstance(v, str) and v != envvars.PREFIX}


def _env_literal(node: ast.AST) -> bool:
    value = _const(node)
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not isinstance(value, str):
        return False
    name = value.removesuffix("=")
    return name in _env_names() or re.fullmatch(r"PUNIE_[A-Z][A-Z0-9_]*", name) is not None


def _severity(node: ast.AST) -> bool:
    if not (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name | ast.Attribute)):
        return False
    name = node.value.id if isinstance(node.value, ast.Name) else node.value.attr
    elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
    return name == "Literal" and {_const(e) for e in elts} == {"error", "warning"}


def _proc_stat(node: ast.AST) -> bool:
    if isinstance(node, ast.JoinedStr):
        text = "{}".join(str(_const(v)) for v in node.values if isinstance(v, ast.Constant))
        return text.startswith("/proc/") and text.endswith("/stat")
    value = _const(node)
    return isinstance(value, str) and value.startswith("/proc/") and value.endswith("/stat")


def _error_wording(node: ast.AST) -> bool:
    return isinstance(_const(node), str) and "punie: error" in str(_const(node))  # f-string parts too


def _exit_code_literal(node: ast.AST) -> bool:
    """A non-zero exit code written as a number: ``exit(3)``, ``exit_code=1``, ``128 + signal.SIGINT``."""
    def code(value: ast.AST) -> bool:
        return isinstance(_const(value), int) and not isinstance(_const(value), bool) and _const(value) != 0

    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):
        name = node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id
        if name in ("exit", "_exit") and node.args and code(node.args[0]):
            return True
        return any(k.arg == "exit_code" and code(k.value) for k in node.keywords)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add) and _const(node.left) == 128:
        return isinstance(node.right, ast.Attribute) and node.right.attr == "SIGINT"
    return False


def _rename(node: ast.AST) -> bool:
    """``os.replace``/``os.rename``/``Path.rename``: the second half of a temp-file-then-rename."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    func = node.func
    if isinstance(func.value, ast.Name) and func.value.id == "os":
        return func.attr in ("replace", "rename")
    return func.attr == "rename"


RULES = [
    Rule("the stop grace (seconds between SIGTERM and SIGKILL)", "limits.py", _grace_binding),
    Rule('the loopback address "127.0.0.1"', "net.py", lambda n: _const(n) == "127.0.0.1"),
    Rule("1 MiB (the read cap, the I/O chunk, small-file cap)", "limits.py", _mib),
    Rule('the state folder ".punie"', "paths.py", lambda n: _const(n) == ".punie"),
    Rule("an environment variable's name", "envvars.py", _env_literal, {
        "cli/fastcomplete.py": "runs before anything else is imported; imports envvars, names PUNIE_COMPLETE",
    }),
    Rule('the Severity literal Literal["error", "warning"]', "findings.py", _severity),
    Rule("a parse of /proc/PID/stat", "procfs.py", _proc_stat, {
        "agent/reaper.py": "runs as a standalone script (python reaper.py ...): it imports no punie module",
    }),
    Rule('the error wording "punie: error:"', "errors.py", _error_wording),
    Rule("a non-zero exit code (ExitCode)", "errors.py", _exit_code_literal, {
        "agent/reaper.py": "runs as a standalone script (python reaper.py ...): it imports no punie module",
        "launch/guard.py": "its watchdog is a python -c script that imports nothing",
    }),
    Rule('the profiles file\'s name "punie.toml"', "paths.py", lambda n: _const(n) == "punie.toml", {
        "cli/fastcomplete.py": "TAB completion: stdlib only, runs before anything else is imported",
        "training/generate.py": "file names a generated training example lists (data, not the rule)",
    }),
    Rule("an adapter's file names (adapter_config.json, punie-adapter.json...)", "adapters/files.py",
         lambda n: _const(n) in ("adapter_config.json", "adapters.safetensors", "punie-adapter.json"), {
             "cli/fastcomplete.py": "TAB completion: stdlib only, runs before anything else is imported",
         }),
    Rule("a temp-file-then-rename", "config/atomic.py", _rename, {
        "agent/fs.py": "renames relative to the workspace's directory descriptors (the agent's confinement rule)",
        "launch/process.py": "log rotation: shifts finished logs (app.log.1 -> .2), no temporary file",
        "training/train.py": "moves finished checkpoints inside its own staging directory, published by replace_dir",
        "agent/reaper.py": "runs as a standalone script (python reaper.py ...): it imports no punie module",
    }),
]


@functools.cache
def _nodes(text: str, path: str) -> list[ast.AST]:
    """Every node of a module, parsed once for all the rules."""
    return list(ast.walk(ast.parse(text, filename=path)))


def violations(rule: Rule, sources: Mapping[str, str]) -> list[str]:
    """``path:line`` of every node of ``sources`` (path under src/punie -> text) matching ``rule``
    outside its home and its allowed places."""
    found = []
    for path, text in sources.items():
        if path == rule.home or path in rule.allowed:
            continue
        for node in _nodes(text, path):
            if rule.match(node):
                found.append(f"{path}:{getattr(node, 'lineno', '?')}")
    return found


def _sources() -> dict[str, str]:
    return {p.relative_to(SRC).as_posix(): p.read_text(encoding="utf-8") for p in sorted(SRC.rglob("*.py"))}


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.home)
def test_each_fact_is_written_only_in_its_home(rule: Rule) -> None:
    sources = _sources()
    assert rule.home in sources, f"{rule.home} is gone: move the home, then this rule"
    assert set(rule.allowed) <= set(sources), "an allowed place is gone: shorten the list"
    assert violations(rule, sources) == [], f"{rule.fact}: import it from punie/{rule.home}"


PLANTED = {
    "the stop grace (seconds between SIGTERM and SIGKILL)": [
        "def stop(grace: float = 5.0): ...", "async def stop(*, grace_s=3): ...", "DEFAULT_GRACE = 5.0",
        "self.kill_grace = 2.5", 'click.option("--grace", type=float, default=5.0)'],
    'the loopback address "127.0.0.1"': ['HOST = "127.0.0.1"', 'connect(("127.0.0.1", 80))'],
    "1 MiB (the read cap, the I/O chunk, small-file cap)": ["fh.read(1 << 20)", "CAP = 1024 * 1024", "n = 1048576"],
    'the state folder ".punie"': ['root / ".punie" / "logs"'],
    "an environment variable's name": ['os.environ.get("PUNIE_CONFIG")', 'env["HF_HUB_OFFLINE"] = "1"',
                                       'raw.startswith(b"PUNIE_PROFILE=")', 'os.getenv("PUNIE_NEW_THING")'],
    'the Severity literal Literal["error", "warning"]': ['S = Literal["warning", "error"]',
                                                          'S = typing.Literal["error", "warning"]'],
    "a parse of /proc/PID/stat": ['open(f"/proc/{pid}/stat")', 'open("/proc/self/stat", "rb")'],
    'the error wording "punie: error:"': ['click.echo("punie: error: " + text)', 'f"punie: error: {exc}"'],
    "a non-zero exit code (ExitCode)": ["ctx.exit(130)", "sys.exit(3)", "UpOutcome(exit_code=1)",
                                        "code = 128 + signal.SIGINT"],
    'the profiles file\'s name "punie.toml"': ['path = root / "punie.toml"'],
    "an adapter's file names (adapter_config.json, punie-adapter.json...)": [
        '(d / "adapter_config.json").is_file()', 'META = "punie-adapter.json"'],
    "a temp-file-then-rename": ["os.replace(tmp, path)", "os.rename(a, b)", "tmp.rename(final)"],
}
HARMLESS = [
    'def wait(timeout: float = 5.0): ...', 'HOST = "127.0.0.1:8080 is an example"', "n = 64 * 1024 * 1024",
    'name = ".punie-backup"', 'os.environ.get(envvars.CONFIG)', 'x = Literal["error", "warning", "info"]',
    'open(f"/proc/{pid}/cmdline")', "ctx.exit(0)", "ctx.exit(ExitCode.USAGE)", 'say("punie: warning")',
    'text.replace("a", "b")', "fh.read(CHUNK_BYTES)", 'p = "PUNIE_"',
]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.home)
def test_the_scanner_finds_a_planted_literal_and_spares_its_home(rule: Rule) -> None:
    planted = PLANTED[rule.fact]
    assert planted
    for i, line in enumerate(planted):
        assert violations(rule, {f"planted{i}.py": line}) == [f"planted{i}.py:1"], line
        assert violations(rule, {rule.home: line}) == []  # the home may define it
        for allowed in rule.allowed:
            assert violations(rule, {allowed: line}) == []
    assert violations(rule, {f"h{i}.py": line for i, line in enumerate(HARMLESS)}) == []


def test_the_homes_define_the_facts_the_rules_name() -> None:
    from punie import limits, paths, procfs
    from punie.findings import Severity
    from punie.net import LOOPBACK

    assert limits.STOP_GRACE == 5.0 and limits.MAX_READ_BYTES == limits.CHUNK_BYTES == 1 << 20
    assert LOOPBACK == "127.0.0.1" and paths.STATE_DIR_NAME == ".punie" and paths.CONFIG_NAME == "punie.toml"
    assert set(typing.get_args(Severity)) == {"error", "warning"}
    import os

    fields = procfs.stat_fields(os.getpid())
    if fields is not None:  # Linux
        assert procfs.parent_pid(os.getpid()) == os.getppid()
        assert procfs.process_state(os.getpid()) == "R"
        assert procfs.start_ticks(os.getpid()) == procfs.start_ticks("self")
        assert os.getpid() in procfs.subtree(os.getppid(), procfs.children_map())
    assert procfs.stat_fields(2**22 + 7) is None and procfs.parent_pid(2**22 + 7) is None


def test_one_grace_reaches_every_stop() -> None:
    import inspect

    import punie.api
    from punie import limits
    from punie.launch import guard, runner, server, supervisor

    stops = [punie.api.serve, guard.guarded_argv, runner.run_to_end, server.running_server,
             supervisor.supervise, supervisor.run_up]
    from punie.config.models import ServerOptions
    from punie.launch.plan import LaunchPlan

    defaults = {inspect.signature(f).parameters["grace"].default for f in stops}
    # None: the plan's shutdown grace (the profile's [server.shutdown] grace), whose default is the one
    assert defaults <= {limits.STOP_GRACE, None} and defaults
    assert ServerOptions().shutdown.grace == limits.STOP_GRACE
    assert LaunchPlan.model_fields["shutdown_grace"].default == limits.STOP_GRACE


def test_procfs_sees_a_zombie_child_and_leaves_it_out_of_the_live_tree() -> None:
    import os
    import subprocess
    import sys
    import time

    from punie import procfs

    if procfs.stat_fields(os.getpid()) is None:
        pytest.skip("no /proc here")
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        deadline = time.monotonic() + 60
        while procfs.process_state(child.pid) != "Z":  # exited, not yet reaped (we have not waited)
            assert time.monotonic() < deadline, procfs.process_state(child.pid)
            time.sleep(0.05)
        assert procfs.parent_pid(child.pid) == os.getpid()
        assert child.pid in procfs.children_map()[os.getpid()]
        assert child.pid not in procfs.children_map(live_only=True).get(os.getpid(), [])
        assert child.pid in procfs.subtree(os.getpid(), procfs.children_map())
    finally:
        child.wait()
    assert procfs.process_state(child.pid) is None or procfs.parent_pid(child.pid) != os.getpid()
