"""A setting that would break every request, token or schedule is refused at start,
with an error naming the variable, instead of being taken as it comes."""

from __future__ import annotations

import pytest

from agora import config


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGORA_GATEWAY_DEFAULT_TIMEOUT_MS", "0"),  # every request without a header: 504
        ("AGORA_GATEWAY_MAX_BODY_BYTES", "0"),  # every body: 413
        ("AGORA_GATEWAY_REDIS_TIMEOUT_MS", "0"),  # every Redis call out of time
        ("AGORA_IDENTITY_ACCESS_TTL_S", "-60"),  # tokens issued already expired
        ("AGORA_IDENTITY_REFRESH_TTL_S", "0"),
        ("AGORA_IDENTITY_KEY_ROTATION_S", "0"),  # a schedule with no interval
        ("AGORA_INVENTORY_RESERVATION_SWEEP_S", "0"),
        ("AGORA_AUDIT_CHECKPOINT_INTERVAL_S", "-1"),
        ("AGORA_DB_POOL_SIZE", "1"),  # below the pool's 2 kept-open connections
        ("AGORA_GATEWAY_DEFAULT_TIMEOUT_MS", "2s"),  # not a number of milliseconds
    ],
)
def test_a_numeric_setting_out_of_bounds_is_refused_naming_the_variable(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError, match=name):
        config.load({name: value})


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("AGORA_GATEWAY_DEFAULT_TIMEOUT_MS", "gateway_default_timeout_ms", 1),
        ("AGORA_GATEWAY_MAX_BODY_BYTES", "gateway_max_body_bytes", 1),
        ("AGORA_GATEWAY_REDIS_TIMEOUT_MS", "gateway_redis_timeout_ms", 1),
        ("AGORA_IDENTITY_ACCESS_TTL_S", "access_token_ttl_s", 1),
        ("AGORA_DB_POOL_SIZE", "db_pool_size", 2),
    ],
)
def test_the_smallest_value_that_works_is_taken(name: str, field: str, value: int) -> None:
    assert getattr(config.load({name: str(value)}), field) == value


@pytest.mark.parametrize("value", ["no", "disabled", "yes", "enabled", "of"])
def test_a_tracing_switch_it_does_not_know_is_refused_not_read_as_on(value: str) -> None:
    with pytest.raises(ValueError, match="AGORA_TRACING"):
        config.load({"AGORA_TRACING": value})


@pytest.mark.parametrize(
    ("value", "enabled"),
    [
        ("on", True),
        ("true", True),
        ("1", True),
        ("", True),
        ("off", False),
        (" off", False),
        ("OFF\n", False),
        ("false", False),
        ("0", False),
    ],
)
def test_the_tracing_switch_is_read_whatever_its_case_and_spaces(value: str, enabled: bool) -> None:
    assert config.load({"AGORA_TRACING": value}).tracing_enabled is enabled
