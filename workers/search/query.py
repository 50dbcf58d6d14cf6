"""From a SearchRequest to an Elasticsearch query, and from its answer to a SearchResponse.

The query language is small and strict so that a bad query is an error, not a
surprise: words (the last may be a prefix, for search-as-you-type),
"quoted phrases" and -excluded words or phrases. A word or phrase the analyzer
keeps no term of ("&" in "Black & Decker") asks for nothing. An unbalanced quote,
control characters or too many terms are rejected with InvalidArgument.

Pages continue with `search_after`; the cursor is opaque to clients (base64url
JSON of the sort values, the sort and a digest of the query), so a cursor used
with another query or sort is refused instead of returning a wrong page.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from agora.errors import InvalidArgument
from agora.money import minor_unit_exponent
from agora.text import storable
from contracts.agora.common.v1 import Money
from contracts.agora.search.v1 import (
    Facet,
    FacetBucket,
    FacetField,
    Highlight,
    SearchFilters,
    SearchHit,
    SearchRequest,
    SearchResponse,
    SortOrder,
)

MAX_QUERY_CHARS = 256
MAX_TERMS = 16
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
FACET_SIZE = 20
TRACK_TOTAL_HITS = 10_000
TEXT_FIELDS = ["title^3", "brand^2", "description"]
# What a required word or phrase the analyzer leaves no terms of ("&", "/", "..."):
# every document, as if it were not there. Elasticsearch's default ("none") would
# match nothing, so "Black & Decker" found no Black Decker drill. The analyzer
# decides, not a character class here: it keeps "™" and emoji, drops "_" and "½".
REQUIRED_WITHOUT_TERMS = "all"
# Prices are compared in this currency unless the price bounds name another (the
# gateway's `currency` default too).
DEFAULT_CURRENCY = "EUR"
# Price facet buckets in minor units: [from, to), the last one open.
PRICE_BUCKETS: list[tuple[int, int | None]] = [
    (0, 1_000),
    (1_000, 2_500),
    (2_500, 5_000),
    (5_000, 10_000),
    (10_000, 25_000),
    (25_000, 50_000),
    (50_000, None),
]
_TOKEN = re.compile(r'\s*(-?)(?:"([^"]*)"|([^\s"]+))')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_CURSOR_SKU = 256
SORTS: dict[SortOrder, list[dict[str, Any]]] = {
    SortOrder.RELEVANCE: [{"_score": "desc"}, {"sku": "asc"}],
    SortOrder.PRICE_ASC: [{"price_minor": "asc"}, {"sku": "asc"}],
    SortOrder.PRICE_DESC: [{"price_minor": "desc"}, {"sku": "asc"}],
    SortOrder.NEWEST: [{"created_at": "desc"}, {"sku": "asc"}],
}
PRICE_SORTS = frozenset({SortOrder.PRICE_ASC, SortOrder.PRICE_DESC})


@dataclass
class ParsedQuery:
    words: list[str] = field(default_factory=list)
    phrases: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    prefix: str = ""  # the last word when the query does not end in a space


def parse_query(text: str) -> ParsedQuery:
    if len(text) > MAX_QUERY_CHARS:
        raise InvalidArgument(f"query longer than {MAX_QUERY_CHARS} characters")
    if _CONTROL.search(text):
        raise InvalidArgument("query contains control characters")
    if text.count('"') % 2:
        raise InvalidArgument('query has an unbalanced quote (")')
    parsed = ParsedQuery()
    position = 0
    terms = 0
    last_bare = ""
    while position < len(text.rstrip()):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise InvalidArgument(f"query cannot be parsed at character {position + 1}")
        position = match.end()
        negated, phrase, word = match.group(1), match.group(2), match.group(3)
        value = (phrase if phrase is not None else word or "").strip()
        if word is not None and word.startswith("-"):
            raise InvalidArgument("query has a '-' with nothing to exclude")
        if not value:
            if negated:
                raise InvalidArgument("query has a '-' with nothing to exclude")
            continue
        terms += 1
        last_bare = ""
        if negated:
            parsed.excluded.append(value)
        elif phrase is not None:
            parsed.phrases.append(value)
        else:
            parsed.words.append(value)
            last_bare = value
    if terms > MAX_TERMS:
        raise InvalidArgument(f"query has more than {MAX_TERMS} terms")
    if last_bare and not text.endswith((" ", "\t")) and len(last_bare) >= 2:
        parsed.prefix = analyzer_lower(last_bare)
    return parsed


def analyzer_lower(text: str) -> str:
    """`text` lower-cased as the index's analyzer did it: Lucene's lowercase filter maps
    one code point at a time (Java's simple mapping), where `str.lower()` gives a
    final sigma (ΠΡΟΣ → προς, the index has προσ) and a dotted İ two code points. A
    prefix query is not analyzed, so its value must be in the index's form already."""
    return "".join(char.lower()[:1] for char in text)


def _text_clauses(parsed: ParsedQuery) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    must: list[dict[str, Any]] = []
    for word in parsed.words:
        clause: dict[str, Any] = {
            # "and": a word the analyzer splits ("usb-c") needs all its parts, not any.
            "multi_match": {
                "query": word,
                "fields": TEXT_FIELDS,
                "type": "best_fields",
                "operator": "and",
                "zero_terms_query": REQUIRED_WITHOUT_TERMS,
            }
        }
        if analyzer_lower(word) == parsed.prefix:
            # As-you-type: the last word may be the start of a title word (index_prefixes).
            clause = {
                "bool": {
                    "should": [clause, {"prefix": {"title": {"value": parsed.prefix}}}],
                    "minimum_should_match": 1,
                }
            }
        must.append(clause)
    for phrase in parsed.phrases:
        must.append(
            {
                "multi_match": {
                    "query": phrase,
                    "fields": TEXT_FIELDS,
                    "type": "phrase",
                    "zero_terms_query": REQUIRED_WITHOUT_TERMS,
                }
            }
        )
    # Left at Elasticsearch's "none": excluding "&" (no terms) excludes nothing.
    must_not = [
        {"multi_match": {"query": text, "fields": TEXT_FIELDS, "type": "phrase"}}
        for text in parsed.excluded
    ]
    return must, must_not


def _price_bounds(spec: SearchFilters | None) -> tuple[dict[str, int], str]:
    """The price filter's range and its one currency; ({}, "") when unbounded."""
    bounds: dict[str, int] = {}
    currencies = set()
    if spec is None:
        return bounds, ""
    for key, money in (("gte", spec.min_price), ("lte", spec.max_price)):
        if money is not None:
            if money.amount_minor < 0:
                raise InvalidArgument("price bounds must not be negative")
            bounds[key] = money.amount_minor
            currencies.add(money.currency)
    if not bounds:
        return bounds, ""
    if len(currencies) != 1 or "" in currencies:
        raise InvalidArgument("price bounds need one currency")
    return bounds, currencies.pop()


def price_currency(request: SearchRequest) -> str:
    """The currency a search compares prices in: the request's, else its price
    bounds', else the default.

    Amounts in two currencies cannot be ranged, sorted or bucketed together, so
    price bounds, price sorts and the price facet all keep to this one."""
    bounds_currency = _price_bounds(request.filters)[1]
    if request.currency and bounds_currency and bounds_currency != request.currency:
        raise InvalidArgument(
            f"price bounds in {bounds_currency} for a search in {request.currency}"
        )
    return request.currency or bounds_currency or DEFAULT_CURRENCY


def _filters(request: SearchRequest) -> list[dict[str, Any]]:
    filters: list[dict[str, Any]] = [
        {"term": {"has_product": True}},
        {"term": {"active": True}},
    ]
    spec = request.filters
    if spec is not None and spec.categories:
        filters.append({"terms": {"category_path": list(spec.categories)}})
    if spec is not None and spec.brands:
        # As given: Elasticsearch lower-cases them with brand.lc's own normalizer, the
        # one the index used (Python's lower() differs: a final sigma, a dotted İ).
        filters.append({"terms": {"brand.lc": list(spec.brands)}})
    bounds, _ = _price_bounds(spec)
    if bounds:
        filters.append({"range": {"price_minor": bounds}})
    if bounds or request.sort in PRICE_SORTS:
        filters.append({"term": {"currency": price_currency(request)}})
    if spec is not None and spec.in_stock_only:
        filters.append({"term": {"in_stock": True}})
    return filters


def _digest(request: SearchRequest) -> str:
    # A currency the search would use anyway is left out: cursors of default-currency
    # searches keep the digest they had before SearchRequest.currency (and between
    # old and new search pods during a rollout).
    bounds_currency = _price_bounds(request.filters)[1]
    implied = request.currency in ("", bounds_currency or DEFAULT_CURRENCY)
    fingerprint = SearchRequest(
        query=request.query,
        filters=request.filters,
        sort=request.sort,
        currency="" if implied else request.currency,
    )
    return hashlib.sha256(bytes(fingerprint)).hexdigest()[:12]


def encode_cursor(request: SearchRequest, sort_values: list[Any]) -> str:
    raw = json.dumps({"d": _digest(request), "a": sort_values}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(request: SearchRequest) -> list[Any]:
    cursor = request.search_after
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        state = json.loads(raw)
        values = state["a"]
        digest = state["d"]
        if not isinstance(values, list) or len(values) != 2:
            raise ValueError
        # The cursor's digest is not a secret: anyone can forge one. What reaches
        # Elasticsearch as search_after must be what our sorts produce, a finite
        # number (score, price, time; a long at most) and a sku.
        key, sku = values
        if isinstance(key, bool) or not isinstance(key, int | float):
            raise ValueError
        if isinstance(key, int) and not -(2**63) <= key < 2**63:
            raise ValueError  # also math.isfinite's OverflowError on a 400-digit one
        if not math.isfinite(key):
            raise ValueError
        if not isinstance(sku, str) or not 0 < len(sku) <= MAX_CURSOR_SKU or not storable(sku):
            raise ValueError
    # RecursionError: base64 of "[[[[..." nests deeper than the JSON parser goes.
    except (ValueError, TypeError, KeyError, UnicodeDecodeError, RecursionError):
        raise InvalidArgument("cursor is malformed: pass back next_cursor unchanged") from None
    if digest != _digest(request):
        raise InvalidArgument("cursor belongs to another query, filter or sort")
    return values


def preference(request: SearchRequest) -> str:
    """Elasticsearch's `preference` for a search: every page of one search asks the
    same shard copies. A primary and its replica can score a document differently
    (deleted documents still count in a copy's term statistics until it merges), so
    pages answered by different copies could skip or repeat relevance-sorted hits."""
    return _digest(request)


def build(request: SearchRequest) -> dict[str, Any]:
    """The body of the Elasticsearch search for `request` (validated here)."""
    size = request.page_size or DEFAULT_PAGE_SIZE
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size must be between 1 and {MAX_PAGE_SIZE}")
    parsed = parse_query(request.query)
    must, must_not = _text_clauses(parsed)
    sort = SORTS.get(request.sort, SORTS[SortOrder.RELEVANCE])
    body: dict[str, Any] = {
        "query": {
            "bool": {
                "must": must or [{"match_all": {}}],
                "must_not": must_not,
                "filter": _filters(request),
            }
        },
        "sort": sort,
        "size": size + 1,  # one more tells whether a next page exists
        "track_total_hits": TRACK_TOTAL_HITS,
        "_source": ["sku", "title", "brand", "category", "price_minor", "currency", "in_stock"],
    }
    if request.search_after:
        body["search_after"] = decode_cursor(request)
    aggs: dict[str, Any] = {}
    for facet in request.facets:
        # Each facet counts on the field its filter matches, so a bucket's count is
        # what selecting it finds: a category with its descendants, a brand in any case.
        if facet == FacetField.CATEGORY:
            aggs["category"] = {"terms": {"field": "category_path", "size": FACET_SIZE}}
        elif facet == FacetField.BRAND:
            aggs["brand"] = {
                "terms": {"field": "brand.lc", "size": FACET_SIZE},
                # Shown as its commonest spelling, not lower-cased.
                "aggs": {"spelling": {"terms": {"field": "brand.raw", "size": 1}}},
            }
        elif facet == FacetField.PRICE:
            aggs["price"] = _price_facet(price_currency(request))
    if aggs:
        body["aggs"] = aggs
    if request.highlight and (parsed.words or parsed.phrases):
        body["highlight"] = {
            # Fragments are HTML (docs/search.md): the product's own text in them is
            # escaped, so the <em> tags are the only markup a client renders.
            "encoder": "html",
            "pre_tags": ["<em>"],
            "post_tags": ["</em>"],
            "fields": {
                # A title prefix matches on title._index_prefix: highlight that too.
                "title": {
                    "number_of_fragments": 0,
                    "matched_fields": ["title", "title._index_prefix"],
                },
                "description": {"number_of_fragments": 2},
            },
        }
    return body


def _price_facet(currency: str) -> dict[str, Any]:
    exponent = minor_unit_exponent(currency)
    ranges = [
        {"key": _price_label(lo, hi, exponent), "from": lo, **({"to": hi} if hi else {})}
        for lo, hi in PRICE_BUCKETS
    ]
    # Counts only prices in `currency`: 10.00 EUR and 10 JPY are not one bucket.
    return {
        "filter": {"term": {"currency": currency}},
        "aggs": {"ranges": {"range": {"field": "price_minor", "ranges": ranges}}},
    }


def _price_label(low: int, high: int | None, exponent: int) -> str:
    """A bucket's name in major units: "10-25" in EUR, "1000-2500" in JPY."""
    low_major = _major_units(low, exponent)
    return f"{low_major}-{_major_units(high, exponent)}" if high else f"{low_major}+"


def _major_units(amount_minor: int, exponent: int) -> str:
    # Without trailing zeros or an exponent: 1000 cents read "10", 1050 read "10.5".
    return f"{Decimal(amount_minor).scaleb(-exponent).normalize():f}"


def response(request: SearchRequest, answer: dict[str, Any]) -> SearchResponse:
    size = request.page_size or DEFAULT_PAGE_SIZE
    raw_hits = answer["hits"]["hits"]
    page, more = raw_hits[:size], len(raw_hits) > size
    hits = []
    for hit in page:
        source = hit["_source"]
        hits.append(
            SearchHit(
                sku=source["sku"],
                title=source.get("title", ""),
                brand=source.get("brand", ""),
                category=source.get("category", ""),
                price=Money(
                    amount_minor=source.get("price_minor", 0), currency=source.get("currency", "")
                ),
                in_stock=bool(source.get("in_stock")),
                score=float(hit.get("_score") or 0.0),
                highlights=[
                    Highlight(field=name, fragments=fragments)
                    for name, fragments in (hit.get("highlight") or {}).items()
                ],
            )
        )
    total = answer["hits"]["total"]
    facets = []
    for name, agg in (answer.get("aggregations") or {}).items():
        if name == "price":
            currency = price_currency(request)
            buckets = [
                FacetBucket(
                    key=b["key"],
                    count=b["doc_count"],
                    min_price=Money(amount_minor=int(b.get("from", 0)), currency=currency),
                    max_price=(
                        Money(amount_minor=int(b["to"]), currency=currency) if "to" in b else None
                    ),
                )
                for b in agg["ranges"]["buckets"]
            ]
            facets.append(Facet(field=FacetField.PRICE, buckets=buckets))
        else:
            field_enum = FacetField.CATEGORY if name == "category" else FacetField.BRAND
            buckets = [
                FacetBucket(key=_bucket_key(b), count=b["doc_count"]) for b in agg["buckets"]
            ]
            facets.append(Facet(field=field_enum, buckets=buckets))
    return SearchResponse(
        hits=hits,
        total_hits=int(total["value"]),
        total_is_lower_bound=total["relation"] == "gte",
        facets=facets,
        next_search_after=encode_cursor(request, page[-1]["sort"]) if more and page else "",
    )


def _bucket_key(bucket: dict[str, Any]) -> str:
    """A brand bucket's commonest spelling; any other bucket's own key."""
    spellings = bucket.get("spelling", {}).get("buckets") or [bucket]
    return str(spellings[0]["key"])
