"""Search's query language, the Elasticsearch query built from a request, and its cursor."""

from __future__ import annotations

import pytest

from agora.errors import InvalidArgument
from contracts.agora.common.v1 import Money
from contracts.agora.search.v1 import FacetField, SearchFilters, SearchRequest, SortOrder
from workers.search.documents import category_path
from workers.search.query import build, decode_cursor, encode_cursor, parse_query


def test_words_phrases_exclusions_and_the_last_word_as_a_prefix() -> None:
    parsed = parse_query('warm "desk lamp" -plastic led')
    assert parsed.words == ["warm", "led"]
    assert parsed.phrases == ["desk lamp"]
    assert parsed.excluded == ["plastic"]
    assert parsed.prefix == "led"
    assert parse_query("led ").prefix == ""  # a finished word is not a prefix


@pytest.mark.parametrize(
    "text", ['lamp "warm', "lamp -", "a\x00b", "x" * 300, " ".join(["w"] * 17), "--x"]
)
def test_an_unparseable_query_is_an_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument):
        parse_query(text)


def test_filters_sort_and_facets_become_the_elasticsearch_query() -> None:
    request = SearchRequest(
        query="lamp",
        filters=SearchFilters(
            categories=["home/lighting"],
            brands=["Acme"],
            min_price=Money(amount_minor=100, currency="EUR"),
            in_stock_only=True,
        ),
        sort=SortOrder.PRICE_ASC,
        page_size=10,
        facets=[FacetField.BRAND, FacetField.PRICE],
    )
    body = build(request)
    filters = body["query"]["bool"]["filter"]
    assert {"terms": {"category_path": ["home/lighting"]}} in filters
    assert {"terms": {"brand.lc": ["acme"]}} in filters
    assert {"range": {"price_minor": {"gte": 100}}} in filters
    assert {"term": {"currency": "EUR"}} in filters
    assert {"term": {"in_stock": True}} in filters
    assert body["sort"] == [{"price_minor": "asc"}, {"sku": "asc"}]
    assert body["size"] == 11
    assert set(body["aggs"]) == {"brand", "price"}


def test_a_cursor_continues_only_its_own_search() -> None:
    request = SearchRequest(query="lamp", sort=SortOrder.NEWEST)
    cursor = encode_cursor(request, [1700000000000, "SKU-1"])
    assert decode_cursor(
        SearchRequest(query="lamp", sort=SortOrder.NEWEST, search_after=cursor)
    ) == [
        1700000000000,
        "SKU-1",
    ]
    with pytest.raises(InvalidArgument, match="another"):
        decode_cursor(SearchRequest(query="lamps", sort=SortOrder.NEWEST, search_after=cursor))
    with pytest.raises(InvalidArgument, match="malformed"):
        decode_cursor(SearchRequest(query="lamp", search_after="%%%"))


@pytest.mark.parametrize(
    "values",
    [
        [None, None],
        [float("inf"), "SKU-1"],
        [True, "SKU-1"],
        ["1700000000000", "SKU-1"],
        [1.5, 7],
        [1.5, ""],
        [1.5, "SKU\x00"],
        [1.5, "S" * 257],
        [10**400, "SKU-1"],
        [2**63, "SKU-1"],
        [1.5, "SKU\ud800"],
    ],
)
def test_a_forged_cursor_with_values_no_sort_produces_is_refused(values: list[object]) -> None:
    # The digest is public (sha256 of the request): a forged cursor can carry it.
    request = SearchRequest(query="lamp", sort=SortOrder.PRICE_ASC)
    forged = encode_cursor(request, values)
    with pytest.raises(InvalidArgument, match="malformed"):
        decode_cursor(SearchRequest(query="lamp", sort=SortOrder.PRICE_ASC, search_after=forged))
    assert decode_cursor(
        SearchRequest(
            query="lamp",
            sort=SortOrder.PRICE_ASC,
            search_after=encode_cursor(request, [1299, "SKU-1"]),
        )
    ) == [1299, "SKU-1"]


def test_page_size_over_the_maximum_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        build(SearchRequest(page_size=101))


def test_a_category_is_indexed_with_its_ancestors() -> None:
    assert category_path("a/b/c") == ["a", "a/b", "a/b/c"]
