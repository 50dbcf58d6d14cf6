"""Search's query language, the Elasticsearch query built from a request, and its cursor."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agora.errors import InvalidArgument
from agora.money import MINOR_UNIT_EXPONENTS, minor_unit_exponent
from contracts.agora.common.v1 import Money
from contracts.agora.search.v1 import FacetField, SearchFilters, SearchRequest, SortOrder
from workers.catalog.model import CURRENCIES
from workers.search.api import SearchApi
from workers.search.documents import category_path
from workers.search.query import (
    _price_label,
    build,
    decode_cursor,
    encode_cursor,
    parse_query,
    preference,
    response,
)


def test_words_phrases_exclusions_and_the_last_word_as_a_prefix() -> None:
    parsed = parse_query('warm "desk lamp" -plastic led')
    assert parsed.words == ["warm", "led"]
    assert parsed.phrases == ["desk lamp"]
    assert parsed.excluded == ["plastic"]
    assert parsed.prefix == "led"
    assert parse_query("led ").prefix == ""  # a finished word is not a prefix


@pytest.mark.parametrize(
    ("typed", "indexed"), [("ΠΡΟΣ", "προσ"), ("İSTA", "ista"), ("Lamp", "lamp")]
)
def test_the_prefix_is_lower_cased_as_the_index_analyzer_does_it(typed: str, indexed: str) -> None:
    # Lucene lower-cases code point by code point: no final sigma, no combining dot.
    assert parse_query(typed).prefix == indexed
    [must] = build(SearchRequest(query=typed))["query"]["bool"]["must"]
    assert {"prefix": {"title": {"value": indexed}}} in must["bool"]["should"]


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
    assert {"terms": {"brand.lc": ["Acme"]}} in filters
    assert {"range": {"price_minor": {"gte": 100}}} in filters
    assert {"term": {"currency": "EUR"}} in filters
    assert {"term": {"in_stock": True}} in filters
    assert body["sort"] == [{"price_minor": "asc"}, {"sku": "asc"}]
    assert body["size"] == 11
    assert set(body["aggs"]) == {"brand", "price"}


def test_brands_reach_elasticsearch_as_given_for_its_own_normalizer_to_lower() -> None:
    # Python's lower() is not Elasticsearch's: 'ΟΔΟΣ' -> 'οδος' (final sigma), where
    # the lowercase normalizer that indexed brand.lc made it 'οδοσ'.
    body = build(SearchRequest(filters=SearchFilters(brands=["ΟΔΟΣ", "İpek"])))
    assert {"terms": {"brand.lc": ["ΟΔΟΣ", "İpek"]}} in body["query"]["bool"]["filter"]


def test_every_part_of_a_word_the_analyzer_splits_must_match() -> None:
    body = build(SearchRequest(query="usb-c cable"))
    for clause in body["query"]["bool"]["must"]:
        match = clause.get("multi_match") or clause["bool"]["should"][0]["multi_match"]
        assert match["operator"] == "and"


def test_a_word_or_phrase_the_analyzer_keeps_no_term_of_asks_for_nothing() -> None:
    # The standard analyzer drops "&", "/", "..."; a required clause of no terms
    # matches nothing unless told otherwise, so "Black & Decker" found nothing.
    # An excluded one must stay "none": excluding "&" excludes nothing.
    body = build(SearchRequest(query='Black & Decker "&" -/ &&'))
    must, must_not = body["query"]["bool"]["must"], body["query"]["bool"]["must_not"]
    matches = [c.get("multi_match") or c["bool"]["should"][0]["multi_match"] for c in must]
    assert [(m["query"], m.get("zero_terms_query")) for m in matches] == [
        ("Black", "all"),
        ("&", "all"),
        ("Decker", "all"),
        ("&&", "all"),  # the last word, also a title prefix
        ("&", "all"),  # the phrase
    ]
    [excluded] = [c["multi_match"] for c in must_not]
    assert (excluded["query"], excluded.get("zero_terms_query")) == ("/", None)


def test_highlights_escape_the_products_own_text_as_html() -> None:
    body = build(SearchRequest(query="lamp", highlight=True))
    assert body["highlight"]["encoder"] == "html"
    assert (body["highlight"]["pre_tags"], body["highlight"]["post_tags"]) == (["<em>"], ["</em>"])


def _currency_terms(body: dict[str, object]) -> list[object]:
    filters = body["query"]["bool"]["filter"]  # type: ignore[index]
    return [f["term"]["currency"] for f in filters if "currency" in f.get("term", {})]


def test_price_sorts_and_the_price_facet_keep_to_one_currency() -> None:
    # 10.00 EUR and 10 JPY cannot be ordered or bucketed together: the bounds'
    # currency, else EUR.
    for sort in (SortOrder.PRICE_ASC, SortOrder.PRICE_DESC):
        assert _currency_terms(build(SearchRequest(sort=sort))) == ["EUR"]
    usd = SearchFilters(min_price=Money(amount_minor=0, currency="USD"))
    assert _currency_terms(build(SearchRequest(sort=SortOrder.PRICE_ASC, filters=usd))) == ["USD"]
    for sort in (SortOrder.RELEVANCE, SortOrder.NEWEST):
        assert _currency_terms(build(SearchRequest(sort=sort))) == []  # every currency

    faceted = build(SearchRequest(facets=[FacetField.PRICE], filters=usd))
    assert faceted["aggs"]["price"]["filter"] == {"term": {"currency": "USD"}}
    ranges = faceted["aggs"]["price"]["aggs"]["ranges"]["range"]
    assert ranges["field"] == "price_minor" and ranges["ranges"][0] == {
        "key": "0-10",
        "from": 0,
        "to": 1000,
    }
    assert build(SearchRequest(facets=[FacetField.PRICE]))["aggs"]["price"]["filter"] == {
        "term": {"currency": "EUR"}
    }


def test_the_requests_currency_names_the_price_currency_and_bounds_must_agree() -> None:
    assert _currency_terms(build(SearchRequest(sort=SortOrder.PRICE_ASC, currency="JPY"))) == [
        "JPY"
    ]
    faceted = build(SearchRequest(facets=[FacetField.PRICE], currency="USD"))
    assert faceted["aggs"]["price"]["filter"] == {"term": {"currency": "USD"}}
    eur_bounds = SearchFilters(min_price=Money(amount_minor=0, currency="EUR"))
    with pytest.raises(InvalidArgument):
        build(SearchRequest(filters=eur_bounds, currency="USD"))


def _price_ranges(currency: str) -> list[dict[str, object]]:
    body = build(SearchRequest(facets=[FacetField.PRICE], currency=currency))
    ranges: list[dict[str, object]] = body["aggs"]["price"]["aggs"]["ranges"]["range"]["ranges"]
    return ranges


def test_price_facet_labels_are_in_major_units_of_the_searchs_currency() -> None:
    # The boundaries stay in minor units; only the names follow the currency's
    # minor unit: 1000 cents are 10 EUR, 1000 yen are 1000 JPY (no minor unit).
    eur, jpy = _price_ranges("EUR"), _price_ranges("JPY")
    assert [r["key"] for r in eur] == [
        "0-10",
        "10-25",
        "25-50",
        "50-100",
        "100-250",
        "250-500",
        "500+",
    ]
    assert [r["key"] for r in jpy] == [
        "0-1000",
        "1000-2500",
        "2500-5000",
        "5000-10000",
        "10000-25000",
        "25000-50000",
        "50000+",
    ]
    assert [(r["from"], r.get("to")) for r in jpy] == [(r["from"], r.get("to")) for r in eur]


def test_a_price_label_between_major_units_keeps_its_fraction() -> None:
    assert _price_label(1050, 2500, 2) == "10.5-25"
    assert _price_label(5, None, 2) == "0.05+"


def test_every_currency_the_catalog_sells_in_has_its_minor_unit_exponent() -> None:
    assert CURRENCIES <= MINOR_UNIT_EXPONENTS.keys()
    assert (minor_unit_exponent("JPY"), minor_unit_exponent("EUR")) == (0, 2)


def test_price_buckets_are_answered_in_their_currency() -> None:
    request = SearchRequest(facets=[FacetField.PRICE])
    answer = {
        "hits": {"hits": [], "total": {"value": 0, "relation": "eq"}},
        "aggregations": {
            "price": {
                "doc_count": 1,
                "ranges": {
                    "buckets": [
                        {"key": "0-10", "from": 0.0, "to": 1000.0, "doc_count": 1},
                        {"key": "500+", "from": 50000.0, "doc_count": 0},
                    ]
                },
            }
        },
    }
    [facet] = response(request, answer).facets
    assert [(b.key, b.count) for b in facet.buckets] == [("0-10", 1), ("500+", 0)]
    first, last = facet.buckets
    assert first.max_price == Money(amount_minor=1000, currency="EUR")
    assert last.min_price == Money(amount_minor=50000, currency="EUR")
    assert last.max_price is None


def test_a_brand_bucket_counts_every_case_and_is_named_by_its_commonest_spelling() -> None:
    request = SearchRequest(facets=[FacetField.BRAND])
    assert build(request)["aggs"]["brand"]["terms"]["field"] == "brand.lc"
    spelling = {"buckets": [{"key": "Acme", "doc_count": 2}]}
    answer = {
        "hits": {"hits": [], "total": {"value": 3, "relation": "eq"}},
        "aggregations": {
            "brand": {"buckets": [{"key": "acme", "doc_count": 3, "spelling": spelling}]}
        },
    }
    [facet] = response(request, answer).facets
    assert [(b.key, b.count) for b in facet.buckets] == [("Acme", 3)]


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


def test_a_default_currency_search_keeps_the_cursor_issued_before_the_currency_field() -> None:
    before = SearchRequest(query="lamp", sort=SortOrder.PRICE_ASC)
    cursor = encode_cursor(before, [1500, "SKU-1"])

    def paged(currency: str) -> SearchRequest:
        return SearchRequest(
            query="lamp", sort=SortOrder.PRICE_ASC, currency=currency, search_after=cursor
        )

    assert decode_cursor(paged("EUR")) == [1500, "SKU-1"]
    with pytest.raises(InvalidArgument):
        decode_cursor(paged("USD"))


def test_every_page_of_a_search_asks_the_same_shard_copies() -> None:
    first = SearchRequest(query="lamp", page_size=2)
    next_page = SearchRequest(
        query="lamp", page_size=3, search_after=encode_cursor(first, [1.5, "SKU-1"])
    )
    assert preference(next_page) == preference(first)
    assert preference(SearchRequest(query="lamps", page_size=2)) != preference(first)
    assert preference(SearchRequest(query="lamp", sort=SortOrder.NEWEST)) != preference(first)


class _RecordingElasticsearch:
    """Keeps what a search was asked with and answers no hits."""

    def __init__(self) -> None:
        self.asked: list[dict[str, Any]] = []

    async def search(self, **kwargs: Any) -> SimpleNamespace:
        self.asked.append(kwargs)
        return SimpleNamespace(body={"hits": {"hits": [], "total": {"value": 0, "relation": "eq"}}})


async def test_the_search_api_sends_the_searchs_preference() -> None:
    es = _RecordingElasticsearch()
    api = SearchApi(es, SimpleNamespace(read_alias="products"))  # type: ignore[arg-type]
    request = SearchRequest(query="lamp", page_size=2)
    await api.search(request)
    assert es.asked[0]["preference"] == preference(request)
    assert es.asked[0]["index"] == "products"
