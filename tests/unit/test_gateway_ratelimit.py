"""Rate-limit configuration and the headers a verdict produces."""

from __future__ import annotations

import pytest

from gateway.ratelimit import Admission, Rate, Verdict


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("100/s burst 200", Rate(100, 1, 200)),
        ("5/s", Rate(5, 1, 5)),
        (" 30 / m burst 10 ", Rate(30, 60, 10)),
        ("1/h burst 1", Rate(1, 3600, 1)),
    ],
)
def test_parse(text: str, rate: Rate) -> None:
    assert Rate.parse(text) == rate


@pytest.mark.parametrize("text", ["", "100", "100/d", "0/s", "5/s burst 0", "5/s burst", "x/s"])
def test_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Rate.parse(text)


def test_interval_is_the_time_between_requests_at_the_sustained_rate() -> None:
    assert Rate.parse("100/s").interval_us == 10_000
    assert Rate.parse("2/m").interval_us == 30_000_000


def test_denied_verdict_carries_retry_after_rounded_up() -> None:
    denied = Admission(Verdict.RATE_LIMITED, limit=10, remaining=0, retry_after_s=0.2, reset_s=4.1)
    assert denied.headers() == {
        "RateLimit-Limit": "10",
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": "5",
        "Retry-After": "1",
    }
    allowed = Admission(Verdict.ALLOWED, limit=10, remaining=7, retry_after_s=0, reset_s=0.3)
    assert "Retry-After" not in allowed.headers()
