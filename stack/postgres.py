"""PostgreSQL: the project's own cluster (initdb in the state folder), a DB and role per service."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path

from agora.config import SERVICES
from stack.base import (
    ComponentError,
    Context,
    chown_tree,
    ensure_system_user,
    grant_traverse,
    run_step,
)
from stack.component import Component

PG_USER = "postgres"  # the Debian package's system user; PostgreSQL refuses to run as root


def pg_bin(tool: str) -> Path:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise ComponentError(
            "postgres",
            f"{tool} not found under /usr/lib/postgresql/*/bin",
            hint="apt-get update && apt-get install -y postgresql (make run does this as root)",
        )
    return Path(found[-1])


# What `audit` and `audit_owner` need in the audit database (also a one-time step of
# a Kubernetes install, docs/deploy.md "The audit database").
AUDIT_SCHEMA_GRANT = "GRANT USAGE, CREATE ON SCHEMA public TO audit, audit_owner"


class Postgres(Component):
    name = "postgres"
    ports = ("postgres",)
    debian_packages = ("postgresql", "acl")
    start_timeout = 60

    def installed(self, ctx: Context) -> bool:
        has_acl = os.geteuid() != 0 or shutil.which("setfacl") is not None
        return bool(glob.glob("/usr/lib/postgresql/*/bin/postgres")) and has_acl

    def _dirs(self, ctx: Context) -> tuple[Path, Path]:
        root = ctx.data("postgres")
        return root / "data", root / "run"

    def prepare(self, ctx: Context) -> None:
        data, run = self._dirs(ctx)
        user = ensure_system_user(PG_USER)
        run.mkdir(parents=True, exist_ok=True)
        chown_tree(ctx.data("postgres"), user)
        grant_traverse(ctx.data("postgres"), user)
        if data.exists() and not (data / "PG_VERSION").exists():
            raise ComponentError(
                self.name,
                f"{data} exists but is not a PostgreSQL data folder (an interrupted initdb?)",
                hint=f"remove it (rm -rf {data}) and run again; it holds no data yet",
            )
        if not data.exists():
            data.mkdir(mode=0o700)
            chown_tree(data, user)
            argv = [
                pg_bin("initdb"),
                "-D",
                data,
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
        # A kill -9 leaves postmaster.pid behind; postgres itself checks that the pid is
        # gone and recovers from its WAL, so nothing to do here.

    def start(self, ctx: Context) -> None:
        data, run = self._dirs(ctx)
        ctx.spawn(
            self.name,
            [
                pg_bin("postgres"),
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

    def psql(self, ctx: Context, sql: str, *, db: str = "postgres") -> str:
        _, run = self._dirs(ctx)
        result = subprocess.run(
            [
                pg_bin("psql"),
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
        )
        if result.returncode != 0:
            raise ComponentError(self.name, f"SQL failed: {sql[:120]}…\n  {result.stderr.strip()}")
        return result.stdout.strip()

    def healthy(self, ctx: Context) -> bool:
        return self.psql(ctx, "select 1") == "1"

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

    def urls(self, ctx: Context) -> dict[str, str]:
        return {"postgres": f"postgresql://{ctx.settings.host}:{ctx.port('postgres')}"}
