"""Product search: one read route over search's gRPC API (`catalog:read`)."""

from __future__ import annotations

from aiohttp import web

from agora import scopes
from contracts.agora.common.v1 import Money
from contracts.agora.search.v1 import (
    FacetField,
    SearchFilters,
    SearchRequest,
    SortOrder,
)
from gateway.deps import deps
from gateway.routing import Route
from gateway.schemas_catalog import (
    FacetBucketResponse,
    HighlightAnswer,
    MoneyAnswer,
    SearchHitResponse,
    SearchQuery,
    SearchResponseBody,
)

READ = frozenset({scopes.CATALOG_READ})
SORT = {
    "relevance": SortOrder.RELEVANCE,
    "price_asc": SortOrder.PRICE_ASC,
    "price_desc": SortOrder.PRICE_DESC,
    "newest": SortOrder.NEWEST,
}
FACET = {"category": FacetField.CATEGORY, "brand": FacetField.BRAND, "price": FacetField.PRICE}
FACET_NAME = {value: key for key, value in FACET.items()}


def search_request(query: SearchQuery) -> SearchRequest:
    def money(amount: int | None) -> Money | None:
        return None if amount is None else Money(amount_minor=amount, currency=query.currency)

    return SearchRequest(
        query=query.q,
        filters=SearchFilters(
            categories=list(query.category or []),
            brands=list(query.brand or []),
            min_price=money(query.min_price),
            max_price=money(query.max_price),
            in_stock_only=query.in_stock,
        ),
        sort=SORT[query.sort],
        page_size=query.limit,
        search_after=query.cursor,
        facets=[FACET[name] for name in dict.fromkeys(query.facet or [])],
        highlight=query.highlight,
        currency=query.currency,
    )


async def search_products(request: web.Request, query: SearchQuery) -> SearchResponseBody:
    gw = deps(request)
    async with gw.upstream.call(request, "search.Search") as timeout:
        reply = await gw.upstream.search.search(search_request(query), timeout=timeout)
    facets: dict[str, list[FacetBucketResponse]] = {}
    for facet in reply.facets:
        facets[FACET_NAME.get(facet.field, "other")] = [
            FacetBucketResponse(
                key=b.key,
                count=b.count,
                min_price=b.min_price.amount_minor if b.min_price else None,
                max_price=b.max_price.amount_minor if b.max_price else None,
            )
            for b in facet.buckets
        ]
    return SearchResponseBody(
        hits=[
            SearchHitResponse(
                sku=h.sku,
                title=h.title,
                brand=h.brand,
                category=h.category,
                price=MoneyAnswer(
                    amount_minor=h.price.amount_minor if h.price else 0,
                    currency=h.price.currency if h.price else "",
                ),
                in_stock=h.in_stock,
                score=h.score if query.sort == "relevance" else None,
                highlights=[
                    HighlightAnswer(field=x.field, fragments=list(x.fragments))
                    for x in h.highlights
                ]
                or None,
            )
            for h in reply.hits
        ],
        total=reply.total_hits,
        total_is_lower_bound=reply.total_is_lower_bound,
        facets=facets,
        next_cursor=reply.next_search_after or None,
    )


ROUTES = [
    Route(
        "GET",
        "/v1/search",
        search_products,
        "Search products: full text, filters, facets, sort, cursor pages, highlights",
        "catalog",
        auth=True,
        scopes=READ,
        route_class="read",
        query=SearchQuery,
        response=SearchResponseBody,
        # upstream-rate-limited: Elasticsearch over its capacity (workers/search/errors.py).
        problems=("invalid-argument", "upstream-rate-limited"),
    ),
]
