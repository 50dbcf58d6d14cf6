"""Headers every answer to a problem carries, whichever code made it."""

from __future__ import annotations

import pytest

from gateway.problems import PROBLEM_TYPES, Problem, answer_headers, render


@pytest.mark.parametrize(
    "code", sorted(c for c, kind in PROBLEM_TYPES.items() if kind.status == 503)
)
def test_every_503_says_when_to_come_back(code: str) -> None:
    # A service or dependency that was unreachable (search's cluster down, a service
    # restarting) was answered 503 with no Retry-After.
    answer = render(Problem(code), instance="/v1/search", trace_id="0" * 32)
    assert answer.headers["Retry-After"] == "1"


def test_a_503_s_own_retry_after_is_kept() -> None:
    problem = Problem("dependency-unavailable", headers={"Retry-After": "5"})
    assert answer_headers(problem)["Retry-After"] == "5"


def test_other_answers_get_no_retry_after_they_did_not_ask_for() -> None:
    assert "Retry-After" not in answer_headers(Problem("not-found"))
