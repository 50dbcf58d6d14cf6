"""Search's gRPC API: one Search call over the read alias."""

from __future__ import annotations

from elasticsearch import AsyncElasticsearch, BadRequestError

from agora.errors import InvalidArgument
from contracts.agora.search.v1 import SearchRequest, SearchResponse, SearchServiceBase
from workers.search import query
from workers.search.index import Indices


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
        except BadRequestError as error:
            # Our queries are built, not passed through: this is a cursor from a stale page.
            raise InvalidArgument(f"search could not run: {error.message}") from error
        return query.response(message, answer.body)
