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


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AGORA_PORT_OFFSET", "abc"),
        ("AGORA_PORT_OFFSET", "-100"),
        ("AGORA_PORT_OFFSET", "60000"),  # every port past 65535
        ("AGORA_PORT_POSTGRES", "abc"),
        ("AGORA_PORT_POSTGRES", "0"),
        ("AGORA_PORT_GATEWAY", "70000"),
        ("AGORA_TRACE_SAMPLE_RATIO", "abc"),
        ("AGORA_TRACE_SAMPLE_RATIO", "1.5"),
        ("AGORA_RATE_LIMIT_READ", "lots"),
        ("AGORA_RATE_LIMIT_WRITE", "0/s"),
        ("AGORA_RATE_LIMIT_SIGNIN", "20/m burst 0"),
        ("AGORA_PAYMENTS_PSP_FLAKY_FAILURES", "-3"),
        ("AGORA_PAYMENTS_PSP_FLAKY_FAILURES", "two"),
        ("AGORA_PAYMENTS_PSP_SLOW_DELAY_S", "-5"),
        ("AGORA_PAYMENTS_PSP_SLOW_DELAY_S", "inf"),
        ("AGORA_PAYMENTS_PSP_SLOW_DELAY_S", "slow"),
    ],
)
def test_a_malformed_port_ratio_rate_or_psp_setting_is_refused_naming_the_variable(
    name: str, value: str
) -> None:
    with pytest.raises(ValueError, match=name):
        config.load({name: value})


def test_ports_rates_and_psp_settings_within_bounds_are_taken() -> None:
    settings = config.load(
        {
            "AGORA_PORT_OFFSET": "0",
            "AGORA_PORT_POSTGRES": "65535",
            "AGORA_RATE_LIMIT_READ": "7/m",
            "AGORA_PAYMENTS_PSP_FLAKY_FAILURES": "0",
            "AGORA_PAYMENTS_PSP_SLOW_DELAY_S": "0.5",
        }
    )
    assert settings.ports["postgres"] == 65535
    assert settings.ports["redis"] == config.BASE_PORTS["redis"]
    assert settings.rate_limits["read"] == "7/m"
    assert settings.payments_psp_flaky_failures == 0
    assert settings.payments_psp_slow_delay_s == 0.5
