"""`python -m workers.audit.verify`: recompute the audit chain and name the first bad row.

Connects to the audit database (as the audit role: read-only use) and checks
the chain from the last checkpoint signed by a trusted key, or from genesis.
The trusted public key is read from `--public-key` (PEM or base64 of the raw 32
bytes; the value `GET /v1/audit/public-key` publishes), with the keys it replaced
from `--retired-public-key` (repeatable), or, by default, derived from the
configured signing key, with the retired keys of AGORA_AUDIT_RETIRED_PUBLIC_KEYS
or the state folder (workers/audit/signing.py `load_trusted_keys`). Prints one
JSON document on stdout (the walk's progress goes to stderr as JSON log lines);
exit status 0 when the chain verifies, 1 when it does not, 2 on a usage error,
3 when it could not verify at all (the database unreachable, say): no verdict on
the chain, so never the tamper status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from pathlib import Path

import asyncpg

from agora import config, db
from agora.logs import setup_logging
from workers.audit.errors import SigningKeyError
from workers.audit.signing import PublicKey, TrustedKeys, load_signer, load_trusted_keys
from workers.audit.verification import Verification, verify_chain

# A walk from genesis over millions of rows takes minutes: a line at least this
# often says how far it is, so an operator can tell slow from stuck.
PROGRESS_EVERY_ROWS = 100_000
PROGRESS_EVERY_S = 10.0
log = logging.getLogger("workers.audit.verify")


def report(result: Verification, seconds: float) -> dict[str, object]:
    start = result.start_checkpoint
    return {
        "ok": result.ok,
        "first_sequence": result.first_sequence,
        "last_sequence": result.last_sequence,
        "records_checked": result.records_checked,
        "first_bad_sequence": result.first_bad_sequence or None,
        "failure": result.failure or None,
        "checkpoints_checked": result.checkpoints_checked,
        "start_checkpoint": start.log_sequence if start else None,
        "head_hash": result.head_hash.hex(),
        "seconds": round(seconds, 3),
    }


class ProgressLog:
    """The walk's progress callback: a JSON log line (stderr) every
    PROGRESS_EVERY_ROWS rows or PROGRESS_EVERY_S seconds, whichever comes first."""

    def __init__(self) -> None:
        self.started = self.logged_at = time.perf_counter()
        self.logged_rows = 0

    def __call__(self, sequence: int, checked: int, last: int) -> None:
        now = time.perf_counter()
        rows_due = checked - self.logged_rows >= PROGRESS_EVERY_ROWS
        if not rows_due and now - self.logged_at < PROGRESS_EVERY_S:
            return
        self.logged_rows, self.logged_at = checked, now
        elapsed = now - self.started
        log.info(
            "audit verification progress",
            extra={
                "sequence": sequence,
                "last_sequence": last,
                "records_checked": checked,
                "rows_per_s": round(checked / elapsed) if elapsed > 0 else None,
            },
        )


def public_key(given: str) -> PublicKey:
    source = Path(given)
    return PublicKey.parse(source.read_text() if source.is_file() else given)


def trusted_keys(settings: config.Settings, given: str, retired: list[str]) -> TrustedKeys:
    """The keys given on the command line; by default the service's own."""
    if not given:
        if retired:
            raise ValueError("--retired-public-key goes with --public-key")
        return load_trusted_keys(settings, load_signer(settings))
    return TrustedKeys(public_key(given), tuple(public_key(r) for r in retired))


# The database could not be asked, or not to the end: no verdict. Anything else a walk
# raises is about what the log holds and stays the chain's failure (exit 1), never "no
# verdict". db.FAILOVER_ERRORS: the server restarting, shutting down, or full.
UNREACHABLE = (
    *db.FAILOVER_ERRORS,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.QueryCanceledError,  # statement_timeout, or cancelled by an operator
)


class Unverified(Exception):
    """Verification could not run (no verdict on the chain); the cause is chained."""


async def run(args: argparse.Namespace) -> int:
    settings = config.load(service="audit")
    # JSON lines like the services' (a failed verification logs an error with the row).
    setup_logging("audit-verify", settings.log_level)
    keys = trusted_keys(settings, args.public_key, args.retired_public_key)
    try:
        result, elapsed = await verify(settings, keys, args)
    except UNREACHABLE as error:
        raise Unverified(f"{type(error).__name__}: {error}") from error
    print(json.dumps(report(result, elapsed), indent=2))
    return 0 if result.ok else 1


async def verify(
    settings: config.Settings, keys: TrustedKeys, args: argparse.Namespace
) -> tuple[Verification, float]:
    pool = await db.create_pool(settings, "audit", size=2)
    try:
        started = time.perf_counter()
        result = await verify_chain(
            pool,
            keys,
            from_genesis=args.from_genesis,
            to_sequence=args.to_sequence,
            progress=ProgressLog(),
        )
        return result, time.perf_counter() - started
    finally:
        await pool.close()


def sequence(text: str) -> int:
    value = int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is not a log sequence (0 to 2^63-1)")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.audit.verify", description=__doc__)
    parser.add_argument("--from-genesis", action="store_true", help="ignore checkpoints")
    parser.add_argument("--to-sequence", type=sequence, default=0, help="stop here (0: the head)")
    parser.add_argument("--public-key", default="", help="PEM / base64 key, or a file holding it")
    parser.add_argument(
        "--retired-public-key",
        action="append",
        default=[],
        help="a key --public-key replaced (its checkpoints are trusted too); repeatable",
    )
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except (SigningKeyError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except Unverified as error:
        print(f"error: could not verify, no verdict on the chain: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
