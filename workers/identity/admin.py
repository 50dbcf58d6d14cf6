"""Operator commands for identity: `python -m workers.identity.admin ...`.

The public API registers customers only; admins, auditors and support staff are
created by an operator through the same RegisterAccount workflow:

    python -m workers.identity.admin create --email ops@example.com --role admin
    python -m workers.identity.admin ensure-demo-admin    # what `make run` does locally

The password is read from a prompt (or --password-file). The email and the
password must pass public registration's rules (gateway/schemas.py: an address
with a dotted domain, at most 254 characters; a password of 10 to 256), or the
account could never sign in through the API. The password is hashed with
argon2id here, and only the hash enters the workflow. The email is normalized as
everywhere else (agora/emails.py).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import uuid
from pathlib import Path

from argon2 import PasswordHasher
from pydantic import TypeAdapter, ValidationError
from temporalio.client import WorkflowFailureError

from agora import config, emails, temporal, text
from agora.config import Settings
from agora.leave import run_and_leave
from agora.logs import setup_logging
from agora.secrets import create_once
from gateway.schemas import Email, Password
from workflows.identity import (
    TASK_QUEUE,
    RegisterAccountInput,
    RegisterAccountWorkflow,
    register_workflow_id,
)

DEMO_ADMIN_EMAIL = "admin@agora.local"
ROLES = ("customer", "admin", "auditor", "support")
# Random bytes of the generated demo admin password (base64: 24 characters).
DEMO_PASSWORD_BYTES = 18
# The gateway's own rules, so an account made here can sign in through the API.
_EMAIL = TypeAdapter(Email)
_PASSWORD = TypeAdapter(Password)


class Refused(ValueError):
    """Input the command will not register (reported, exit status 1)."""


def demo_password_file(settings: Settings) -> Path:
    return settings.state_dir / "secrets" / "admin-password"


def checked(email: str, password: str) -> str:
    """The normalized email, once both it and the password pass registration's rules."""
    try:
        email = emails.normalize(_EMAIL.validate_python(email))
    except ValidationError:
        raise Refused("not an email address") from None
    if not text.storable(email):
        raise Refused("not an email address")
    try:
        _PASSWORD.validate_python(password)
    except ValidationError as error:
        # pydantic's "String should have at least 10 characters", and so on.
        raise Refused(f"the password {error.errors()[0]['msg'].removeprefix('String ')}") from None
    return email


async def register(settings: Settings, email: str, password: str, role: str) -> bool:
    """Run RegisterAccount; True when created, False when this account already existed."""
    email = checked(email, password)
    client = await temporal.connect(settings, sdk_metrics=False)
    password_hash = await asyncio.to_thread(PasswordHasher().hash, password)
    # A stable id per email makes the command safe to repeat.
    account_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"agora:account:{email}"))
    result = await client.execute_workflow(
        RegisterAccountWorkflow.run,
        RegisterAccountInput(
            account_id=account_id,
            email=email,
            display_name=role.capitalize(),
            password_hash=password_hash,
            roles=[role],
        ),
        id=register_workflow_id(email),
        task_queue=TASK_QUEUE,
    )
    return bool(result.created)


async def ensure_demo_admin(settings: Settings) -> None:
    path = demo_password_file(settings)
    # Created 0600 and exclusively (never readable by others, not even for a moment;
    # two commands at once agree on one password), then read back.
    create_once(path, DEMO_PASSWORD_BYTES)
    created = await register(settings, DEMO_ADMIN_EMAIL, path.read_text().strip(), "admin")
    state = "created" if created else "present"
    print(f"demo admin {DEMO_ADMIN_EMAIL} {state}; its password is in {path}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.identity.admin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="register an account with a role")
    create.add_argument("--email", required=True)
    create.add_argument("--role", choices=ROLES, default="admin")
    create.add_argument("--password-file", type=Path)
    sub.add_parser("ensure-demo-admin", help="the local demo admin (idempotent)")
    args = parser.parse_args(argv)
    setup_logging("identity-admin")  # before the settings: a refused one is a JSON line
    settings = config.load(service="identity-admin")
    # Library warnings (the SDK's) as JSON lines like every service's; what the
    # command reports stays plain text on stdout / stderr.
    setup_logging("identity-admin", settings.log_level)
    try:
        if args.command == "ensure-demo-admin":
            asyncio.run(ensure_demo_admin(settings))
            return 0
        if args.password_file:
            password = args.password_file.read_text().strip()
        elif sys.stdin.isatty():
            password = getpass.getpass(f"password for {args.email}: ")
        else:  # a script's: piped on stdin (getpass would warn it may echo, then read it)
            password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            print(
                "error: no password given: type it at the prompt, pipe it on stdin,"
                " or pass --password-file",
                file=sys.stderr,
            )
            return 2
        created = asyncio.run(register(settings, args.email, password, args.role))
        email = emails.normalize(args.email)
        if created:
            print(f"{email} ({args.role}) created")
        else:
            # Never changed by this command: the role asked for may not be the one it has.
            print(f"{email} already exists; its roles and password are unchanged")
        return 0
    except Refused as error:
        print(f"refused: {error}", file=sys.stderr)
        return 1
    except WorkflowFailureError as error:
        cause = getattr(error.cause, "message", str(error.cause))
        print(f"refused: {cause}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    run_and_leave(main)
