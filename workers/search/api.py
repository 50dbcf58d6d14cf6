"""Search's gRPC API: one Search call over the read alias."""

from __future__ import annotations

import logging

from elasticsearch import ApiError, AsyncElasticsearch, TransportError

from agora.errors import InvalidArgument
from contracts.agora.search.v1 import SearchRequest, SearchResponse, SearchServiceBase
from workers.search import query
from workers.search.errors import SearchFailed, search_failure
from workers.search.index import Indices

log = logging.getLogger(__name__)


class SearchApi(SearchServiceBase):
    def __init__(self, es: AsyncElasticsearch, indices: Indices):
        self.es = es
        self.indices = indices

    async def search(self, message: SearchRequest) -> SearchResponse:
        body = query.build(message)
        try:
            answer = await self.es.search(
                index=self.indices.read_alias, preference=query.preference(message), **body
            )
        except (ApiError, TransportError) as error:
            failure = search_failure(error, cursor=bool(message.search_after))
            if isinstance(failure, SearchFailed):
                # A query we built that Elasticsearch refuses: a fault to fix, not to retry.
                log.error("search refused", exc_info=error, extra={"error": str(error)})
            elif not isinstance(failure, InvalidArgument):
                log.warning(
                    "search failed",
                    extra={"error": str(error), "grpc_status": failure.grpc_status.name},
                )
            raise failure from error
        return query.response(message, answer.body)
