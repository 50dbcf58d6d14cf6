"""Configuration resolves profiles, ports and overrides from the environment alone."""

from __future__ import annotations

import pytest
from asyncpg import connect_utils
from yoyo.connections import parse_uri

from agora import config


def test_dev_and_test_profiles_share_no_port() -> None:
    dev = config.load({})
    test = config.load({"AGORA_PROFILE": "test"})
    assert not set(dev.ports.values()) & set(test.ports.values())
    assert len(set(dev.ports.values())) == len(dev.ports), "two components share a port"


def test_profiles_have_separate_state_folders() -> None:
    assert config.load({}).state_dir.name == "dev"
    assert config.load({"AGORA_PROFILE": "test"}).state_dir.name == "test"


def test_a_single_port_can_be_overridden() -> None:
    settings = config.load({"AGORA_PORT_POSTGRES": "5432"})
    assert settings.ports["postgres"] == 5432
    assert settings.ports["redis"] == config.BASE_PORTS["redis"]


def test_each_service_connects_as_its_own_role_to_its_own_database() -> None:
    settings = config.load({"AGORA_DB_PASSWORD_CATALOG": "s3cret"})
    assert settings.db_dsn("catalog").startswith("postgresql://catalog:s3cret@")
    assert settings.db_dsn("catalog").endswith("/catalog")
    assert settings.db_dsn("orders").startswith("postgresql://orders:agora-local-orders@")


def test_prod_refuses_a_service_database_password_left_unset() -> None:
    # The local default, used in prod, was refused by the cluster's database and
    # retried for a minute as an outage.
    settings = config.load({"AGORA_PROFILE": "prod", "AGORA_DB_PASSWORD_CATALOG": "s3cret\n"})
    assert settings.db_dsn("catalog").startswith("postgresql://catalog:s3cret@")
    with pytest.raises(ValueError, match="AGORA_DB_PASSWORD_ORDERS is not set"):
        settings.db_dsn("orders")
    assert "agora-local-orders" in config.load({"AGORA_PROFILE": "test"}).db_dsn("orders")


def test_every_service_has_a_grpc_and_a_side_port() -> None:
    settings = config.load({})
    for service in config.SERVICES:
        assert settings.grpc_port(service) != settings.side_port(service)


def test_an_unknown_profile_is_refused() -> None:
    with pytest.raises(ValueError, match="AGORA_PROFILE"):
        config.load({"AGORA_PROFILE": "staging-ish"})


def test_sampling_ratio_comes_from_the_environment() -> None:
    assert config.load({"AGORA_TRACE_SAMPLE_RATIO": "0.1"}).trace_sample_ratio == 0.1
    assert config.load({}).trace_sample_ratio == 1.0


def test_temporal_is_plain_locally_mtls_with_a_client_certificate_tls_with_an_api_key(
    tmp_path,
) -> None:
    from temporalio.client import TLSConfig

    from agora.temporal import tls_config

    assert tls_config(config.load({})) is False
    assert tls_config(config.load({"AGORA_TEMPORAL_API_KEY": "k"})) is True
    (tmp_path / "c.pem").write_bytes(b"cert")
    (tmp_path / "k.pem").write_bytes(b"key")
    tls = tls_config(
        config.load(
            {
                "AGORA_TEMPORAL_TLS_CERT": str(tmp_path / "c.pem"),
                "AGORA_TEMPORAL_TLS_KEY": str(tmp_path / "k.pem"),
            }
        )
    )
    assert isinstance(tls, TLSConfig) and tls.client_cert == b"cert"


def test_credentials_from_a_secret_file_lose_their_trailing_newline() -> None:
    settings = config.load(
        {
            "AGORA_ELASTICSEARCH_API_KEY": "abc=\n",
            "AGORA_REDIS_PASSWORD": "s3cret\n",
            "AGORA_TEMPORAL_API_KEY": " key\r\n",
        }
    )
    assert settings.elasticsearch_api_key == "abc="
    assert settings.redis_password == "s3cret"
    assert settings.temporal_api_key == "key"


def test_a_settings_repr_shows_no_secret() -> None:
    # Printed by mistake (a debugger, a log of the settings, a traceback's locals), a
    # repr must not hand out a key or a password.
    secrets = {
        "AGORA_IDENTITY_KEK": "kek-do-not-show",
        "AGORA_AUDIT_SIGNING_KEY": "audit-do-not-show",
        "AGORA_TEMPORAL_API_KEY": "temporal-do-not-show",
        "AGORA_REDIS_PASSWORD": "redis-do-not-show",
        "AGORA_ELASTICSEARCH_API_KEY": "es-do-not-show",
        "AGORA_DB_PASSWORD_ORDERS": "db-do-not-show",
    }
    settings = config.load(secrets)
    assert settings.identity_kek == "kek-do-not-show"
    shown = repr(settings)
    assert not [name for name, value in secrets.items() if value in shown]


@pytest.mark.parametrize("password", ["ab/cd", "ab#cd", "pa?ss", "p%41ss", "a@b", "a:b c"])
def test_a_database_password_reaches_both_dsn_readers_as_it_is(password: str) -> None:
    # Generated passwords may hold URL characters: unescaped, yoyo (migrations) read a
    # "/" or "#" as the end of the host (a crash naming part of the password), asyncpg
    # took "a@b" for password "a" on host "b@…", and "%41" became "A".
    settings = config.load({"AGORA_DB_PASSWORD_ORDERS": password, "AGORA_POSTGRES_HOST": "db"})
    dsn = settings.db_dsn("orders")

    migrations = parse_uri(dsn)
    assert (migrations.username, migrations.password) == ("orders", password)
    assert (migrations.hostname, migrations.database) == ("db", "orders")
    addresses, params = connect_utils._parse_connect_dsn_and_args(  # what connect() runs
        dsn=dsn,
        **dict.fromkeys(
            (
                "host",
                "port",
                "user",
                "password",
                "passfile",
                "database",
                "ssl",
                "service",
                "servicefile",
                "direct_tls",
                "server_settings",
                "target_session_attrs",
                "krbsrvname",
                "gsslib",
            )
        ),
    )
    assert (params.user, params.password, params.database) == ("orders", password, "orders")
    assert [host for host, _ in addresses] == ["db"]


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ("AGORA_TEMPORAL_TLS_CERT", "AGORA_TEMPORAL_TLS_KEY"),
        ("AGORA_TEMPORAL_TLS_KEY", "AGORA_TEMPORAL_TLS_CERT"),
    ],
)
def test_a_temporal_client_certificate_needs_its_key(given: str, missing: str) -> None:
    # One alone was read as the current folder at connect: an OSError, retried for a
    # minute as if Temporal were away.
    with pytest.raises(ValueError, match=f"{given} is set but {missing} is not"):
        config.load({given: "/run/secrets/temporal/tls"})
