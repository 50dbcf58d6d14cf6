"""What every local component has in common: pid files, logs, health waits, errors.

Why not supervisord or another process supervisor: the components here are
started once by `make run` / `make test`, each behind a real health check that
supervisord cannot express, and must outlive the command that started them
(the way `pg_ctl` or `redis-server --daemonize` do) so that `make stop` and the
fault-injection tests can kill and restart one of them by its recorded pid. A
supervisor would be one more long-lived daemon that itself needs supervising;
the few lines below (spawn in a new session, record the pid, signal the process
group) are all that is needed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agora.config import Settings


class ComponentError(RuntimeError):
    """A component failed to install or start; the message says what to do."""

    def __init__(self, component: str, what: str, *, hint: str = "", log: Path | None = None):
        lines = [f"[{component}] {what}"]
        if log is not None:
            lines.append(f"  log: {log}")
        if hint:
            lines.append(f"  fix: {hint}")
        super().__init__("\n".join(lines))
        self.component = component


def say(component: str, message: str) -> None:
    """Progress line on stderr, flushed at once so long steps show they are alive. A
    stderr gone (a terminal hung up, a pipe's reader dead) does not stop the work: a
    `stack down` run as the terminal closed would otherwise stop one component only."""
    try:
        print(f"  {component:<14} {message}", file=sys.stderr, flush=True)
    except OSError:
        pass


@dataclass
class Context:
    """Paths and settings shared by all components of one stack (dev or test)."""

    settings: Settings

    @property
    def state(self) -> Path:
        return self.settings.state_dir

    @property
    def cache(self) -> Path:
        return self.settings.cache_dir

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    @property
    def pids(self) -> Path:
        return self.state / "pids"

    def port(self, name: str) -> int:
        return self.settings.ports[name]

    def data(self, component: str) -> Path:
        path = self.state / component
        path.mkdir(parents=True, exist_ok=True)
        return path

    def log_file(self, name: str) -> Path:
        self.logs.mkdir(parents=True, exist_ok=True)
        return self.logs / f"{name}.log"

    # Processes ---------------------------------------------------------

    def pid_file(self, name: str) -> Path:
        return self.pids / f"{name}.json"

    def running_pid(self, name: str) -> int | None:
        """The pid recorded for `name` if that process still runs (and is the same one)."""
        try:
            record = json.loads(self.pid_file(name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        pid = int(record["pid"])
        if not _alive(pid) or _start_time(pid) != record.get("start_time"):
            return None
        return pid

    def spawn(
        self,
        name: str,
        argv: Sequence[object],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user: str | None = None,
    ) -> int:
        """Start `argv` detached in its own session, logging to logs/<name>.log."""
        if self.running_pid(name) is not None:
            raise ComponentError(name, "already running", hint="make stop first")
        command = [str(a) for a in argv]
        if user is not None and os.geteuid() == 0:
            # setpriv execs in place, so the recorded pid is the component itself.
            command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *command]
        full_env = {**os.environ, **(env or {})}
        log = self.log_file(name)
        _rotate(log)
        with log.open("ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {command}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=full_env,
                start_new_session=True,
            )
        self.record(name, proc.pid, command)
        return proc.pid

    def record(self, name: str, pid: int, argv: Sequence[object]) -> None:
        """Record `pid` as `name`'s process: `stop`, `kill` and `status` go by this record.

        Also for a process started elsewhere (the integration tests start their own
        services), so that `stack down` stops what an aborted test run left behind.
        """
        self.pids.mkdir(parents=True, exist_ok=True)
        self.pid_file(name).write_text(
            json.dumps({"pid": pid, "start_time": _start_time(pid), "argv": [str(a) for a in argv]})
        )

    def stop(self, name: str, *, timeout: float = 30.0, sig: int = signal.SIGTERM) -> bool:
        """Stop the process group recorded for `name`; SIGKILL after `timeout` seconds."""
        pid = self.running_pid(name)
        if pid is None:
            self.pid_file(name).unlink(missing_ok=True)
            return False
        _signal_group(pid, sig)
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _alive(pid):
            _signal_group(pid, signal.SIGKILL)
        _wait_gone(pid)
        # Only now: a stop interrupted (Ctrl-C during Kafka's 30 s) keeps the record,
        # so the next `make stop` finds the process instead of a taken port.
        self.pid_file(name).unlink(missing_ok=True)
        return True

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash would: used by fault-injection tests."""
        pid = self.running_pid(name)
        if pid is not None:
            _signal_group(pid, signal.SIGKILL)
            _wait_gone(pid)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def _wait_gone(pgid: int, timeout: float = 10.0) -> None:
    """Wait until the whole process group has exited and its leader has been reaped.

    A restart must not race the dead: PostgreSQL, for one, refuses to start while
    the pid in its lock file still exists, even as a zombie not yet reaped by init.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Reaped here when this process started it (in the same command, or a test):
        # nobody else would, and it stayed a zombie until the timeout.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pgid, os.WNOHANG)
        if not Path(f"/proc/{pgid}").exists() and not _group_members(pgid):
            return
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    # A zombie has exited; its parent (long gone) will never reap it.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start_time(pid: int) -> str | None:
    """Process start time in clock ticks since boot: tells a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (FileNotFoundError, IndexError):
        return None


def process_age_s(pid: int) -> float | None:
    """Seconds since `pid` started (None when it is gone)."""
    started = _start_time(pid)
    if started is None:
        return None
    uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    return uptime_s - int(started) / os.sysconf("SC_CLK_TCK")


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def require_free_ports(component: str, ctx: Context, names: Sequence[str]) -> None:
    """Fail with a clear message if another program holds one of our ports."""
    for name in names:
        port = ctx.port(name)
        if not port_free(ctx.settings.host, port):
            raise ComponentError(
                component,
                f"port {port} ({name}) is already taken by another program",
                hint=(
                    f"find it with `ss -ltnp 'sport = :{port}'`, stop it, or choose another port "
                    f"with AGORA_PORT_{name.upper()}=<port>"
                ),
            )


def wait_until(
    component: str,
    check: Callable[[], bool],
    *,
    timeout: float,
    ctx: Context,
    log_name: str | None = None,
    interval: float = 0.25,
) -> float:
    """Poll `check` until true; fail with the log's tail if the process died or time ran out."""
    started = time.monotonic()
    last_note = started
    name = log_name or component
    while True:
        try:
            if check():
                return time.monotonic() - started
        except Exception:
            pass
        now = time.monotonic()
        if ctx.pid_file(name).exists() and ctx.running_pid(name) is None:
            raise ComponentError(
                component, "exited during start-up", log=ctx.log_file(name), hint=_tail(ctx, name)
            )
        if now - started > timeout:
            raise ComponentError(
                component,
                f"not healthy after {timeout:.0f}s",
                log=ctx.log_file(name),
                hint=_tail(ctx, name),
            )
        if now - last_note > 10:
            say(component, f"still waiting for health ({now - started:.0f}s)")
            last_note = now
        time.sleep(interval)


def _tail(ctx: Context, name: str, lines: int = 8) -> str:
    try:
        with ctx.log_file(name).open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - TAIL_BYTES))  # not the whole log
            text = log.read().decode(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return "no log was written"
    return "read the log; its last lines:\n    " + "\n    ".join(text)


# A component's log is kept across its restarts (a crash's last lines stay readable),
# up to this size: a start that finds it larger moves it to <name>.log.1 (the one
# before is dropped). Kafka alone wrote 100 MB a day of restarts on the test stack.
LOG_ROTATE_BYTES = 50 * 2**20
TAIL_BYTES = 64 * 2**10
# The longest one health-check call may take: a process that accepts the connection
# and never answers fails the check instead of hanging `up` and `status`.
HEALTH_CALL_S = 5.0


def _rotate(log: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > LOG_ROTATE_BYTES:
            log.replace(log.with_name(log.name + ".1"))


@contextlib.contextmanager
def exclusive(ctx: Context) -> Iterator[None]:
    """One `up`, `down` or `kill` at a time on a stack. Two starts at once (`make run`
    in two terminals, `make chaos` during `make run`) both spawned a component; one
    lost the port and exited, and the record could name that one, leaving the
    running process unknown to `make stop`. The lock file's descriptor is not
    inherited by what the command spawns (PEP 446)."""
    ctx.state.mkdir(parents=True, exist_ok=True)
    with (ctx.state / "stack.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("stack", "waiting for another `python -m stack` command on this stack to end")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _claim_for_profile(ctx)
        yield


def _claim_for_profile(ctx: Context) -> None:
    """A state folder holds one profile's stack. With AGORA_STATE_DIR exported, the
    test profile's `up` read the dev stack's pid records: it found each component
    running and unhealthy on the test ports, restarted it on the dev data, and the
    tests then wrote to (and killed) the dev stores."""
    marker = ctx.state / "profile"
    profile = ctx.settings.profile
    try:
        claimed = marker.read_text().strip()
    except FileNotFoundError:
        marker.write_text(profile + "\n")
        return
    if claimed != profile:
        raise ComponentError(
            "stack",
            f"{ctx.state} holds the {claimed} profile's stack, not the {profile} profile's",
            hint=f"point AGORA_STATE_DIR at another folder for the {profile} profile"
            " (make test uses the test/ subfolder of an exported one), or unset it",
        )


def ensure_system_user(name: str) -> str | None:
    """The unprivileged user PostgreSQL and Elasticsearch run as when we are root.

    Both refuse to run as root. Returns None when we are not root (then they run as us).
    """
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )
    return name


def chown_tree(path: Path, user: str | None) -> None:
    if user is None:
        return
    entry = pwd.getpwnam(user)
    for root, dirs, files in os.walk(path):
        for item in (
            root,
            *(os.path.join(root, d) for d in dirs),
            *(os.path.join(root, f) for f in files),
        ):
            os.lchown(item, entry.pw_uid, entry.pw_gid)


def which(component: str, binary: str, *, hint: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise ComponentError(component, f"`{binary}` not found", hint=hint)
    return path


def run_step(
    component: str,
    argv: Sequence[object],
    *,
    ctx: Context,
    env: Mapping[str, str] | None = None,
    tee: bool = False,
) -> None:
    """Run an install/set-up command, its output appended to the component's set-up log.

    With tee, each output line is also shown (prefixed) so long downloads show progress.
    """
    log = ctx.log_file(f"{component}-setup")
    command = [str(a) for a in argv]
    with log.open("ab") as out:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            if tee:
                say(component, line.decode(errors="replace").rstrip())
        returncode = proc.wait()
    if returncode != 0:
        raise ComponentError(
            component, f"command failed (exit {returncode}): {' '.join(command)}", log=log
        )


def can_grant_traverse() -> bool:
    """Whether grant_traverse can run here: it calls setfacl only as root (the one
    case with a user of its own to let through), so only root needs the acl package."""
    return os.geteuid() != 0 or shutil.which("setfacl") is not None


def grant_traverse(path: Path, user: str | None) -> None:
    """Let `user` reach `path` through ancestors it could not enter (e.g. a 0700 /root).

    Grants only search (x) on those directories, with an ACL, rather than opening them.
    """
    if user is None:
        return
    for ancestor in reversed(path.resolve().parents):
        if ancestor.stat().st_mode & 0o001:
            continue
        result = subprocess.run(
            ["setfacl", "-m", f"u:{user}:x", str(ancestor)], capture_output=True, text=True
        )
        if result.returncode != 0:
            raise ComponentError(
                user,
                f"cannot let {user} traverse {ancestor}: {result.stderr.strip()}",
                hint=f"chmod o+x {ancestor}, or set AGORA_STATE_DIR / AGORA_CACHE_DIR elsewhere",
            )
