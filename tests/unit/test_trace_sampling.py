"""Head sampling from configuration: a ratio for new traces, the caller's decision after."""

from __future__ import annotations

import random

import pytest
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    set_span_in_context,
)

from agora import config, telemetry
from agora.telemetry import sampler

TRACES = 2_000


def _decide(ratio: str, *, tracing: str = "on", parent_sampled: bool | None = None) -> Decision:
    settings = config.load({"AGORA_TRACE_SAMPLE_RATIO": ratio, "AGORA_TRACING": tracing})
    rng = random.Random(7)
    trace_id = rng.getrandbits(128)
    context = None
    if parent_sampled is not None:
        flags = TraceFlags(TraceFlags.SAMPLED if parent_sampled else TraceFlags.DEFAULT)
        parent = SpanContext(trace_id, rng.getrandbits(64), is_remote=True, trace_flags=flags)
        context = set_span_in_context(NonRecordingSpan(parent))
    return sampler(settings).should_sample(context, trace_id, "GET /v1/products/{sku}").decision


def _kept(ratio: str) -> int:
    decide = sampler(config.load({"AGORA_TRACE_SAMPLE_RATIO": ratio})).should_sample
    rng = random.Random(11)
    return sum(
        decide(None, rng.getrandbits(128), "root").decision is Decision.RECORD_AND_SAMPLE
        for _ in range(TRACES)
    )


def test_every_trace_is_kept_at_the_local_and_staging_ratio() -> None:
    assert _kept("1.0") == TRACES


def test_about_one_trace_in_ten_is_kept_in_production() -> None:
    assert 0.07 * TRACES < _kept("0.1") < 0.13 * TRACES


def test_a_hop_follows_its_callers_decision_whatever_its_own_ratio() -> None:
    # A trace is kept whole or dropped whole: services never re-sample a started trace.
    assert _decide("0.0", parent_sampled=True) is Decision.RECORD_AND_SAMPLE
    assert _decide("1.0", parent_sampled=False) is Decision.DROP


def test_tracing_off_records_nothing_even_for_a_sampled_caller() -> None:
    assert _decide("1.0", tracing="off") is Decision.DROP
    assert _decide("1.0", tracing="off", parent_sampled=True) is Decision.DROP


@pytest.mark.parametrize("ratio", ["-0.1", "1.5"])
def test_a_ratio_outside_zero_to_one_is_refused(ratio: str) -> None:
    with pytest.raises(ValueError, match="AGORA_TRACE_SAMPLE_RATIO"):
        config.load({"AGORA_TRACE_SAMPLE_RATIO": ratio})


@pytest.mark.parametrize("statement", ["BEGIN;", "BEGIN", "COMMIT;", "SET", "SAVEPOINT", "RELEASE"])
def test_transaction_framing_statements_are_never_recorded(statement: str) -> None:
    decide = sampler(config.load({"AGORA_TRACE_SAMPLE_RATIO": "1.0"})).should_sample
    assert decide(None, random.Random(3).getrandbits(128), statement).decision is Decision.DROP


@pytest.mark.parametrize("statement", ["SELECT", "INSERT", "UPDATE", "ROLLBACK;"])
def test_statements_that_do_work_or_undo_it_follow_the_traces_decision(statement: str) -> None:
    decide = sampler(config.load({"AGORA_TRACE_SAMPLE_RATIO": "1.0"})).should_sample
    result = decide(None, random.Random(3).getrandbits(128), statement)
    assert result.decision is Decision.RECORD_AND_SAMPLE


def _edge_kept(ratio: str, *, parent_sampled: bool, chosen_ids: bool) -> int:
    """Of TRACES requests carrying a client's traceparent, how many the edge keeps
    (its coin seeded, so the count is the same every run)."""
    telemetry.random.seed(3)
    decide = sampler(config.load({"AGORA_TRACE_SAMPLE_RATIO": ratio}), edge=True).should_sample
    rng = random.Random(5)
    flags = TraceFlags(TraceFlags.SAMPLED if parent_sampled else TraceFlags.DEFAULT)
    kept = 0
    for n in range(TRACES):
        # A client gaming TraceIdRatioBased picks ids whose low 64 bits are tiny.
        trace_id = (rng.getrandbits(64) << 64) | n if chosen_ids else rng.getrandbits(128)
        parent = SpanContext(trace_id, rng.getrandbits(64), is_remote=True, trace_flags=flags)
        context = set_span_in_context(NonRecordingSpan(parent))
        kept += decide(context, trace_id, "POST /v1/orders").decision is Decision.RECORD_AND_SAMPLE
    return kept


@pytest.mark.parametrize("chosen_ids", [False, True])
def test_the_edge_draws_its_own_sampling_for_a_clients_traceparent(chosen_ids: bool) -> None:
    # A client asking for every request to be traced (sampled flag, chosen ids) gets
    # the production ratio like anyone else; locally (1.0) everything is kept.
    assert 0.07 * TRACES < _edge_kept("0.1", parent_sampled=True, chosen_ids=chosen_ids)
    assert _edge_kept("0.1", parent_sampled=True, chosen_ids=chosen_ids) < 0.13 * TRACES
    assert _edge_kept("1.0", parent_sampled=False, chosen_ids=chosen_ids) == TRACES


def test_nothing_is_recorded_under_suppressed_instrumentation() -> None:
    # The outbox relay and the readiness checks: the spans of clients that trace
    # themselves (Elasticsearch's `cluster.health`) and manual ones are dropped too.
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    decide = sampler(config.load({"AGORA_TRACE_SAMPLE_RATIO": "1.0"})).should_sample
    trace_id = random.Random(3).getrandbits(128)
    with suppress_instrumentation():
        assert decide(None, trace_id, "cluster.health").decision is Decision.DROP
    assert decide(None, trace_id, "cluster.health").decision is Decision.RECORD_AND_SAMPLE
