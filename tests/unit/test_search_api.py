"""Search's gRPC API answers an Elasticsearch failure with the status that says whose it is.

Each failure is raised by a stand-in Elasticsearch client behind agora.grpc's call
wrapper; the status is read on the wire, then through the gateway's one table.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from elastic_transport import ApiResponseMeta, HttpHeaders, NodeConfig
from elasticsearch import (
    ApiError,
    AuthenticationException,
    BadRequestError,
    ConnectionError,
    ConnectionTimeout,
    NotFoundError,
    SSLError,
)
from grpclib import GRPCError
from grpclib.const import Status

from contracts.agora.search.v1 import SearchRequest, SearchServiceStub, SortOrder
from gateway.failures import from_grpc
from tests.unit.grpcserve import serving
from workers.search.api import SearchApi
from workers.search.query import encode_cursor

FIRST_PAGE = SearchRequest(query="lamp", sort=SortOrder.PRICE_ASC, page_size=2)
NEXT_PAGE = SearchRequest(
    query="lamp",
    sort=SortOrder.PRICE_ASC,
    page_size=2,
    search_after=encode_cursor(FIRST_PAGE, [1299, "SKU-1"]),
)


def api_error(kind: type[ApiError], status: int, error_type: str, reason: str) -> ApiError:
    """What the client raises for an Elasticsearch answer of `status` with this error."""
    meta = ApiResponseMeta(status, "1.1", HttpHeaders(), 0.01, NodeConfig("http", "es", 9200))
    cause = {"type": error_type, "reason": reason}
    body = {"error": {"root_cause": [cause], **cause}, "status": status}
    return kind(error_type, meta, body)


def shards_failed(kind: type[ApiError], status: int, cause: str, reason: str) -> ApiError:
    """A search_phase_execution_exception ("all shards failed") whose shards failed so."""
    error = api_error(kind, status, "search_phase_execution_exception", "all shards failed")
    error.body["error"]["root_cause"] = [{"type": cause, "reason": reason}]
    return error


class FailingElasticsearch:
    """Raises `error` from every search."""

    def __init__(self, error: Exception):
        self.error = error

    async def search(self, **kwargs: Any) -> Any:
        raise self.error


async def searched(error: Exception, request: SearchRequest) -> GRPCError:
    """The gRPC error a caller of Search gets while Elasticsearch raises `error`."""
    api = SearchApi(FailingElasticsearch(error), SimpleNamespace(read_alias="products"))  # type: ignore[arg-type]
    async with serving(api) as channel:
        with pytest.raises(GRPCError) as failed:
            await SearchServiceStub(channel).search(request, timeout=10)
    return failed.value


FAILURES: list[tuple[str, Callable[[], Exception], Status, int]] = [
    # Over capacity: a full search thread pool, a tripped circuit breaker. Retry shortly.
    (
        "rejected-execution",
        lambda: api_error(ApiError, 429, "es_rejected_execution_exception", "rejected"),
        Status.RESOURCE_EXHAUSTED,
        429,
    ),
    (
        "circuit-breaking",
        lambda: api_error(ApiError, 429, "circuit_breaking_exception", "[parent] Data too large"),
        Status.RESOURCE_EXHAUSTED,
        429,
    ),
    # The cluster cannot answer: its nodes, its shards, or no index behind the alias.
    (
        "no-shard-available",
        lambda: shards_failed(ApiError, 503, "no_shard_available_action_exception", "none"),
        Status.UNAVAILABLE,
        503,
    ),
    (
        "internal-server-error",
        lambda: api_error(ApiError, 500, "null_pointer_exception", "oops"),
        Status.UNAVAILABLE,
        503,
    ),
    (
        "gateway-timeout",
        lambda: api_error(ApiError, 504, "gateway_timeout", "proxy"),
        Status.UNAVAILABLE,
        503,
    ),
    (
        "no-read-index",
        lambda: api_error(NotFoundError, 404, "index_not_found_exception", "no such index"),
        Status.UNAVAILABLE,
        503,
    ),
    ("connection-refused", lambda: ConnectionError("refused"), Status.UNAVAILABLE, 503),
    ("tls", lambda: SSLError("certificate verify failed"), Status.UNAVAILABLE, 503),
    ("timeout", lambda: ConnectionTimeout("timed out"), Status.DEADLINE_EXCEEDED, 504),
    # Refusals of a query search built itself: a fault of ours, not the caller's.
    (
        "query-refused",
        lambda: shards_failed(
            BadRequestError, 400, "query_shard_exception", "No mapping found for [price_minor]"
        ),
        Status.INTERNAL,
        502,
    ),
    (
        "credentials-refused",
        lambda: api_error(AuthenticationException, 401, "security_exception", "unable to auth"),
        Status.INTERNAL,
        502,
    ),
]


@pytest.mark.parametrize(
    ("make", "grpc_status", "http_status"),
    [failure[1:] for failure in FAILURES],
    ids=[failure[0] for failure in FAILURES],
)
async def test_an_elasticsearch_failure_is_answered_with_whose_it_is(
    make: Callable[[], Exception], grpc_status: Status, http_status: int
) -> None:
    error = make()
    failed = await searched(error, FIRST_PAGE)
    assert failed.status == grpc_status
    # A fixed message: Elasticsearch's exception types stay in search's log.
    assert "exception" not in (failed.message or "")
    problem = from_grpc(failed)
    assert problem.status == http_status
    if http_status == 429:
        assert problem.headers == {"Retry-After": "1"}


async def test_a_cursor_elasticsearch_cannot_continue_from_is_the_callers_error() -> None:
    refused = shards_failed(
        BadRequestError,
        400,
        "illegal_argument_exception",
        "Failed to parse search_after value for field [price_minor].",
    )
    failed = await searched(refused, NEXT_PAGE)
    assert failed.status == Status.INVALID_ARGUMENT
    assert failed.message == "cursor does not fit this search: pass back next_cursor unchanged"
    assert from_grpc(failed).status == 400


async def test_a_refusal_of_a_continued_search_not_about_its_cursor_is_searchs_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The caller sent a cursor, but what Elasticsearch refused is the query search built.
    refused = shards_failed(
        BadRequestError, 400, "query_shard_exception", "No mapping found for [price_minor]"
    )
    with caplog.at_level(logging.ERROR, logger="workers.search.api"):
        failed = await searched(refused, NEXT_PAGE)
    assert failed.status == Status.INTERNAL
    [logged] = [r for r in caplog.records if r.name == "workers.search.api"]
    assert logged.levelno == logging.ERROR
    assert "No mapping found" in getattr(logged, "error", "")
