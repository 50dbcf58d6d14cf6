"""Properties of the pagination cursors of orders, catalog, search, audit and identity.

A cursor is opaque to clients, who may send anything back: every decoder turns
any string into either the position it encoded or a clean InvalidArgument
(gRPC INVALID_ARGUMENT, HTTP 400), never another exception (which would be an
INTERNAL error and a 5xx at the gateway). What a service encodes, it decodes
to the same position.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from agora.errors import InvalidArgument
from contracts.agora.search.v1 import SearchRequest
from tests.fuzz.settings import PROPERTY
from workers.audit import queries as audit
from workers.catalog import reads as catalog
from workers.identity import apiclients as identity
from workers.orders import api as orders
from workers.search import query as search


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# Anything a client could send back, and near-misses of real cursors: base64 of
# JSON of the wrong shape, of non-UTF-8 bytes, of very deep nesting, of huge numbers.
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
CURSORS = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=150).map(b64),
    JSON_VALUES.map(lambda v: b64(json.dumps(v).encode())),
    st.text(max_size=60).map(lambda t: b64(t.encode())),
)
NASTY = [
    "",
    "=",
    "====",
    "é",
    "\x00",
    b64(b"\xff\xfe"),
    b64(b"[" * 5000),  # deeper than the JSON parser's recursion limit
    b64(b"seq:" + b"9" * 30),
    b64(b"seq:" + b"9" * 5000),
    b64(b"seq:\xc2\xb2"),  # "²" passes str.isdigit()
    b64(json.dumps(["2020-01-01T00:00:00", "not-a-uuid"]).encode()),
    b64(json.dumps({"d": "x", "a": [1]}).encode()),
    b64(json.dumps({"category": "a", "sku": "b"}).encode()),  # two keys: not catalog's two strings
    b64(json.dumps("ab").encode()),  # two characters, neither
    b64(json.dumps(["a", "b", "c"]).encode()),
]
# A near-miss of one service's cursor can be a well-formed position of another: an
# orders cursor with a bad uuid is two strings, which catalog reads as (category, sku).
POSITIONS = {
    (b64(json.dumps(["2020-01-01T00:00:00", "not-a-uuid"]).encode()), "catalog"): (
        "2020-01-01T00:00:00",
        "not-a-uuid",
    ),
}


def decodes_cleanly(decode: Callable[[str], Any], cursor: str) -> None:
    """A drawn cursor may happen to be a position; anything else is an InvalidArgument."""
    try:
        decode(cursor)
    except InvalidArgument:
        pass


def _search_decode(cursor: str) -> Any:
    return search.decode_cursor(SearchRequest(query="q", search_after=cursor))


DECODERS: dict[str, Callable[[str], Any]] = {
    "orders": orders.decode_cursor,
    "catalog": catalog.decode_cursor,
    "search": _search_decode,
    "audit": audit.decode_cursor,
    "identity": identity._decode_cursor,
}


@pytest.mark.parametrize("service", sorted(DECODERS))
@PROPERTY
@given(cursor=CURSORS)
def test_any_cursor_is_a_position_or_an_invalid_argument(service: str, cursor: str) -> None:
    decodes_cleanly(DECODERS[service], cursor)


@pytest.mark.parametrize("service", sorted(DECODERS))
@pytest.mark.parametrize("cursor", NASTY)
def test_nasty_cursors_are_invalid_arguments(service: str, cursor: str) -> None:
    position = POSITIONS.get((cursor, service))
    if position is not None:
        assert DECODERS[service](cursor) == position
        return
    with pytest.raises(InvalidArgument):
        DECODERS[service](cursor)


# Round trips -------------------------------------------------------------------

TIMES = st.datetimes(
    min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2100, 1, 1), timezones=st.just(dt.UTC)
)


@PROPERTY
@given(TIMES, st.uuids())
def test_orders_cursor_round_trips(created_at: dt.datetime, order_id: uuid.UUID) -> None:
    assert orders.decode_cursor(orders.encode_cursor(created_at, order_id)) == (
        created_at,
        order_id,
    )


# What the catalog can store: PostgreSQL text (UTF-8), which holds anything but NUL
# and lone surrogates (not UTF-8: a cursor holding one is refused).
STORED_TEXT = st.characters(exclude_characters="\x00", exclude_categories=["Cs"])


@PROPERTY
@given(st.text(STORED_TEXT, max_size=80), st.text(STORED_TEXT, max_size=64))
def test_catalog_cursor_round_trips(category: str, sku: str) -> None:
    assert catalog.decode_cursor(catalog.encode_cursor(category, sku)) == (category, sku)


@PROPERTY
@given(st.integers(min_value=0, max_value=2**63 - 1))
@example(0)
def test_audit_cursor_round_trips(sequence: int) -> None:
    assert audit.decode_cursor(audit.encode_cursor(sequence)) == sequence


@PROPERTY
@given(
    st.text(max_size=30),
    st.tuples(  # what the sorts produce: a score, a price or time (a long), then a sku
        st.integers(min_value=-(2**63), max_value=2**63 - 1)
        | st.floats(allow_nan=False, allow_infinity=False),
        st.text(
            st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
            min_size=1,
            max_size=10,
        ),
    ).map(list),
)
def test_search_cursor_round_trips_and_is_bound_to_its_query(query: str, values: list) -> None:
    request = SearchRequest(query=query)
    cursor = search.encode_cursor(request, values)
    assert search.decode_cursor(SearchRequest(query=query, search_after=cursor)) == values
    with pytest.raises(InvalidArgument):
        search.decode_cursor(SearchRequest(query=query + "x", search_after=cursor))


@PROPERTY
@given(TIMES, st.uuids())
def test_identity_cursor_round_trips(created_at: dt.datetime, client_id: uuid.UUID) -> None:
    row = identity.ApiClientRow.__new__(identity.ApiClientRow)
    object.__setattr__(row, "created_at", created_at)
    object.__setattr__(row, "client_id", client_id)
    assert identity._decode_cursor(identity._encode_cursor(row)) == (created_at, client_id)


# Positions near what each service issues, built the way its encoder builds them
# from drawn parts, so that many decode and the properties below meet real positions
# (arbitrary strings almost never decode). Each test records which of its examples
# decoded: `pytest --hypothesis-show-statistics` shows the share.

# audit: "seq:<digits>", as issued, or with a prefix that is off or a number that is
# negative, past bigint, zero-padded or in another script's digits.
AUDIT_NEAR_NUMBERS = st.one_of(
    st.integers().map(str),
    st.integers(min_value=2**63 - 10, max_value=2**64).map(str),
    st.integers(min_value=0, max_value=2**64).map(lambda n: f"{n:020d}"),
    st.text(st.characters(categories=["Nd"]), min_size=1, max_size=20),
)
AUDIT_CURSORS = st.one_of(
    st.integers(min_value=0, max_value=2**63 - 1).map(lambda n: b64(f"seq:{n}".encode())),
    st.builds(
        lambda kind, number: b64(f"{kind}:{number}".encode()),
        st.sampled_from(["seq", "SEQ", "sequence", ""]),
        AUDIT_NEAR_NUMBERS | st.integers(min_value=0, max_value=2**63 - 1).map(str),
    ),
)


# orders (and identity): JSON [time, uuid]; the time of any year, with any offset a
# timezone can have (seconds and microseconds included), "Z", or none at all.
OFFSETS = st.none() | st.timedeltas(
    min_value=-dt.timedelta(hours=23, minutes=59, seconds=59),
    max_value=dt.timedelta(hours=23, minutes=59, seconds=59),
).map(dt.timezone)
# The first and last days a datetime holds: an offset can push them out of range in UTC.
EDGE_TIMES = st.datetimes(max_value=dt.datetime(1, 1, 2)) | st.datetimes(
    min_value=dt.datetime(9999, 12, 30)
)
TIME_TEXTS = st.one_of(
    st.builds(lambda at, tz: at.replace(tzinfo=tz).isoformat(), st.datetimes(), OFFSETS),
    st.builds(lambda at, tz: at.replace(tzinfo=tz).isoformat(), EDGE_TIMES, OFFSETS),
    st.datetimes().map(lambda at: at.isoformat() + "Z"),
    st.dates().map(dt.date.isoformat),
)
UUID_TEXTS = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda key: key.hex.upper()),
    st.uuids().map(lambda key: key.urn),
    st.text(max_size=40),
)
ORDERS_CURSORS = st.builds(
    lambda at, key: b64(json.dumps([at, key]).encode()), TIME_TEXTS, UUID_TEXTS
)

# catalog: JSON [category, sku] of any text, NUL and lone surrogates included.
CATALOG_TEXTS = st.one_of(
    st.text(STORED_TEXT, max_size=20),
    st.text(max_size=20),
    st.tuples(st.text(max_size=8), st.text(max_size=8)).map("\x00".join),
)
CATALOG_CURSORS = st.builds(
    lambda category, sku: b64(json.dumps([category, sku]).encode()), CATALOG_TEXTS, CATALOG_TEXTS
)


def decoded_or_refused(decode: Callable[[str], Any], cursor: str) -> Any | None:
    """The position, or None for an InvalidArgument; records which for the statistics."""
    try:
        position = decode(cursor)
    except InvalidArgument:
        event("refused")
        return None
    event("decoded")
    return position


@PROPERTY
@given(AUDIT_CURSORS)
@example(b64(b"seq:" + b"9" * 30))
@example(b64(b"seq:9223372036854775808"))
def test_an_audit_position_always_fits_the_bigint_column(cursor: str) -> None:
    sequence = decoded_or_refused(audit.decode_cursor, cursor)
    if sequence is not None:
        assert 0 <= sequence < 2**63


# Year 1's first hours in +14:00 are before year 1 in UTC: no datetime holds that instant.
BEFORE_YEAR_1_IN_UTC = b64(b'["0001-01-01T00:00:00+14:00", "00000000-0000-0000-0000-000000000000"]')


def written_time(cursor: str) -> dt.datetime:
    """The time an orders cursor holds, as its text says (any offset)."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    return dt.datetime.fromisoformat(json.loads(raw)[0])


@PROPERTY
@given(ORDERS_CURSORS)
@example(BEFORE_YEAR_1_IN_UTC)
@example(b64(b'["2020-01-01T00:00:00", "00000000-0000-0000-0000-000000000000"]'))
@example(b64(b'["9999-12-31T23:00:00-05:00", "00000000-0000-0000-0000-000000000000"]'))
def test_an_orders_position_is_the_cursors_instant_in_utc(cursor: str) -> None:
    position = decoded_or_refused(orders.decode_cursor, cursor)
    if position is not None:
        at, _ = position
        assert at.utcoffset() == dt.timedelta(0)
        # The instant the cursor wrote, not its wall time relabelled UTC.
        assert at - written_time(cursor) == dt.timedelta(0)


def test_an_orders_time_that_is_before_year_1_in_utc_is_refused() -> None:
    # It would otherwise reach the query and fail there, an INTERNAL error.
    with pytest.raises(InvalidArgument):
        orders.decode_cursor(BEFORE_YEAR_1_IN_UTC)


@PROPERTY
@given(CATALOG_CURSORS)
@example(b64(b'["tests", "\\u0000"]'))
def test_a_catalog_position_holds_no_nul_for_the_database(cursor: str) -> None:
    position = decoded_or_refused(catalog.decode_cursor, cursor)
    if position is not None:
        category, sku = position
        assert "\x00" not in category + sku
        category.encode(), sku.encode()  # UTF-8, as PostgreSQL text must be
