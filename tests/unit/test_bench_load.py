"""The load run's pure parts: the mix, the rate steps, the arrival schedule, how a
step is summarised and which step is the knee (no clock, no network)."""

from __future__ import annotations

import itertools
import random
from collections import Counter

import pytest

from bench.load_cpu import window
from bench.load_plan import (
    DEFAULT_MIX,
    MACHINE,
    OTHERS,
    Sample,
    StepSummary,
    arrival_offsets,
    bottleneck,
    first_failed,
    kinds,
    knee,
    parse_server_timing,
    rate_steps,
    summarize,
    zipf_weights,
)


def test_default_mix_browses_ten_times_as_often_as_it_orders() -> None:
    browse = DEFAULT_MIX["product"] + DEFAULT_MIX["listing"] + DEFAULT_MIX["search"]
    assert browse == 10 * DEFAULT_MIX["order_place"]


def test_every_cycle_of_kinds_holds_the_mix_exactly() -> None:
    mix = {"a": 5, "b": 2, "c": 1}
    stream = kinds(mix, random.Random(1))
    for _ in range(20):
        cycle = list(itertools.islice(stream, 8))
        assert Counter(cycle) == Counter(mix)


def test_kinds_are_shuffled_and_reproducible_from_the_seed() -> None:
    mix = {"a": 10, "b": 10}
    first = list(itertools.islice(kinds(mix, random.Random(3)), 200))
    again = list(itertools.islice(kinds(mix, random.Random(3)), 200))
    assert first == again
    assert first[:20] != ["a"] * 10 + ["b"] * 10


def test_an_empty_mix_is_refused() -> None:
    with pytest.raises(ValueError):
        next(kinds({}, random.Random(0)))


def test_rates_step_up_geometrically_until_the_maximum_rate() -> None:
    assert rate_steps(20, 1.25, 40, 100) == pytest.approx([20, 25, 31.25, 39.0625])


def test_rates_stop_at_the_step_count() -> None:
    assert rate_steps(10, 2, 1e9, 3) == [10, 20, 40]


def test_a_maximum_rate_equal_to_a_step_includes_it() -> None:
    assert rate_steps(20, 1.25, 25, 10) == [20, 25]


@pytest.mark.parametrize(("start", "factor", "steps"), [(0, 1.25, 5), (20, 1.0, 5), (20, 2, 0)])
def test_stepping_that_would_never_rise_is_refused(start: float, factor: float, steps: int) -> None:
    with pytest.raises(ValueError):
        rate_steps(start, factor, 100, steps)


def test_arrivals_are_evenly_spaced_at_the_rate() -> None:
    offsets = arrival_offsets(4, 2)
    assert offsets == pytest.approx([0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])


def test_arrivals_keep_the_rate_for_fractional_rates_and_durations() -> None:
    offsets = arrival_offsets(31.25, 10)
    assert len(offsets) == 312
    assert all(b - a == pytest.approx(1 / 31.25) for a, b in itertools.pairwise(offsets))
    assert offsets[-1] < 10


def test_no_arrivals_for_a_zero_rate_or_duration() -> None:
    assert arrival_offsets(0, 10) == []
    assert arrival_offsets(10, 0) == []


def test_server_timing_is_read_as_seconds_per_stage() -> None:
    header = "auth;dur=0.134, ratelimit;dur=1.967, upstream;dur=4.537, total;dur=6.632"
    assert parse_server_timing(header) == pytest.approx(
        {"auth": 0.000134, "ratelimit": 0.001967, "upstream": 0.004537, "total": 0.006632}
    )
    assert parse_server_timing("") == {}


def _sample(kind: str, due: float, ms: float, outcome: str = "200", ok: bool = True) -> Sample:
    return Sample(kind, due, ms / 1000, 0.0, outcome, ok, {"upstream": ms / 2000})


def test_only_requests_due_inside_the_window_are_measured() -> None:
    samples = [
        _sample("product", 0.5, 900),  # warm-up
        *(_sample("product", 1 + i / 10, 10) for i in range(10)),
        _sample("search", 2.5, 900),  # due after the window
    ]
    step = summarize(10, 1.0, 1.0, samples)
    assert step.overall.n == 10
    assert step.overall.p99_ms == pytest.approx(10)
    assert set(step.by_kind) == {"product"}


def test_achieved_rate_counts_answers_inside_the_window_only() -> None:
    # Ten due in one second; the last five answered only after the window ended.
    samples = [_sample("product", i / 10, 10 if i < 5 else 2000) for i in range(10)]
    step = summarize(10, 0.0, 1.0, samples)
    assert step.achieved_rate == pytest.approx(5)
    assert step.overall.p99_ms == pytest.approx(2000)


def test_errors_are_counted_by_kind_and_outcome() -> None:
    samples = [
        _sample("product", 0.1, 5),
        _sample("order_place", 0.2, 5, "409", ok=False),
        _sample("order_place", 0.3, 5, "409", ok=False),
        _sample("search", 0.4, 5, "timeout", ok=False),
    ]
    step = summarize(4, 0.0, 1.0, samples)
    assert step.errors == {"order_place 409": 2, "search timeout": 1}
    assert step.error_count == 3


def test_stages_are_grouped_per_kind_in_request_order() -> None:
    sample = Sample(
        "product", 0.1, 0.01, 0.0, "200", True, {"total": 0.009, "auth": 0.001, "x": 0.0}
    )
    step = summarize(1, 0.0, 1.0, [sample])
    assert list(step.stages["product"]) == ["auth", "total", "x"]
    assert step.stages["product"]["auth"].p50_ms == pytest.approx(1)


def _step(rate: float, p99_ms: float, errors: int = 0) -> StepSummary:
    samples = [_sample("product", i / 100, p99_ms) for i in range(100)]
    samples += [_sample("product", 0.5, 1, "503", ok=False) for _ in range(errors)]
    return summarize(rate, 0.0, 1.0, samples)


def test_a_step_is_held_within_the_p99_limit_and_without_errors() -> None:
    assert _step(20, 150).held(200)
    assert _step(20, 200).held(200)
    assert not _step(20, 201).held(200)
    assert not _step(20, 50, errors=1).held(200)


def test_an_empty_step_is_not_held() -> None:
    assert not summarize(20, 0.0, 1.0, []).held(200)


def test_the_knee_is_the_highest_step_held_before_the_first_failure() -> None:
    steps = [_step(20, 50), _step(25, 80), _step(31, 250), _step(39, 90)]
    found = knee(steps, 200)
    assert found is not None and found.offered_rate == 25
    failed = first_failed(steps, 200)
    assert failed is not None and failed.offered_rate == 31


def test_errors_end_the_held_range_like_a_slow_p99() -> None:
    steps = [_step(20, 50), _step(25, 50, errors=2)]
    found = knee(steps, 200)
    assert found is not None and found.offered_rate == 20


def test_no_knee_when_the_first_step_fails() -> None:
    assert knee([_step(20, 500), _step(25, 50)], 200) is None
    assert knee([], 200) is None


def test_zipf_weights_rise_and_favour_the_first_ranks() -> None:
    cumulative = zipf_weights(1000)
    assert all(b > a for a, b in itertools.pairwise(cumulative))
    top_ten_share = cumulative[9] / cumulative[-1]
    assert 0.35 < top_ten_share < 0.45  # H(10) / H(1000) = 2.93 / 7.49


def test_cpu_window_is_the_difference_with_the_rest_of_the_machine() -> None:
    before = {"gateway": 10.0, "postgres": 5.0, MACHINE: 100.0}
    after = {"gateway": 13.0, "postgres": 5.5, "new": 1.0, MACHINE: 105.0}
    used = window(before, after)
    assert used == {"gateway": 3.0, "postgres": 0.5, MACHINE: 5.0, OTHERS: 1.5}
    assert list(used)[:2] == ["gateway", "postgres"]


def test_bottleneck_names_the_busiest_process() -> None:
    text = bottleneck({"gateway": 6.0, "elasticsearch": 9.0, MACHINE: 19.0}, 10.0, 2)
    assert text.startswith("busiest: elasticsearch 0.90 cores, gateway 0.60 cores")
    assert "95% busy" in text


def test_bottleneck_warns_when_other_processes_took_the_machine() -> None:
    cpu = {"gateway": 1.0, MACHINE: 19.0, OTHERS: 18.0}
    assert "not alone on the machine" in bottleneck(cpu, 10.0, 2)
    assert "not alone" not in bottleneck({"gateway": 9.0, MACHINE: 10.0, OTHERS: 1.0}, 10.0, 2)
