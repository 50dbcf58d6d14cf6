"""Configuration: the one place that reads the environment.

Everything below the entry points takes explicit arguments; entry points call
`load()` once and pass the pieces down. Every variable has a documented default
(docs/configuration.md) that works for the local stack started by `make run`.

Two local profiles exist: `dev` (what `make run` starts) and `test` (what
`make test` starts, with its own state folder and every port shifted by
`AGORA_PORT_OFFSET`, 100 by default), so tests never touch a running dev stack.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

SERVICES: tuple[str, ...] = (
    "identity",
    "catalog",
    "search",
    "inventory",
    "orders",
    "payments",
    "audit",
)

# Base ports of the dev profile. The test profile adds AGORA_PORT_OFFSET.
# Each can be overridden by AGORA_PORT_<NAME> (e.g. AGORA_PORT_POSTGRES=5432).
BASE_PORTS: dict[str, int] = {
    "postgres": 15432,
    "redis": 16379,
    "kafka": 19092,
    "kafka_controller": 19093,
    "elasticsearch": 19200,
    "elasticsearch_transport": 19201,
    "temporal": 17233,
    "temporal_ui": 18233,
    "temporal_http": 17243,
    "temporal_metrics": 17234,
    "otelcol_grpc": 14317,
    "otelcol_http": 14318,
    "otelcol_prom": 18889,
    "otelcol_health": 13133,
    "otelcol_self_metrics": 18888,
    "jaeger_otlp": 14327,
    "jaeger_otlp_http": 14328,
    "jaeger_ui": 16686,
    "jaeger_health": 13134,
    "jaeger_self_metrics": 18887,
    "jaeger_query_grpc": 16685,
    "prometheus": 19090,
    "gateway": 18080,
    "gateway_side": 16000,
}
# gRPC port and side (health/metrics) port of each service, in SERVICES order.
for _i, _svc in enumerate(SERVICES, start=1):
    BASE_PORTS[f"{_svc}_grpc"] = 15000 + _i
    BASE_PORTS[f"{_svc}_side"] = 16000 + _i

DEFAULT_TEST_OFFSET = 100

# Gateway rate limits per route class; each is overridable by AGORA_RATE_LIMIT_<CLASS>.
DEFAULT_RATE_LIMITS: dict[str, str] = {
    "read": "100/s burst 200",
    "write": "20/s burst 40",
    "auth": "5/s burst 10",
    # Not a route class: password sign-ins per account (email), on top of `auth` per
    # address, so guessing one account's password from many addresses is slow too.
    "signin": "20/m burst 20",
}
REPO_ROOT = Path(__file__).resolve().parent.parent


_HIGHEST_PORT = 65535


def _ports(env: Mapping[str, str], offset: int) -> dict[str, int]:
    ports = {}
    for name, base in BASE_PORTS.items():
        variable = f"AGORA_PORT_{name.upper()}"
        # Spelled out in env.get: tests/unit/test_config_env.py finds the read names there.
        override = env.get(f"AGORA_PORT_{name.upper()}")
        ports[name] = _port(variable, override) if override else base + offset
    return ports


def _port(name: str, text: str) -> int:
    port = _at_least(1, name, text)
    if port > _HIGHEST_PORT:
        raise ValueError(f"{name} must be at most {_HIGHEST_PORT}, not {text!r}")
    return port


def _port_offset(text: str) -> int:
    """AGORA_PORT_OFFSET; refused when it would push the highest base port past 65535."""
    offset = _at_least(0, "AGORA_PORT_OFFSET", text)
    if max(BASE_PORTS.values()) + offset > _HIGHEST_PORT:
        raise ValueError(
            f"AGORA_PORT_OFFSET must keep every port at most {_HIGHEST_PORT}, not {text!r}"
        )
    return offset


@dataclass(frozen=True)
class Settings:
    """All configuration of one process, resolved from the environment."""

    profile: str
    state_dir: Path
    cache_dir: Path
    ports: dict[str, int]
    host: str = "127.0.0.1"
    service: str = "agora"
    log_level: str = "INFO"
    trace_sample_ratio: float = 1.0
    otlp_endpoint: str = ""
    tracing_enabled: bool = True
    temporal_namespace: str = "default"
    db_password_prefix: str = "agora-local-"
    extra: dict[str, str] = field(default_factory=dict, repr=False)  # holds DB passwords
    # Temporal payload encryption key ring (agora/codec.py); empty: <state>/secrets/codec-keys.json.
    codec_keys_file: str = ""
    # The codec server the Temporal web UI calls to show payloads in clear.
    ui_codec_endpoint: str = ""
    # Access tokens: identity issues them with these claims, the gateway checks them.
    jwt_issuer: str = "agora-identity"
    jwt_audience: str = "agora-api"
    # Gateway: GCRA limits per route class ("<n>/<s|m|h> burst <b>", AGORA_RATE_LIMIT_<CLASS>),
    # the largest request body accepted and the upstream deadline when a request sets none.
    rate_limits: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    gateway_max_body_bytes: int = 64 * 1024
    gateway_default_timeout_ms: int = 2000
    # How long the gateway waits for Redis (revocation + rate limit) before treating
    # it as unavailable: short, so a partitioned Redis costs little, but above the
    # event-loop lag of a loaded two-core machine.
    gateway_redis_timeout_ms: int = 500
    # Addresses or networks of the one proxy hop in front of the gateway (the ingress
    # controller's pods). Empty: the TCP peer is the client. Set: a request must come
    # from one of them, and its single X-Forwarded-For entry is the client.
    gateway_trusted_proxies: tuple[str, ...] = ()
    # argon2id hashes and verifications (gateway: registration; identity: sign-in) run
    # at most this many at once per process, with at most this many more waiting;
    # beyond, 429 / RESOURCE_EXHAUSTED (agora/passwords.py).
    password_hash_concurrency: int = 2
    password_hash_queue: int = 16
    # Identity: key-encryption key (base64 of 32 bytes; locally generated into
    # <state>/secrets/identity-kek when empty), token lifetimes and the signing-key
    # rotation interval, all in seconds.
    identity_kek: str = field(default="", repr=False)  # a secret: never in a repr
    access_token_ttl_s: int = 15 * 60
    refresh_token_ttl_s: int = 30 * 24 * 3600
    refresh_reuse_grace_s: int = 30
    signing_key_rotation_s: int = 24 * 3600
    # Catalog: TTL of a cached product (seconds; entries are also refreshed by every write).
    catalog_cache_ttl_s: int = 300
    # Inventory: how often the ReservationSweep schedule expires the reservations whose
    # TTL has passed (an expiry lands at most this long after the TTL).
    inventory_reservation_sweep_s: int = 30
    # Orders: how far (basis points) catalog's total may exceed the total a POST says
    # the customer was shown (`expected_total_minor`) before the order is rejected
    # PRICE_CHANGED. 0: any increase is the customer's to accept (docs/orders.md).
    order_price_tolerance_bps: int = 0
    # Search: name prefix of the product indices and their aliases, and how soon a
    # write becomes searchable (the index refresh interval).
    search_index_prefix: str = "agora-products"
    search_refresh_interval: str = "100ms"
    # Payments' simulated PSP: how long the "slow" test card takes to answer (longer
    # than the authorize activity's timeout) and how many times the "flaky" card
    # fails transiently per idempotency key before it succeeds.
    payments_psp_slow_delay_s: float = 15.0
    payments_psp_flaky_failures: int = 2
    # Audit: the Ed25519 key checkpoints are signed with (base64 of the 32-byte
    # private seed; locally generated into <state>/secrets/audit-signing-key when
    # empty), the checkpoint schedule's interval, and the Temporal web UI's base URL
    # used in export links (empty: http://<host>:<temporal_ui port>).
    audit_signing_key: str = field(default="", repr=False)  # a secret: never in a repr
    audit_checkpoint_interval_s: int = 300
    # Public keys of rotated-out checkpoint signing keys (base64 or PEM, separated by
    # commas or newlines) whose checkpoints verification still trusts (docs/audit.md).
    audit_retired_public_keys: str = ""
    temporal_ui_url_override: str = ""
    # Explicit addresses of the engines and of the certificates (Kubernetes points
    # these at external clusters and at the mounted cert-manager secrets); empty
    # means "derive from host + ports / state_dir" as the local stack does.
    temporal_address_override: str = ""
    # A Temporal cluster with mTLS (files of a client certificate, its key, and the
    # server's CA), or Temporal Cloud with an API key. Empty locally: plain loopback.
    temporal_tls_cert: str = ""
    temporal_tls_key: str = ""
    temporal_tls_ca: str = ""
    # The client cannot load a renewed certificate: once its files change, the process
    # restarts (as on SIGTERM) after a random delay within this many seconds (agora/rollover.py).
    temporal_tls_rollover_s: int = 3600
    temporal_api_key: str = field(default="", repr=False)  # a secret: never in a repr
    kafka_bootstrap_override: str = ""
    # Kafka over TLS (a Strimzi `tls` listener): SSL plus the cluster CA's PEM file.
    kafka_security_protocol: str = "PLAINTEXT"
    kafka_ca_file: str = ""
    redis_url_override: str = ""
    # Redis AUTH (a Secret); kept out of the URL so the URL can stay a plain value.
    redis_password: str = field(default="", repr=False)  # a secret: never in a repr
    elasticsearch_url_override: str = ""
    # An Elasticsearch with its own CA (ECK's self-signed http certificate) and an API key.
    elasticsearch_ca_file: str = ""
    elasticsearch_api_key: str = field(default="", repr=False)  # a secret: never in a repr
    postgres_host: str = ""
    # Connections each process's pool may open (the outbox relay's lock is one of them).
    db_pool_size: int = 10
    pki_dir_override: str = ""
    # Where servers listen (AGORA_BIND_HOST, default host) and the host each
    # service's gRPC API is dialled at (AGORA_GRPC_HOST_<SERVICE>, default host).
    bind_host: str = ""
    grpc_hosts: dict[str, str] = field(default_factory=dict)

    # Derived addresses -------------------------------------------------

    @property
    def temporal_address(self) -> str:
        return self.temporal_address_override or f"{self.host}:{self.ports['temporal']}"

    @property
    def kafka_bootstrap(self) -> str:
        return self.kafka_bootstrap_override or f"{self.host}:{self.ports['kafka']}"

    @property
    def redis_url(self) -> str:
        return self.redis_url_override or f"redis://{self.host}:{self.ports['redis']}/0"

    @property
    def elasticsearch_url(self) -> str:
        return (
            self.elasticsearch_url_override or f"http://{self.host}:{self.ports['elasticsearch']}"
        )

    @property
    def temporal_ui_url(self) -> str:
        return self.temporal_ui_url_override or f"http://{self.host}:{self.ports['temporal_ui']}"

    @property
    def pki_dir(self) -> Path:
        return Path(self.pki_dir_override) if self.pki_dir_override else self.state_dir / "pki"

    @property
    def listen_host(self) -> str:
        """The address servers bind to (AGORA_BIND_HOST, e.g. 0.0.0.0 in a pod)."""
        return self.bind_host or self.host

    def grpc_host(self, service: str) -> str:
        """The host a service's gRPC API is dialled at (its Service name in a cluster)."""
        return self.grpc_hosts.get(service) or self.host

    def db_password(self, service: str) -> str:
        """AGORA_DB_PASSWORD_<SERVICE>, else (locally) the stack's `agora-local-<service>`.
        In prod it must be set: a Secret left out of a pod's environment used to
        connect with the local default, the cluster's to refuse for a minute of
        retries as if the database were down."""
        password = self.extra.get(f"db_password_{service}")
        if password:
            return password
        if self.profile == "prod":
            raise ValueError(
                f"AGORA_DB_PASSWORD_{service.upper()} is not set: in prod each service's"
                " database password must be given (its Secret)"
            )
        return f"{self.db_password_prefix}{service}"

    def db_dsn(self, service: str) -> str:
        """DSN for a service's own database under its own login role. The login and
        password are percent-encoded: a generated password holding `/`, `#`, `?`,
        `@` or `%` was read as part of the host or port, or decoded to another one."""
        login, password = quote(service, safe=""), quote(self.db_password(service), safe="")
        return (
            f"postgresql://{login}:{password}"
            f"@{self.postgres_host or self.host}:{self.ports['postgres']}/{service}"
        )

    def grpc_port(self, service: str) -> int:
        return self.ports[f"{service}_grpc"]

    def side_port(self, service: str) -> int:
        return self.ports.get(f"{service}_side", self.ports["gateway_side"])

    def task_queue(self, service: str) -> str:
        return f"agora-{service}"


def _at_least(floor: int, name: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None
    if value < floor:
        raise ValueError(f"{name} must be at least {floor}, not {text!r}")
    return value


_TRACING = {"on": True, "true": True, "1": True, "off": False, "false": False, "0": False}


def _tracing(text: str) -> bool:
    """AGORA_TRACING; a value it does not know (`no`, `disabled`) is refused, not read as on."""
    value = text.strip().lower() or "on"
    if value not in _TRACING:
        raise ValueError(f"AGORA_TRACING must be on, off, true, false, 1 or 0, not {text!r}")
    return _TRACING[value]


def _kafka_protocol(text: str) -> str:
    protocol = text.strip().upper() or "PLAINTEXT"
    if protocol not in ("PLAINTEXT", "SSL"):
        raise ValueError(f"AGORA_KAFKA_SECURITY_PROTOCOL must be PLAINTEXT or SSL, not {text!r}")
    return protocol


def _ratio(text: str) -> float:
    """A head-sampling ratio; out of range is a mistake to refuse, not to clamp."""
    ratio = _number("AGORA_TRACE_SAMPLE_RATIO", text)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"AGORA_TRACE_SAMPLE_RATIO must be between 0 and 1, not {text!r}")
    return ratio


def _number(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{name} must be a number, not {text!r}") from None


def _seconds(name: str, text: str) -> float:
    """A duration in seconds: finite and not negative (`inf` would never answer)."""
    seconds = _number(name, text)
    if not (math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"{name} must be a number of seconds, at least 0, not {text!r}")
    return seconds


_RATE_LIMIT = re.compile(r"\s*(\d+)\s*/\s*(s|m|h)\s*(?:burst\s+(\d+))?\s*")
_RATE_PERIOD_S = {"s": 1, "m": 60, "h": 3600}


def parse_rate_limit(text: str, name: str = "rate limit") -> tuple[int, int, int]:
    """'<n>/<s|m|h> [burst <b>]' as (count, period in seconds, burst); the burst
    defaults to the count. `name` is the setting an error names."""
    match = _RATE_LIMIT.fullmatch(text)
    if match is None:
        raise ValueError(f"{name} must be '<n>/<s|m|h> [burst <b>]', not {text!r}")
    count = int(match[1])
    burst = int(match[3]) if match[3] else count
    if count < 1 or burst < 1:
        raise ValueError(f"{name} {text!r}: count and burst must be positive")
    return count, _RATE_PERIOD_S[match[2]], burst


def _rate_limit(name: str, text: str) -> str:
    parse_rate_limit(text, name)
    return text


def _credential(env: Mapping[str, str], name: str) -> str:
    """A key or password from the environment, without the newline a Secret made from
    a file usually ends with (`echo`, `jq -r`): sent in a header or an AUTH command,
    it would be refused (aiohttp refuses control characters in headers)."""
    return env.get(name, "").strip()


def _paired(env: Mapping[str, str], name: str, other: str) -> str:
    """A setting that needs `other` set too (a client certificate and its key): one
    alone was read as the current folder, an OSError retried for a minute as an outage."""
    value = env.get(name, "")
    if value and not env.get(other):
        raise ValueError(f"{name} is set but {other} is not: set both or neither")
    return value


def load(env: Mapping[str, str] | None = None, *, service: str = "agora") -> Settings:
    """Read the environment once. Documented in docs/configuration.md."""
    env = os.environ if env is None else env
    profile = env.get("AGORA_PROFILE", "dev")
    if profile not in ("dev", "test", "prod"):
        raise ValueError(f"AGORA_PROFILE must be dev, test or prod, not {profile!r}")
    offset_default = DEFAULT_TEST_OFFSET if profile == "test" else 0
    offset = _port_offset(env.get("AGORA_PORT_OFFSET", str(offset_default)))
    state_dir = Path(env.get("AGORA_STATE_DIR", REPO_ROOT / ".state" / profile)).resolve()
    cache_dir = (
        Path(env.get("AGORA_CACHE_DIR", Path.home() / ".cache" / "agora")).expanduser().resolve()
    )
    ports = _ports(env, offset)
    host = env.get("AGORA_HOST", "127.0.0.1")
    extra = {
        f"db_password_{key.removeprefix('AGORA_DB_PASSWORD_').lower()}": _credential(env, key)
        for key in env
        if key.startswith("AGORA_DB_PASSWORD_")
    }
    return Settings(
        profile=profile,
        state_dir=state_dir,
        cache_dir=cache_dir,
        ports=ports,
        host=host,
        service=env.get("AGORA_SERVICE", service),
        log_level=env.get("AGORA_LOG_LEVEL", "INFO").upper(),
        trace_sample_ratio=_ratio(env.get("AGORA_TRACE_SAMPLE_RATIO", "1.0")),
        otlp_endpoint=env.get("AGORA_OTLP_ENDPOINT", f"http://{host}:{ports['otelcol_grpc']}"),
        tracing_enabled=_tracing(env.get("AGORA_TRACING", "on")),
        temporal_namespace=env.get("AGORA_TEMPORAL_NAMESPACE", "default"),
        extra=extra,
        codec_keys_file=env.get("AGORA_CODEC_KEYS_FILE", ""),
        # Locally the gateway serves the codec (gateway/codec.py); in prod it is explicit.
        ui_codec_endpoint=env.get(
            "AGORA_UI_CODEC_ENDPOINT",
            "" if profile == "prod" else f"http://{host}:{ports['gateway']}/codec",
        ),
        jwt_issuer=env.get("AGORA_JWT_ISSUER", "agora-identity"),
        jwt_audience=env.get("AGORA_JWT_AUDIENCE", "agora-api"),
        rate_limits={
            name: _rate_limit(
                f"AGORA_RATE_LIMIT_{name.upper()}",
                env.get(f"AGORA_RATE_LIMIT_{name.upper()}", default),
            )
            for name, default in DEFAULT_RATE_LIMITS.items()
        },
        gateway_max_body_bytes=_at_least(
            1, "AGORA_GATEWAY_MAX_BODY_BYTES", env.get("AGORA_GATEWAY_MAX_BODY_BYTES", "65536")
        ),
        # The test profile shares two cores between the whole stack and the tests: a
        # write through a workflow can pass 2 s there. Deadline tests set the header.
        gateway_default_timeout_ms=_at_least(
            1,
            "AGORA_GATEWAY_DEFAULT_TIMEOUT_MS",
            env.get("AGORA_GATEWAY_DEFAULT_TIMEOUT_MS", "10000" if profile == "test" else "2000"),
        ),
        gateway_redis_timeout_ms=_at_least(
            1, "AGORA_GATEWAY_REDIS_TIMEOUT_MS", env.get("AGORA_GATEWAY_REDIS_TIMEOUT_MS", "500")
        ),
        gateway_trusted_proxies=tuple(
            part.strip()
            for part in env.get("AGORA_GATEWAY_TRUSTED_PROXIES", "").split(",")
            if part.strip()
        ),
        password_hash_concurrency=_at_least(
            1,
            "AGORA_PASSWORD_HASH_CONCURRENCY",
            env.get("AGORA_PASSWORD_HASH_CONCURRENCY", "2"),
        ),
        password_hash_queue=_at_least(
            0, "AGORA_PASSWORD_HASH_QUEUE", env.get("AGORA_PASSWORD_HASH_QUEUE", "16")
        ),
        identity_kek=env.get("AGORA_IDENTITY_KEK", ""),
        access_token_ttl_s=_at_least(
            1, "AGORA_IDENTITY_ACCESS_TTL_S", env.get("AGORA_IDENTITY_ACCESS_TTL_S", "900")
        ),
        refresh_token_ttl_s=_at_least(
            1, "AGORA_IDENTITY_REFRESH_TTL_S", env.get("AGORA_IDENTITY_REFRESH_TTL_S", "2592000")
        ),
        refresh_reuse_grace_s=_at_least(
            0,
            "AGORA_IDENTITY_REFRESH_REUSE_GRACE_S",
            env.get("AGORA_IDENTITY_REFRESH_REUSE_GRACE_S", "30"),
        ),
        signing_key_rotation_s=_at_least(
            1, "AGORA_IDENTITY_KEY_ROTATION_S", env.get("AGORA_IDENTITY_KEY_ROTATION_S", "86400")
        ),
        catalog_cache_ttl_s=_at_least(
            1, "AGORA_CATALOG_CACHE_TTL_S", env.get("AGORA_CATALOG_CACHE_TTL_S", "300")
        ),
        # The test profile sweeps often, so a test's short TTL expires quickly.
        inventory_reservation_sweep_s=_at_least(
            1,
            "AGORA_INVENTORY_RESERVATION_SWEEP_S",
            env.get("AGORA_INVENTORY_RESERVATION_SWEEP_S", "2" if profile == "test" else "30"),
        ),
        order_price_tolerance_bps=_at_least(
            0,
            "AGORA_ORDER_PRICE_TOLERANCE_BPS",
            env.get("AGORA_ORDER_PRICE_TOLERANCE_BPS", "0"),
        ),
        search_index_prefix=env.get("AGORA_SEARCH_INDEX_PREFIX", "agora-products"),
        search_refresh_interval=env.get("AGORA_SEARCH_REFRESH_INTERVAL", "100ms"),
        payments_psp_slow_delay_s=_seconds(
            "AGORA_PAYMENTS_PSP_SLOW_DELAY_S", env.get("AGORA_PAYMENTS_PSP_SLOW_DELAY_S", "15")
        ),
        payments_psp_flaky_failures=_at_least(
            0,
            "AGORA_PAYMENTS_PSP_FLAKY_FAILURES",
            env.get("AGORA_PAYMENTS_PSP_FLAKY_FAILURES", "2"),
        ),
        audit_signing_key=env.get("AGORA_AUDIT_SIGNING_KEY", ""),
        audit_checkpoint_interval_s=_at_least(
            1,
            "AGORA_AUDIT_CHECKPOINT_INTERVAL_S",
            env.get("AGORA_AUDIT_CHECKPOINT_INTERVAL_S", "300"),
        ),
        audit_retired_public_keys=env.get("AGORA_AUDIT_RETIRED_PUBLIC_KEYS", ""),
        temporal_ui_url_override=env.get("AGORA_TEMPORAL_UI_URL", ""),
        temporal_address_override=env.get("AGORA_TEMPORAL_ADDRESS", ""),
        temporal_tls_cert=_paired(env, "AGORA_TEMPORAL_TLS_CERT", "AGORA_TEMPORAL_TLS_KEY"),
        temporal_tls_key=_paired(env, "AGORA_TEMPORAL_TLS_KEY", "AGORA_TEMPORAL_TLS_CERT"),
        temporal_tls_ca=env.get("AGORA_TEMPORAL_TLS_CA", ""),
        temporal_tls_rollover_s=_at_least(
            0,
            "AGORA_TEMPORAL_TLS_ROLLOVER_S",
            env.get("AGORA_TEMPORAL_TLS_ROLLOVER_S", "3600"),
        ),
        temporal_api_key=_credential(env, "AGORA_TEMPORAL_API_KEY"),
        kafka_bootstrap_override=env.get("AGORA_KAFKA_BOOTSTRAP", ""),
        kafka_security_protocol=_kafka_protocol(env.get("AGORA_KAFKA_SECURITY_PROTOCOL", "")),
        kafka_ca_file=env.get("AGORA_KAFKA_CA_FILE", ""),
        redis_url_override=env.get("AGORA_REDIS_URL", ""),
        redis_password=_credential(env, "AGORA_REDIS_PASSWORD"),
        elasticsearch_url_override=env.get("AGORA_ELASTICSEARCH_URL", ""),
        elasticsearch_ca_file=env.get("AGORA_ELASTICSEARCH_CA_FILE", ""),
        elasticsearch_api_key=_credential(env, "AGORA_ELASTICSEARCH_API_KEY"),
        postgres_host=env.get("AGORA_POSTGRES_HOST", ""),
        # The pool keeps 2 connections open (agora/db.py): fewer is refused there, later.
        db_pool_size=_at_least(2, "AGORA_DB_POOL_SIZE", env.get("AGORA_DB_POOL_SIZE", "10")),
        pki_dir_override=env.get("AGORA_PKI_DIR", ""),
        bind_host=env.get("AGORA_BIND_HOST", ""),
        grpc_hosts={
            svc: env[f"AGORA_GRPC_HOST_{svc.upper()}"]
            for svc in (*SERVICES, "gateway")
            if env.get(f"AGORA_GRPC_HOST_{svc.upper()}")
        },
    )
