"""Idle unload (issue 24): the supervisor stops the model server after ``server.idle_unload`` without a
request, keeps the agent, and starts the server again (readiness, canary) when the next prompt needs it;
the agent is told the model is loading. Real mlx_lm.server on the tiny model, real agent code."""

from __future__ import annotations

import json
import os
import re
import sys
import uuid
from pathlib import Path

import pytest

from punie.config.models import Profile, ResolvedProfile, ServerOptions, parse_duration
from punie.launch import run_up
from tests.support.launch_helpers import environ_has, live_pids
from tests.support.ports import free_port

IDLE_AGENT = str(Path(__file__).parents[1] / "support" / "idle_agent.py")


@pytest.mark.parametrize(("text", "seconds"), [("15m", 900), ("90s", 90), ("1h30m", 5400), ("500ms", 0.5),
                                               ("2", 2), ("1.5h", 5400)])
def test_idle_unload_is_a_typed_duration(text: str, seconds: float) -> None:
    assert ServerOptions(idle_unload=text).idle_unload == seconds
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["15 minutes", "m", "-1s", "0s", 0, "1d"])
def test_a_bad_duration_is_refused(bad: object) -> None:
    with pytest.raises(ValueError):
        ServerOptions(idle_unload=bad)


@pytest.mark.slow
@pytest.mark.mlx
@pytest.mark.timeout(400)
def test_the_idle_server_is_unloaded_and_the_next_prompt_wakes_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("mlx_lm")
    from tests.support.tiny import build_tiny_model

    marker = f"PUNIE_TEST_IDLE_MARK={uuid.uuid4().hex}"  # every process of the session inherits it
    monkeypatch.setenv(*marker.split("=", 1))
    monkeypatch.setenv("MLX_DISABLE_COMPILE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_tiny_model(tmp_path / "tiny")
    port = free_port()
    profile = ResolvedProfile(name="idle", config_path=str(tmp_path / "punie.toml"), profile=Profile(
        model=str(model), server=ServerOptions(port=port, idle_unload="2s", ready_timeout=120)))
    result = tmp_path / "result.json"
    lines: list[str] = []
    outcome = run_up(profile, check=False, sink=lines.append, log_dir=tmp_path / "logs",
                     agent_argv=[sys.executable, IDLE_AGENT, str(result), f"http://127.0.0.1:{port}/v1",
                                 "127.0.0.1", str(port)])
    text = "\n".join(lines)
    assert (outcome.reason, outcome.exit_code) == ("agent-exited", 0), text
    data = json.loads(result.read_text())
    # The first turn may already find the server asleep (the agent's start can take longer than 2 s on a
    # loaded machine); the second one always does, and is told so once.
    gone = data["statuses"].index("-- server gone --")
    assert data["statuses"][gone + 1:] == ["loading the model (it was unloaded while idle)..."], data
    assert set(data["statuses"][:gone]) <= {"loading the model (it was unloaded while idle)..."}, data
    assert all(isinstance(a, str) for a in data["answers"])
    servers = [int(p) for p in re.findall(r"started mlx_lm\.server \(pid (\d+)\)", text)]
    assert len(servers) == 2 + len(data["statuses"][:gone]) and len(set(servers)) == len(servers), text
    stopped = [int(p) for p in re.findall(r"no request for 2s: stopped mlx_lm\.server \(pid (\d+)\)", text)]
    # each one stopped while idle, then started again (the last one too, if the agent took 2 s to exit)
    assert stopped in (servers[:-1], servers), text
    assert len(re.findall(r"server ready on ", text)) == len(servers), text  # readiness checked on every wake
    assert len(re.findall(r"server ready on .* \(woken in \d+\.\d\ds\)", text)) == len(servers) - 1, text
    assert text.count("a request needs the model: starting mlx_lm.server again") == len(servers) - 1
    # nothing left: neither server, nor the agent, nor anything they started
    assert live_pids(lambda pid: pid != os.getpid() and environ_has(pid, marker)) == []
    assert not (tmp_path / ".punie" / "run" / "idle.json").exists()


def test_the_control_channel_protocol() -> None:
    """wake/done/touch on a real socket pair against IdleControl: a request in flight holds the server,
    a wake while asleep is answered loading then ready, a closed channel leaves nothing in flight."""
    import anyio

    from punie.agent.wake import Waker
    from punie.launch.idle import IdleControl

    async def scenario() -> None:
        control = IdleControl(0.3)
        ours, theirs = IdleControl.pair()
        waker = Waker(theirs)
        async with anyio.create_task_group() as tg:
            tg.start_soon(control.serve, ours)
            assert await anyio.to_thread.run_sync(waker.begin) == "ready"  # awake: at once
            assert control.in_flight == 1
            with anyio.move_on_after(0.8) as held:
                await control.idle()
            assert held.cancelled_caught and control.awake  # a request in flight: never idle
            waker.send("done")
            with anyio.fail_after(5):
                await control.idle()  # 0.3 s after the done
            assert not control.awake
            assert await anyio.to_thread.run_sync(waker.begin) == "loading"
            with anyio.fail_after(5):
                await control.wait_wake()
            control.ready()  # the supervisor started it again
            assert await anyio.to_thread.run_sync(waker.finish) == "ready"
            assert control.wakes == 1
            theirs.close()  # the agent exits with its request in flight
            with anyio.fail_after(5):
                while control.in_flight:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(scenario)


def test_a_failed_wake_is_told_to_the_agent() -> None:
    import anyio

    from punie.agent.wake import WakeFailed, Waker, ensure_awake
    from punie.launch.idle import IdleControl

    async def scenario() -> None:
        control = IdleControl(0.05)
        ours, theirs = IdleControl.pair()
        waker = Waker(theirs)
        async with anyio.create_task_group() as tg:
            tg.start_soon(control.serve, ours)
            await control.idle()

            async def supervisor() -> None:
                await control.wait_wake()
                control.failed("mlx_lm.server exited with code 1")

            tg.start_soon(supervisor)
            with pytest.raises(WakeFailed, match="could not be started again: mlx_lm.server exited with code 1"):
                await ensure_awake(waker)
            tg.cancel_scope.cancel()

    import asyncio

    asyncio.run(scenario())


def test_a_turn_that_wakes_the_server_tells_its_thoughts_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the ACP server hands run_turn (on_text, on_thought) is enough for the IDE to show the loading:
    the notice arrives as a thought, before the answer; the request's done leaves nothing in flight."""
    import asyncio

    import anyio

    from punie.agent import wake
    from punie.agent.runner import build_agent, run_turn
    from punie.config.models import AgentOptions
    from punie.launch.idle import IdleControl
    from tests.support.fake_openai import serve, text_reply

    events: list[str] = []

    async def scenario(url: str) -> None:
        control = IdleControl(0.05)
        ours, theirs = IdleControl.pair()
        monkeypatch.setattr(wake, "_waker", wake.Waker(theirs))
        monkeypatch.setattr(wake, "_checked", True)
        agent = build_agent(AgentOptions(tools=[]), url)
        async with anyio.create_task_group() as tg:
            tg.start_soon(control.serve, ours)
            await control.idle()  # asleep

            async def supervisor() -> None:
                await control.wait_wake()
                events.append("server started")
                control.ready()

            tg.start_soon(supervisor)

            async def on_text(piece: str) -> None:
                events.append(f"text {piece}")

            async def on_thought(piece: str) -> None:
                events.append(f"thought {piece}")

            result = await run_turn(agent, "hi", on_text=on_text, on_thought=on_thought)
            assert result.answer == "Hi there."
            with anyio.fail_after(5):
                while control.in_flight:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    with serve([text_reply("Hi there.")]) as fake:
        asyncio.run(scenario(fake.url))
    # the thought and the (fake, instant) start race; both come before the answer
    assert sorted(events[:2]) == sorted([f"thought {wake.LOADING}", "server started"]), events
    assert events[2:] == ["text Hi there."], events


def test_the_control_socket_serves_several_peers_and_only_its_user(tmp_path: Path) -> None:
    """The control socket `punie ask` uses: mode 0600; two peers asleep at once are both answered
    loading, then ready; a peer's request in flight holds the server like the agent's; the socket file
    is gone once the listener stops."""
    import stat

    import anyio

    from punie.agent.wake import Waker
    from punie.launch.idle import IdleControl

    path = tmp_path / "p.sock"

    async def scenario() -> None:
        control = IdleControl(0.2)
        async with anyio.create_task_group() as tg:
            await tg.start(control.listen, path)
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            first, second = Waker.connect(path), Waker.connect(path)
            assert first is not None and second is not None
            assert await anyio.to_thread.run_sync(first.begin) == "ready"  # awake: at once
            with anyio.fail_after(5):
                while control.in_flight != 1:
                    await anyio.sleep(0.01)
            with anyio.move_on_after(0.6) as held:
                await control.idle()
            assert held.cancelled_caught and control.awake  # its request holds the server
            first.send("done")
            with anyio.fail_after(5):
                await control.idle()
            assert not control.awake
            assert await anyio.to_thread.run_sync(first.begin) == "loading"
            assert await anyio.to_thread.run_sync(second.begin) == "loading"
            with anyio.fail_after(5):
                await control.wait_wake()
                while control.waiting != 2:
                    await anyio.sleep(0.01)
            control.ready()
            assert await anyio.to_thread.run_sync(first.finish) == "ready"
            assert await anyio.to_thread.run_sync(second.finish) == "ready"
            first.sock.close()
            second.sock.close()
            with anyio.fail_after(5):
                while control.in_flight:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
        assert not path.exists()

    anyio.run(scenario)


def test_no_control_socket_where_its_path_cannot_be_bound(tmp_path: Path) -> None:
    """A project so deep that the socket path passes the kernel's limit gets no socket (and says nothing
    false): the instance file names none, so `punie ask` does not try."""
    from punie.launch.instances import MAX_SOCKET_PATH, claim, control_socket, running
    from tests.support.launch_helpers import fake_plan

    deep = tmp_path / ("d" * (MAX_SOCKET_PATH + 10))
    deep.mkdir()
    shallow_plan = fake_plan(tmp_path, idle_unload=60.0)
    deep_plan = fake_plan(deep, idle_unload=60.0)
    with claim(shallow_plan) as claimed:
        assert claimed.control_socket is not None and claimed.control_socket.endswith(".sock")
        assert control_socket(tmp_path, claimed.profile, claimed.port) == Path(claimed.control_socket)
        assert "control_socket" not in claimed.to_json()  # not part of the plan's JSON (dry run unchanged)
    with claim(deep_plan) as claimed:
        assert claimed.control_socket is None
        assert [i.control for i in running(deep)] == [None]


@pytest.mark.slow
@pytest.mark.mlx
@pytest.mark.timeout(400)
def test_punie_ask_wakes_the_idle_server_of_a_running_punie_up(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """`punie up` of a profile with idle_unload; the server is stopped when idle; `punie ask --profile`
    in the same project wakes it through the control socket and gets its answer; the session then
    ends cleanly and leaves neither process nor socket."""
    import subprocess
    import threading

    pytest.importorskip("mlx_lm")
    from punie.config import load_profile
    from tests.support.tiny import build_tiny_model

    marker = f"IDLE_ASK_TEST_MARK={uuid.uuid4().hex}"
    monkeypatch.setenv(*marker.split("=", 1))
    model = build_tiny_model(tmp_path / "tiny")
    port = free_port()
    config = tmp_path / "punie.toml"
    config.write_text(f'[profiles.idle]\nmodel = {json.dumps(str(model))}\n'
                      f'[profiles.idle.server]\nport = {port}\nidle_unload = "2s"\nready_timeout = 120\n'
                      '[profiles.idle.agent]\ntools = []\nmax_tokens = 4\ntemperature = 0.0\n')
    stop = tmp_path / "stop"
    agent = [sys.executable, "-c", "import os, sys, time\nwhile not os.path.exists(sys.argv[1]): time.sleep(0.05)",
             str(stop)]
    resolved = load_profile("idle", config=config)
    lines: list[str] = []
    stopped = threading.Event()

    def sink(line: str) -> None:
        lines.append(line)
        if "no request for 2s: stopped mlx_lm.server" in line:
            stopped.set()

    outcome: list[object] = []
    runner = threading.Thread(target=lambda: outcome.append(run_up(resolved, check=False, sink=sink,
                                                                   agent_argv=agent)))
    runner.start()
    try:
        assert stopped.wait(240), "\n".join(lines)
        sockets = list((tmp_path / ".punie" / "run").glob("*.sock"))
        assert [s.name for s in sockets] == ["idle.sock"], sockets
        env = {**os.environ, "PUNIE_CONFIG": str(config)}
        ask = subprocess.run([sys.executable, "-m", "punie", "ask", "--profile", "idle", "--format", "json",
                              "hello"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert ask.returncode == 0, ask.stderr
        assert "answer" in json.loads(ask.stdout), ask.stdout
        text = "\n".join(lines)
        assert "a request needs the model: starting mlx_lm.server again" in text, text
        assert re.search(r"server ready on .* \(woken in \d+\.\d\ds\)", text), text
    finally:
        stop.touch()
        runner.join(120)
    assert outcome and outcome[0].reason == "agent-exited", "\n".join(lines)  # type: ignore[attr-defined]
    assert not list((tmp_path / ".punie" / "run").glob("*")), "instance file or socket left"
    assert live_pids(lambda pid: pid != os.getpid() and environ_has(pid, marker)) == []
