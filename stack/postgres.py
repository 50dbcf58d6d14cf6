"""PostgreSQL: the project's own cluster (initdb in the state folder), a DB and role per service."""

from __future__ import annotations

import glob
import math
import os
import shutil
import signal
import subprocess
from pathlib import Path

from agora.config import SERVICES
from stack.base import (
    HEALTH_CALL_S,
    ComponentError,
    Context,
    can_grant_traverse,
    chown_tree,
    ensure_system_user,
    grant_traverse,
    run_step,
    say,
)
from stack.component import Component

PG_USER = "postgres"  # the Debian package's system user; PostgreSQL refuses to run as root
PG_ROOT = Path("/usr/lib/postgresql")  # one <major>/bin per installed major (Debian layout)


def pg_bin(tool: str, data: Path | None = None, *, root: Path = PG_ROOT) -> Path:
    """`tool` of the major that made `data` (its PG_VERSION), else of the newest installed.

    A data folder runs only under the major that made it, and after a distro upgrade
    two majors may be installed.
    """
    version = _data_version(data) if data is not None else None
    if data is not None and version is not None:
        path = root / version / "bin" / tool
        if not path.exists():
            raise ComponentError(
                "postgres",
                f"{data} was made by PostgreSQL {version}, which is not installed ({path})",
                hint=(
                    f"apt-get install -y postgresql-{version}, then move the data to the "
                    f"newer major with pg_upgrade (docs/local-stack.md, 'PostgreSQL upgrades'); "
                    f"or, as it holds only local data, remove {data.parent} to start afresh"
                ),
            )
        return path
    installed = [(major, path) for path in root.glob(f"*/bin/{tool}") if (major := _major(path))]
    if not installed:
        raise ComponentError(
            "postgres",
            f"{tool} not found under {root}/*/bin",
            hint="apt-get update && apt-get install -y postgresql (make run does this as root)",
        )
    return max(installed)[1]


def _data_version(data: Path) -> str | None:
    try:
        return (data / "PG_VERSION").read_text().strip()
    except FileNotFoundError:
        return None


def _major(tool: Path) -> tuple[int, ...]:
    """(15,) for <root>/15/bin/<tool>, (9, 6) for 9.6: compared as numbers, not text."""
    try:
        return tuple(int(part) for part in tool.parent.parent.name.split("."))
    except ValueError:
        return ()


def remove_stale_locks(data: Path, run: Path) -> list[Path]:
    """Remove lock files whose pid is not a postgres of `data`; returns those removed.

    Only for a cluster known to be down. After a reboot the pid in postmaster.pid
    may belong to another program (or another cluster), and postgres refuses to
    start while that pid exists, though it checks a lock's pid only for existence.
    """
    removed = []
    for lock in [data / "postmaster.pid", *run.glob(".s.PGSQL.*.lock")]:
        try:
            pid = int(lock.read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            continue  # an empty lock: a postgres just starting; postgres itself decides
        if not _postgres_of(pid, data):
            lock.unlink(missing_ok=True)
            removed.append(lock)
    return removed


def _postgres_of(pid: int, data: Path) -> bool:
    """Whether `pid` may be a postgres process working in `data` (when unsure: yes)."""
    try:
        argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0].decode()
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError):
        return True
    # ".../bin/postgres" for the postmaster, "postgres: checkpointer" for its children;
    # a zombie's command line is empty.
    if Path(argv0.split(":", 1)[0]).name != "postgres":
        return False
    try:
        # Every postgres process works in its data folder (it changes there at start).
        return Path(f"/proc/{pid}/cwd").resolve(strict=True) == data.resolve()
    except FileNotFoundError:
        return False
    except OSError:
        return True


# What `audit` and `audit_owner` need in the audit database (also a one-time step of
# a Kubernetes install, docs/deploy.md "The audit database").
AUDIT_SCHEMA_GRANT = "GRANT USAGE, CREATE ON SCHEMA public TO audit, audit_owner"


class Postgres(Component):
    name = "postgres"
    ports = ("postgres",)
    debian_packages = ("postgresql", "acl")
    start_timeout = 60

    def installed(self, ctx: Context) -> bool:
        return bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")) and can_grant_traverse()

    def _dirs(self, ctx: Context) -> tuple[Path, Path]:
        root = ctx.data("postgres")
        return root / "data", root / "run"

    def prepare(self, ctx: Context) -> None:
        data, run = self._dirs(ctx)
        user = ensure_system_user(PG_USER)
        run.mkdir(parents=True, exist_ok=True)
        chown_tree(ctx.data("postgres"), user)
        grant_traverse(ctx.data("postgres"), user)
        if data.exists() and not (data / "global" / "pg_control").exists():
            # Made by an earlier version of this step, which ran initdb in place.
            raise ComponentError(
                self.name,
                f"{data} exists but is not a PostgreSQL data folder (an interrupted initdb?)",
                hint=f"remove it (rm -rf {data}) and run again; it holds no data yet",
            )
        if not data.exists():
            self._initdb(ctx, data, user)
        # A kill -9 leaves postmaster.pid behind; postgres checks that its pid is gone and
        # recovers from its WAL. A pid reused since (after a reboot) would block it.
        if ctx.running_pid(self.name) is None:
            for lock in remove_stale_locks(data, run):
                say(self.name, f"removed stale lock {lock.name}: its pid is no postgres of ours")

    def _initdb(self, ctx: Context, data: Path, user: str | None) -> None:
        """A new cluster, made beside `data` and renamed to it once initdb succeeds:
        `data` existing means a whole cluster. In place, an initdb cut short left a
        folder the next run refused (Ctrl-C), or took for a cluster (a kill -9 after
        PG_VERSION, its first file), and postgres then failed on every start."""
        making = data.with_name(f"{data.name}.initdb")
        shutil.rmtree(making, ignore_errors=True)  # an earlier attempt's, cut short
        making.mkdir(mode=0o700)
        chown_tree(making, user)
        argv: list[str | Path] = [
            pg_bin("initdb"),
            "-D",
            making,
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--no-instructions",
        ]
        if user:
            argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
        run_step(self.name, argv, ctx=ctx)
        making.rename(data)

    def start(self, ctx: Context) -> None:
        data, run = self._dirs(ctx)
        ctx.spawn(
            self.name,
            [
                pg_bin("postgres", data),
                "-D",
                data,
                "-p",
                ctx.port("postgres"),
                "-k",
                run,
                "-c",
                f"listen_addresses={ctx.settings.host}",
                "-c",
                "max_connections=400",
                "-c",
                "shared_buffers=512MB",
                "-c",
                "wal_level=logical",
                "-c",
                "log_line_prefix=%m [%p] %q%u@%d ",
            ],
            user=ensure_system_user(PG_USER),
        )

    def psql(
        self, ctx: Context, sql: str, *, db: str = "postgres", timeout_s: float | None = None
    ) -> str:
        """`sql`'s output; `timeout_s` bounds the whole call (a health check's: a server
        that accepts the connection and never answers would hang `up` and `status`)."""
        data, run = self._dirs(ctx)
        env = {**os.environ, "PGCONNECT_TIMEOUT": str(math.ceil(timeout_s))} if timeout_s else None
        result = subprocess.run(
            [
                pg_bin("psql", data),
                "-h",
                str(run),
                "-p",
                str(ctx.port("postgres")),
                "-U",
                "postgres",
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-qtAX",
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
        )
        if result.returncode != 0:
            raise ComponentError(self.name, f"SQL failed: {sql[:120]}…\n  {result.stderr.strip()}")
        return result.stdout.strip()

    def healthy(self, ctx: Context) -> bool:
        return self.psql(ctx, "select 1", timeout_s=HEALTH_CALL_S) == "1"

    def after_healthy(self, ctx: Context) -> None:
        """One login role and one database per service; a role reaches only its own database."""
        for service in SERVICES:
            password = ctx.settings.db_password(service).replace("'", "''")
            self.psql(
                ctx,
                f"""DO $$ BEGIN
                  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{service}') THEN
                    CREATE ROLE {service} LOGIN PASSWORD '{password}';
                  ELSE
                    ALTER ROLE {service} LOGIN PASSWORD '{password}';
                  END IF;
                END $$;""",
            )
            exists = self.psql(ctx, f"select 1 from pg_database where datname = '{service}'")
            if exists != "1":
                self.psql(ctx, f"CREATE DATABASE {service} OWNER {service}")
            self.psql(ctx, f"REVOKE ALL ON DATABASE {service} FROM PUBLIC")
            self.psql(ctx, f"GRANT CONNECT, TEMPORARY ON DATABASE {service} TO {service}")
        self.psql(ctx, "REVOKE ALL ON DATABASE postgres FROM PUBLIC")
        self._audit_owner(ctx)

    def _audit_owner(self, ctx: Context) -> None:
        """The audit log is owned by `audit_owner` (no login), not by the service's role.

        `audit` may SET ROLE audit_owner (its migrations do, to create and alter the
        log) but does not inherit its privileges (NOINHERIT): the service's sessions
        hold only INSERT and SELECT on the log and cannot disable its triggers.
        """
        self.psql(
            ctx,
            """DO $$ BEGIN
              IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'audit_owner') THEN
                CREATE ROLE audit_owner NOLOGIN;
              END IF;
            END $$;""",
        )
        self.psql(ctx, "GRANT audit_owner TO audit")
        self.psql(ctx, "ALTER ROLE audit NOINHERIT")
        # NOINHERIT also drops what `audit` got from owning its database (the public
        # schema belongs to pg_database_owner), so the schema is granted explicitly.
        self.psql(ctx, AUDIT_SCHEMA_GRANT, db="audit")

    def down(self, ctx: Context) -> bool:
        # SIGINT is PostgreSQL's fast shutdown: it ends the client sessions. SIGTERM (smart
        # shutdown) waits for every session to close, which a running service's pool never
        # does, and the SIGKILL after the timeout reaches only the postmaster: each backend
        # runs in a process group of its own.
        return ctx.stop(self.name, sig=signal.SIGINT)

    def urls(self, ctx: Context) -> dict[str, str]:
        return {"postgres": f"postgresql://{ctx.settings.host}:{ctx.port('postgres')}"}
