"""Ed25519 signing keys: stored sealed, rotated with an overlap, served as a JWK set.

Exactly one key is current and signs new access tokens. A rotation first
publishes the next key (in the JWK set, signing nothing), and makes it current
only after every verifier's periodic JWKS refresh has fetched it, so no token
ever carries a kid a verifier has not seen. When a new key becomes current, the
previous one stays in the JWK set until `verify_until` (its last token's expiry
plus leeway), so tokens it signed keep verifying through their whole life;
after that it is pruned.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import time
import uuid
import warnings
from dataclasses import dataclass

import asyncpg
from joserfc.errors import SecurityWarning
from joserfc.jwk import KeySet, OKPKey

from agora import outbox
from contracts.agora.identity.v1 import SigningKeyRotated
from workers.identity.kek import SecretBox

# RFC 9864 prefers the fully-specified "Ed25519" alg name, but "EdDSA" is what
# every JOSE library and the platform contract (DESIGN §6) verify today.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

TOPIC = "identity.events"
ALG = "EdDSA"
# One key rotation at a time across every identity process (bootstrap included).
_ROTATION_LOCK = 0x1D_517E
_FORCED_RELOAD_FLOOR = 0.5  # seconds
# A published next key still not current after this was left by a terminated rotation.
_ABANDONED_AFTER = "1 day"
# How long a KeyRing serves its cached current key before reloading (seconds).
KEY_RING_MAX_AGE_S = 2.0
# Every token a key signed expires within the access TTL; the leeway covers verifiers'
# clock skew (they accept 60 s on exp / nbf / iat).
VERIFY_LEEWAY_S = 60
# A key can still sign shortly after its retirement commits: each identity process
# keeps its cached current key up to KEY_RING_MAX_AGE_S, and a refresh takes its key
# before its (possibly slow) transaction. Its last token therefore expires a little
# after retired_at + access TTL; this margin keeps the key verifying until then.
SIGNED_AFTER_RETIREMENT_S = 30


@dataclass(frozen=True)
class RotationOutcome:
    kid: str
    previous_kid: str
    previous_valid_until: dt.datetime | None
    created: bool


def retired_key_overlap(access_ttl_s: int) -> dt.timedelta:
    """How long a retired key stays in the JWK set (its `verify_until - retired_at`)."""
    return dt.timedelta(seconds=access_ttl_s + VERIFY_LEEWAY_S + SIGNED_AFTER_RETIREMENT_S)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk(kid: str, x: str) -> dict[str, str]:
    """The RFC 8037 public JWK of a key, as served in the JWK set."""
    return {"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": ALG, "use": "sig"}


def _key_context(kid: str) -> str:
    return f"signing_key:{kid}"


async def publish(conn: asyncpg.Connection, box: SecretBox, kid: str) -> bool:
    """Store key `kid` as the next key, in the caller's transaction: published, not signing.

    Idempotent by kid (False when it exists already). The private key is generated
    here, so it never leaves identity's database.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ROTATION_LOCK)
    if await conn.fetchval("SELECT 1 FROM signing_keys WHERE kid = $1", kid):
        return False
    await _insert(conn, box, kid, current=False)
    return True


async def rotate(
    conn: asyncpg.Connection,
    box: SecretBox,
    kid: str,
    *,
    overlap: dt.timedelta,
    workflow: outbox.WorkflowRef | None = None,
) -> RotationOutcome:
    """Make key `kid` current and retire the previous one, in the caller's transaction.

    `kid` is the key `publish` stored ahead, or a new one made here (the first key
    of a fresh database, or a rotation started before keys were published ahead).
    Idempotent by kid: a retried activity finds its key current (or already
    retired by a later rotation) and changes nothing.
    """
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _ROTATION_LOCK)
    known = await conn.fetchrow(
        "SELECT is_current, retired_at FROM signing_keys WHERE kid = $1", kid
    )
    if known is not None and (known["is_current"] or known["retired_at"] is not None):
        return RotationOutcome(kid, "", None, created=False)
    previous = await conn.fetchrow(
        "UPDATE signing_keys SET is_current = false, retired_at = now(),"
        " verify_until = now() + $1::interval WHERE is_current RETURNING kid, verify_until",
        overlap,
    )
    if known is None:
        await _insert(conn, box, kid, current=True)
    else:
        await conn.execute("UPDATE signing_keys SET is_current = true WHERE kid = $1", kid)
    outcome = RotationOutcome(
        kid=kid,
        previous_kid=previous["kid"] if previous else "",
        previous_valid_until=previous["verify_until"] if previous else None,
        created=True,
    )
    await outbox.append(
        conn,
        producer="identity",
        topic=TOPIC,
        aggregate_type="signing_key",
        aggregate_id=kid,
        payload=SigningKeyRotated(
            new_kid=kid,
            previous_kid=outcome.previous_kid,
            previous_valid_until=outcome.previous_valid_until,
        ),
        workflow=workflow,
    )
    return outcome


async def _insert(conn: asyncpg.Connection, box: SecretBox, kid: str, *, current: bool) -> None:
    private = OKPKey.generate_key("Ed25519", parameters={"kid": kid}).as_dict(private=True)
    await conn.execute(
        "INSERT INTO signing_keys (kid, public_x, private_sealed, kek_id, is_current)"
        " VALUES ($1, $2, $3, $4, $5)",
        kid,
        private["x"],
        box.seal(_unb64url(str(private["d"])), _key_context(kid)),
        box.kek_id,
        current,
    )


async def ensure_current(pool: asyncpg.Pool, box: SecretBox, overlap: dt.timedelta) -> str:
    """On a fresh database create the first key, so tokens can be issued at once."""
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _ROTATION_LOCK)
        kid = await conn.fetchval("SELECT kid FROM signing_keys WHERE is_current")
        if kid is not None:
            return str(kid)
        return (
            await rotate(conn, box, new_kid(dt.datetime.now(dt.UTC), uuid.uuid4()), overlap=overlap)
        ).kid


def new_kid(now: dt.datetime, unique: uuid.UUID) -> str:
    """Readable and unique: the creation day plus random hex (workflows pass workflow.uuid4())."""
    return f"{now:%Y%m%d}-{unique.hex[:12]}"


async def prune(conn: asyncpg.Connection) -> list[str]:
    """Delete retired keys whose overlap has ended, and next keys a rotation abandoned
    (published a day ago and never made current: its workflow was terminated);
    returns their kids."""
    rows = await conn.fetch(
        "DELETE FROM signing_keys WHERE NOT is_current AND (verify_until < now()"
        f" OR (retired_at IS NULL AND created_at < now() - interval '{_ABANDONED_AFTER}'))"
        " RETURNING kid"
    )
    return sorted(row["kid"] for row in rows)


@dataclass(frozen=True)
class _Snapshot:
    current: OKPKey
    jwks: list[dict[str, str]]
    keyset: KeySet
    loaded_at: float


class KeyRing:
    """A process's cached view of the keys: the current private key and the JWK set.

    Reloaded at most every `max_age` seconds, so a rotation done by another
    process (or the scheduled workflow) is picked up within that time; the old
    key stays in the JWK set meanwhile, so nothing it signs fails to verify.
    """

    def __init__(self, pool: asyncpg.Pool, box: SecretBox, *, max_age: float = KEY_RING_MAX_AGE_S):
        self._pool = pool
        self._box = box
        self._max_age = max_age
        self._snapshot: _Snapshot | None = None
        self._lock = asyncio.Lock()
        self._private_cache: dict[str, OKPKey] = {}

    async def signing_key(self) -> OKPKey:
        return (await self._fresh()).current

    async def jwks(self) -> list[dict[str, str]]:
        """Read fresh: verifiers fetch it rarely (they cache it), and a key just made
        current must be published at once, since this process may sign with it next."""
        return (await self._fresh(force=True)).jwks

    async def keyset(self, *, kid: str | None = None) -> KeySet:
        """The verification keys; reloads at once when asked for a kid it does not know."""
        snapshot = await self._fresh()
        unknown = kid is not None and not any(k["kid"] == kid for k in snapshot.jwks)
        # The floor keeps tokens with made-up kids from turning into a query each.
        if unknown and time.monotonic() - snapshot.loaded_at > _FORCED_RELOAD_FLOOR:
            snapshot = await self._fresh(force=True)
        return snapshot.keyset

    async def _fresh(self, *, force: bool = False) -> _Snapshot:
        snapshot = self._snapshot
        if (
            snapshot is not None
            and not force
            and time.monotonic() - snapshot.loaded_at < self._max_age
        ):
            return snapshot
        async with self._lock:
            if self._snapshot is not None and self._snapshot is not snapshot:
                return self._snapshot  # another task reloaded while we waited
            self._snapshot = await self._load()
            return self._snapshot

    async def _load(self) -> _Snapshot:
        rows = await self._pool.fetch(
            "SELECT kid, public_x, private_sealed, is_current FROM signing_keys"
            " WHERE is_current OR retired_at IS NULL OR verify_until > now()"
            " ORDER BY is_current DESC, created_at DESC"
        )
        current_rows = [row for row in rows if row["is_current"]]
        if not current_rows:
            raise RuntimeError("no current signing key (identity start-up creates one)")
        row = current_rows[0]
        current = self._private_cache.get(row["kid"])
        if current is None:
            seed = self._box.open(bytes(row["private_sealed"]), _key_context(row["kid"]))
            current = OKPKey.import_key(
                {"kty": "OKP", "crv": "Ed25519", "x": row["public_x"], "d": _b64url(seed)},
                parameters={"kid": row["kid"]},
            )
            self._private_cache = {row["kid"]: current}
        jwks = [public_jwk(r["kid"], r["public_x"]) for r in rows]
        keyset = KeySet([OKPKey.import_key(dict(jwk)) for jwk in jwks])
        return _Snapshot(current, jwks, keyset, time.monotonic())
