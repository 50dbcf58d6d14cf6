"""The stack's process handling: pid records, crash detection, clear errors."""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from agora import config
from stack import base
from stack.base import ComponentError, Context, require_free_ports, wait_until


@pytest.fixture
def ctx(tmp_path: Path) -> Context:
    return Context(config.load({"AGORA_STATE_DIR": str(tmp_path)}))


def test_spawned_process_is_recorded_and_stopped(ctx: Context) -> None:
    pid = ctx.spawn("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert ctx.running_pid("sleeper") == pid
    assert ctx.stop("sleeper") is True
    assert ctx.running_pid("sleeper") is None
    assert not ctx.pid_file("sleeper").exists()


def test_an_interrupted_stop_keeps_the_record_of_a_process_still_running(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ignores SIGTERM, as Kafka or Elasticsearch take 30 s to stop: Ctrl-C meanwhile.
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    pid = ctx.spawn("stubborn", [sys.executable, "-c", stubborn])
    wait_until("stubborn", lambda: _ignores_sigterm(pid), timeout=30, ctx=ctx, interval=0.02)

    def interrupted(*_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(base.time, "sleep", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ctx.stop("stubborn", timeout=5)
    monkeypatch.undo()
    assert ctx.running_pid("stubborn") == pid  # still known: the next stop ends it
    assert ctx.stop("stubborn", timeout=0.2) is True
    assert ctx.running_pid("stubborn") is None


def _ignores_sigterm(pid: int) -> bool:
    """Whether the process has set SIGTERM to ignored (its SigIgn mask in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return bool(int(line.split()[1], 16) & (1 << (signal.SIGTERM - 1)))
    return False


def test_a_killed_process_is_seen_as_not_running(ctx: Context) -> None:
    ctx.spawn("victim", [sys.executable, "-c", "import time; time.sleep(60)"])
    ctx.kill("victim")
    assert ctx.running_pid("victim") is None


def test_a_stale_pid_record_of_a_reused_pid_is_not_trusted(ctx: Context) -> None:
    ctx.pids.mkdir(parents=True)
    # pid 1 runs, but it is not the process we started: its start time differs.
    ctx.pid_file("ghost").write_text('{"pid": 1, "start_time": "0", "argv": []}')
    assert ctx.running_pid("ghost") is None


def test_starting_twice_is_refused(ctx: Context) -> None:
    ctx.spawn("once", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(ComponentError, match="already running"):
            ctx.spawn("once", [sys.executable, "-c", "pass"])
    finally:
        ctx.stop("once")


def test_a_taken_port_names_the_port_and_the_fix(ctx: Context) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        ctx.settings.ports["redis"] = port
        with pytest.raises(ComponentError) as raised:
            require_free_ports("redis", ctx, ["redis"])
    message = str(raised.value)
    assert f"port {port}" in message and "AGORA_PORT_REDIS" in message


def test_a_process_dying_during_start_up_fails_fast_with_its_log(ctx: Context) -> None:
    ctx.spawn("crasher", [sys.executable, "-c", "print('bad config line 3'); raise SystemExit(3)"])
    with pytest.raises(ComponentError) as raised:
        wait_until("crasher", lambda: False, timeout=30, ctx=ctx)
    assert "exited during start-up" in str(raised.value)
    assert "bad config line 3" in str(raised.value)


def test_a_start_moves_an_outgrown_log_aside_and_keeps_a_small_one(
    ctx: Context, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "LOG_ROTATE_BYTES", 1000)
    log = ctx.log_file("chatty")
    log.write_bytes(b"old line\n" * 200)  # 1800 bytes: outgrown
    ctx.spawn("chatty", [sys.executable, "-c", "print('second start')"])
    rotated = log.with_name("chatty.log.1")
    assert rotated.read_bytes() == b"old line\n" * 200
    assert b"old line" not in log.read_bytes()
    ctx.stop("chatty")
    ctx.spawn("chatty", [sys.executable, "-c", "print('third start')"])  # still small
    assert rotated.read_bytes() == b"old line\n" * 200
    assert log.read_bytes().count(b"start: ") == 2


def test_the_last_lines_of_a_failed_components_log_come_from_its_end(ctx: Context) -> None:
    ctx.log_file("big").write_bytes(b"x" * (3 * base.TAIL_BYTES) + b"\nlast words\n")
    assert base._tail(ctx, "big").endswith("last words")


def test_stack_commands_on_one_stack_run_one_at_a_time(
    ctx: Context, capsys: pytest.CaptureFixture[str]
) -> None:
    order: list[str] = []
    first_in = threading.Event()

    def first() -> None:
        with base.exclusive(ctx):
            first_in.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    first_in.wait(5)
    with base.exclusive(ctx):  # its own descriptor: flock excludes it as another process
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]
    assert "waiting for another" in capsys.readouterr().err


def test_a_component_still_starting_is_given_the_rest_of_its_start_up_time(ctx: Context) -> None:
    from stack.component import Component

    class Slow(Component):
        name = "slow"
        start_timeout = 120.0

    ctx.spawn("slow", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # Just started: nearly all of its 120 s, not a flat 15 s.
        assert 110 < Slow().patience(ctx) <= 120
        assert base.process_age_s(ctx.running_pid("slow") or 0) is not None
    finally:
        ctx.stop("slow")
    # Nothing running (or long past its start-up time): 15 s.
    assert Slow().patience(ctx) == 15.0


def test_progress_to_a_stderr_gone_does_not_stop_the_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class HungUp:
        def write(self, _: str) -> int:
            raise OSError(5, "Input/output error")  # a terminal closed under it

        def flush(self) -> None:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(sys, "stderr", HungUp())
    base.say("postgres", "stopped")  # `stack down` goes on to the next component


@pytest.mark.parametrize("why", ["stale", "unhealthy"])
def test_a_restart_inside_up_stops_the_component_its_own_way(
    ctx: Context, monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    # PostgreSQL's own stop is a fast shutdown (SIGINT); the generic SIGTERM waits for
    # every client session, then SIGKILLs the postmaster alone, leaving its backends.
    from stack.component import Component

    stops: list[str] = []

    class Restarted(Component):
        name = "restarted"
        start_timeout = 5.0

        def installed(self, ctx: Context) -> bool:
            return True

        def stale(self, ctx: Context) -> bool:
            return why == "stale"

        def healthy(self, ctx: Context) -> bool:
            return why == "stale" or ctx.running_pid(self.name) is None

        def patience(self, ctx: Context) -> float:
            return 0.3

        def down(self, ctx: Context) -> bool:
            stops.append("own")
            return ctx.stop(self.name, sig=signal.SIGINT)

        def start(self, ctx: Context) -> None:
            stops.append("started")

    ctx.spawn("restarted", [sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        Restarted().up(ctx)
    finally:
        ctx.stop("restarted")
    assert stops == ["own", "started"]


def test_a_temporal_that_accepts_and_never_answers_fails_its_health_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unbounded, the call hung `up` and `status`: wait_until checks its own timeout
    # only between calls.
    from stack import temporal

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    held: list[socket.socket] = []
    accepting = threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True)
    accepting.start()
    port = silent.getsockname()[1]
    settings = config.load(
        {"AGORA_STATE_DIR": str(tmp_path), "AGORA_TEMPORAL_ADDRESS": f"127.0.0.1:{port}"}
    )
    assert settings.temporal_address == f"127.0.0.1:{port}"
    monkeypatch.setattr(temporal, "HEALTH_CALL_S", 0.5)
    try:
        with pytest.raises(TimeoutError):
            temporal.Temporal().healthy(Context(settings))
    finally:
        for conn in held:
            conn.close()
        silent.close()


def test_a_state_folder_holds_one_profiles_stack(tmp_path: Path) -> None:
    # With AGORA_STATE_DIR exported, the test profile's `up` read the dev stack's pid
    # records, restarted its components on the test ports over the dev data, and the
    # tests wrote to (and killed) the dev stores.
    dev = Context(config.load({"AGORA_STATE_DIR": str(tmp_path)}))
    test = Context(config.load({"AGORA_STATE_DIR": str(tmp_path), "AGORA_PROFILE": "test"}))
    with base.exclusive(dev):
        pass
    with base.exclusive(dev):  # the same profile again: its own stack
        pass
    with pytest.raises(ComponentError, match="holds the dev profile's stack") as refused:
        with base.exclusive(test):
            raise AssertionError("the test profile got the dev stack's folder")
    assert "fix: point AGORA_STATE_DIR at another folder" in str(refused.value)
    own = Context(config.load({"AGORA_STATE_DIR": str(tmp_path / "test"), "AGORA_PROFILE": "test"}))
    with base.exclusive(own):  # make test's subfolder
        pass
