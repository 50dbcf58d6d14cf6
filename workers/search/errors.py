"""What an Elasticsearch failure means to a caller of search: a domain error, so
agora.grpc answers it with the error's gRPC status (and the gateway with its problem).

Only a cursor Elasticsearch cannot continue from is the caller's fault
(INVALID_ARGUMENT). Everything else is search's or its cluster's: a cluster over
its capacity (429: a full search queue, a circuit breaker) is RESOURCE_EXHAUSTED,
to retry shortly (the gateway's 429 with Retry-After); a cluster that cannot be
reached or fails (5xx), or no index behind the read alias (404), is UNAVAILABLE
(503); a search that ran out of time is DEADLINE_EXCEEDED (504); and any other
refusal, of a query search built itself, is INTERNAL (502). Every message is
fixed: Elasticsearch's own (its exception types, index names) goes to the log only.
"""

from __future__ import annotations

from elasticsearch import ApiError, ConnectionError, ConnectionTimeout, TransportError
from grpclib.const import Status

from agora.errors import DomainError, InvalidArgument


class SearchBusy(DomainError):
    """Elasticsearch is over its capacity (429): retry shortly."""

    code = "search-busy"
    grpc_status = Status.RESOURCE_EXHAUSTED
    http_status = 429
    failure_type = "SearchBusy"


class SearchUnavailable(DomainError):
    """Elasticsearch cannot be reached, fails (5xx) or has no index to search (404)."""

    code = "search-unavailable"
    grpc_status = Status.UNAVAILABLE
    http_status = 503
    failure_type = "SearchUnavailable"


class SearchTimedOut(DomainError):
    """Elasticsearch did not answer in time."""

    code = "search-timed-out"
    grpc_status = Status.DEADLINE_EXCEEDED
    http_status = 504
    failure_type = "SearchTimedOut"


class SearchFailed(DomainError):
    """Elasticsearch refused a search that search built: a fault of ours to look into."""

    code = "search-failed"
    grpc_status = Status.INTERNAL
    http_status = 500
    failure_type = "SearchFailed"


def search_failure(error: ApiError | TransportError, *, cursor: bool) -> DomainError:
    """The domain error a failed search answers with; `cursor`: the search continues a page."""
    if isinstance(error, ConnectionTimeout):
        return SearchTimedOut("search did not answer in time")
    if isinstance(error, ConnectionError):
        return SearchUnavailable("search cannot reach its index")
    if isinstance(error, ApiError):
        status = error.meta.status
        if status == 429:
            return SearchBusy("search is over its capacity; retry shortly")
        if status == 404 or status >= 500:
            return SearchUnavailable("search cannot read its index")
        # A cursor is the one value from the caller that reaches Elasticsearch as
        # given (checked as a number and a sku, not against the index's fields).
        if status == 400 and cursor and "search_after" in str(error.body):
            return InvalidArgument(
                "cursor does not fit this search: pass back next_cursor unchanged"
            )
    return SearchFailed("search could not run")
