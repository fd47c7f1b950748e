"""The supervisor survives its own output (issue 25, item 3): a log on a full filesystem, a log
that cannot be written or closed, a child writing a huge line: the child's pipe is always
drained, memory stays bounded, and every session ends with a reason and an exit code."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from punie.launch import run_plan
from punie.launch.process import LINE_MAX_BYTES, Child, RotatingLog
from tests.support.launch_helpers import fake_plan, pump_to_end


@contextlib.contextmanager
def _tiny_tmpfs(path: Path, size: str = "64k") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only: skips the test otherwise)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_log_filesystem_does_not_stop_the_server_nor_decide_the_outcome(tmp_path: Path) -> None:
    """The log folder is a 64 kB tmpfs; the server prints ~1.5 MB before it serves: if the pump stopped
    at the first ENOSPC, the server would block on its full pipe and never answer."""
    with _tiny_tmpfs(tmp_path / "logs") as logs:
        plan = fake_plan(tmp_path, server_args=["--chatty", "20000"], agent_args=["--exit-after", "0.5"])
        plan = plan.model_copy(update={"server_log": str(logs / "server.log"), "agent_log": str(logs / "agent.log")})
        lines: list[str] = []
        outcome = run_plan(plan, sink=lines.append, grace=1.0, probe_interval=0.02)
        assert outcome.reason == "agent-exited" and outcome.exit_code == 0, outcome
        said = [line for line in lines if "server log: cannot write" in line and "dropped" in line]
        assert len(said) == 1, said  # said once, not once per line
        assert "No space left on device" in said[0]
        assert any("chatty log line 019999" in line for line in lines)  # every line still reached the sink
        assert (logs / "server.log").stat().st_size <= 64 * 1024


def test_a_log_that_cannot_be_written_counts_what_it_dropped(tmp_path: Path) -> None:
    problems: list[str] = []
    log = RotatingLog("/dev/full", max_bytes=10, backups=2, on_problem=problems.append)
    for index in range(100):
        log.write(f"line {index}\n")
    log.close()
    log.close()  # twice is fine
    assert log.dropped_lines == 100 and log.dropped_bytes == sum(len(f"line {i}\n") for i in range(100))
    assert len(problems) == 1 and "/dev/full" in problems[0]
    assert os.path.exists("/dev/full") and not os.path.exists("/dev/full.1")  # only regular files rotate


def test_a_log_resumes_when_the_disk_has_room_again(tmp_path: Path) -> None:
    with _tiny_tmpfs(tmp_path / "logs", "32k") as logs:
        filler = logs / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as fh:
            fh.write(b"x" * 64 * 1024)
        problems: list[str] = []
        log = RotatingLog(logs / "server.log", on_problem=problems.append)
        for index in range(50):
            log.write(f"lost {index} " + "y" * 100 + "\n")
        assert log.dropped_lines > 0 and len(problems) == 1
        filler.unlink()
        log.write("after the disk was freed\n")
        log.close()
        text = (logs / "server.log").read_text()
        assert "after the disk was freed" in text
        assert f"{log.dropped_lines} log lines" in text  # the last line says what was lost


def test_a_log_closed_behind_its_back_or_unopenable_never_raises(tmp_path: Path) -> None:
    log = RotatingLog(tmp_path / "a.log")
    log.write("one\n")
    assert log._fd is not None
    os.close(log._fd)  # EBADF on every later write and on close
    log.write("two\n")
    log.close()
    assert log.dropped_lines == 1
    (tmp_path / "dir.log").mkdir()
    unopenable = RotatingLog(tmp_path / "dir.log")  # EISDIR: nothing to write to
    unopenable.write("three\n")
    unopenable.close()
    assert unopenable.dropped_lines == 1 and unopenable.problem and "cannot open" in unopenable.problem


def test_a_server_log_on_dev_full_still_drains_and_shows_every_line(tmp_path: Path) -> None:
    code = "for i in range(5000): print(f'line {i:05d} ' + 'z' * 100)\n"
    lines: list[str] = []
    child = Child("server", [sys.executable, "-c", code], log_path="/dev/full", sink=lines.append)
    pump_to_end(child)
    assert child.returncode == 0
    assert sum(1 for line in lines if line.startswith("server | line ")) == 5000
    assert sum(1 for line in lines if "cannot write /dev/full" in line) == 1


def test_a_log_that_raises_on_close_does_not_decide_the_outcome(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_close(self: Child) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Child, "close", broken_close)
    plan = fake_plan(tmp_path, agent_args=["--exit-after", "0.3"])
    outcome = run_plan(plan, sink=lambda line: None, grace=1.0, probe_interval=0.02)
    assert outcome.reason == "agent-exited" and outcome.exit_code == 0


def test_an_unexpected_error_ends_with_a_reason_and_exit_code_3(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """An error inside a task of the supervisor (here: an output pump) is an outcome, never a traceback."""
    real_emit = Child._emit

    def emit(self: Child, raw: bytes, cut: int = 0) -> None:
        if self.name == "agent":
            raise RuntimeError("boom in the pump")
        real_emit(self, raw, cut)

    monkeypatch.setattr(Child, "_emit", emit)
    plan = fake_plan(tmp_path, agent_args=["--prompt", "punie> "])
    outcome = run_plan(plan, sink=lambda line: None, grace=1.0, probe_interval=0.02)
    assert outcome.reason == "supervisor-failed" and outcome.exit_code == 3
    assert "boom in the pump" in outcome.message
    started = [int(pid) for name in ("server.pid", "agent.pid") for pid in (tmp_path / name).read_text().split()]
    assert len(started) == 2 and not [pid for pid in started if _live(pid)]  # both stopped


def _live(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


_RSS_SCRIPT = """
import json, sys, anyio
from punie.launch.process import Child

def peak():
    for line in open('/proc/self/status'):
        if line.startswith('VmHWM:'):
            return int(line.split()[1]) * 1024
    return 0

lines = []
child = Child('server', [sys.executable, '-c', sys.argv[1]], log_path=sys.argv[2], sink=lines.append)

async def main():
    await child.start()
    async with anyio.create_task_group() as tg:
        tg.start_soon(child.pump)
        await child.wait()
        await child.drained(60)
        tg.cancel_scope.cancel()
    child.close()

before = peak()
anyio.run(main)
print(json.dumps({'before': before, 'after': peak(), 'lines': lines[-3:], 'rc': child.returncode}))
"""


@pytest.mark.slow
def test_a_hundred_megabytes_without_a_newline_costs_bounded_memory(tmp_path: Path) -> None:
    writer = ("import sys\nchunk = b'a' * (1 << 20)\n"
              "for _ in range(100): sys.stdout.buffer.write(chunk)\n"
              "sys.stdout.buffer.write(b'\\nafter\\n')\n")
    log = tmp_path / "server.log"
    done = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, writer, str(log)], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["rc"] == 0
    grown = result["after"] - result["before"]
    assert grown < 32 * 1024 * 1024, f"the supervisor's peak RSS grew by {grown / 1e6:.0f} MB"
    cut = 100 * (1 << 20) - LINE_MAX_BYTES
    assert result["lines"][-2].endswith(f"[punie: line truncated, {cut} more bytes dropped]")
    assert result["lines"][-1] == "server | after"
    assert log.stat().st_size < 2 * LINE_MAX_BYTES  # the log got the cut line too, not 100 MB
