"""Search through the gateway: catalog and stock events become searchable documents.

Products are written through the admin routes; the search service consumes
their events (and stock events on inventory.events) into the index, and
`GET /v1/search` finds them with full text, filters, facets, sorts, cursor
pages and highlights. Bad queries are refused with a clear problem.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient
from aiokafka import AIOKafkaProducer

from agora.config import Settings
from contracts import full_name
from contracts.agora.events.v1 import EventEnvelope
from contracts.agora.inventory.v1 import StockLevel, StockRestocked
from gateway.deps import Gateway
from tests.integration.catalogkit import CatalogApi
from tests.integration.conftest import Services
from tests.integration.gatewaykit import TokenMinter, problem, running_gateway
from tests.integration.waiting import eventually

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore:EdDSA is deprecated")]


@pytest_asyncio.fixture(scope="module")
async def search_api(settings: Settings, services: Services) -> AsyncIterator[CatalogApi]:
    for service in ("identity", "catalog", "search"):
        services(service)
    minter = TokenMinter(settings)
    running: tuple[Gateway, TestClient]
    async with running_gateway(settings, minter) as running:
        yield CatalogApi(running[1], minter)


def word() -> str:
    """A word no other product has, so each test searches only its own products."""
    return f"zq{uuid.uuid4().hex[:10]}"


async def found(api: CatalogApi, count: int, **params: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        result = await api.search(**params)
        return result if len(result["hits"]) == count else None

    return await eventually(probe, what=f"{count} hits for {params}")


async def test_a_product_is_searchable_after_its_event_and_follows_updates(
    search_api: CatalogApi,
) -> None:
    api = search_api
    tag = word()
    body = await api.create(title=f"Aurora {tag} Lamp", description="Warm light for reading")
    result = await found(api, 1, q=tag, highlight="true")
    hit = result["hits"][0]
    assert hit["sku"] == body["sku"] and hit["price"]["amount_minor"] == 8999
    assert hit["in_stock"] is False
    assert hit["highlights"][0]["fragments"] == [f"Aurora <em>{tag}</em> Lamp"]

    await api.set_price(body["sku"], 4999)

    async def repriced() -> dict[str, Any] | None:
        hits = (await api.search(q=tag))["hits"]
        return hits[0] if hits and hits[0]["price"]["amount_minor"] == 4999 else None

    await eventually(repriced, what="the new price in the index")

    response = await api.client.delete(f"/v1/admin/products/{body['sku']}", headers=api.admin)
    assert response.status == 200
    await found(api, 0, q=tag)


async def test_filters_facets_sort_and_cursor_pages(search_api: CatalogApi) -> None:
    api = search_api
    tag = word()
    prices = [500, 1500, 3000, 7000, 20000]
    for i, price in enumerate(prices):
        await api.create(
            title=f"{tag} Widget {i}",
            brand="Brightco" if i % 2 else "Dimco",
            category="home/lighting/lamps" if i < 3 else "home/garden",
            price={"amount_minor": price, "currency": "EUR"},
        )
    await found(api, 5, q=tag)

    seen: list[int] = []
    cursor = ""
    pages = 0
    while True:
        params = {
            "q": tag,
            "sort": "price_asc",
            "limit": "2",
            **({"cursor": cursor} if cursor else {}),
        }
        page = await api.search(**params)
        seen += [h["price"]["amount_minor"] for h in page["hits"]]
        pages += 1
        cursor = page.get("next_cursor", "")
        if not cursor:
            break
    assert seen == prices and pages == 3

    newest = await api.search(q=tag, sort="newest")
    assert newest["hits"][0]["title"] == f"{tag} Widget 4"

    lamps = await api.search(q=tag, category="home/lighting", facet=["brand", "price", "category"])
    assert lamps["total"] == 3
    assert {b["key"]: b["count"] for b in lamps["facets"]["brand"]} == {"Dimco": 2, "Brightco": 1}
    # A category bucket counts its descendants, as its filter does.
    assert {b["key"]: b["count"] for b in lamps["facets"]["category"]} == {
        "home": 3,
        "home/lighting": 3,
        "home/lighting/lamps": 3,
    }
    assert {b["key"]: b["count"] for b in lamps["facets"]["price"] if b["count"]} == {
        "0-10": 1,
        "10-25": 1,
        "25-50": 1,
    }

    brand = await api.search(q=tag, brand="brightco")  # brands match in any case
    assert {h["brand"] for h in brand["hits"]} == {"Brightco"} and brand["total"] == 2
    ranged = await api.search(q=tag, min_price="1500", max_price="7000")
    assert sorted(h["price"]["amount_minor"] for h in ranged["hits"]) == [1500, 3000, 7000]
    excluded = await api.search(q=f'{tag} -"Widget 1"')
    assert excluded["total"] == 4
    prefix = await api.search(q=tag[:-3])  # the last word as a prefix of the title's word
    assert prefix["total"] == 5


async def test_stock_events_drive_the_in_stock_filter(
    search_api: CatalogApi, settings: Settings
) -> None:
    api = search_api
    tag, other = word(), word()
    sku = (await api.create(title=f"{tag} Kettle"))["sku"]
    marker = (await api.create(title=f"{other} Teapot"))["sku"]
    await found(api, 1, q=tag)
    await found(api, 1, q=other)
    assert (await api.search(q=tag, in_stock="true"))["hits"] == []

    # One key for every event: one partition, consumed in the order sent.
    key = f"test-{tag}".encode()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap)
    await producer.start()
    try:

        async def send(of: str, version: int, available: int) -> None:
            await producer.send_and_wait(
                "inventory.events", _stock_event(of, version, available), key=key
            )

        await send(sku, 1, 7)
        await found(api, 1, q=tag, in_stock="true")
        await send(sku, 3, 0)  # sold out
        await send(sku, 2, 4)  # stale: consumed after version 3
        await send(marker, 1, 5)  # consumed after both
    finally:
        await producer.stop()
    # Once the marker is searchable, the stale event before it was consumed too:
    # version 3 (sold out) must still stand.
    await found(api, 1, q=other, in_stock="true")
    assert (await api.search(q=tag, in_stock="true"))["hits"] == []
    assert (await api.search(q=tag))["hits"][0]["in_stock"] is False


def _stock_event(sku: str, version: int, available: int) -> bytes:
    payload = StockRestocked(
        sku=sku,
        quantity=available,
        stock_after=StockLevel(sku=sku, on_hand=available, available=available, version=version),
    )
    return bytes(
        EventEnvelope(
            event_id=str(uuid.uuid4()),
            event_type="inventory.StockRestocked",
            aggregate_type="stock",
            aggregate_id=sku,
            sequence=version,
            occurred_at=dt.datetime.now(dt.UTC),
            producer="inventory",
            payload=bytes(payload),
            payload_type=full_name(payload),
        )
    )


async def test_bad_search_input_gets_a_clear_problem(search_api: CatalogApi) -> None:
    api = search_api
    client = api.client

    async def get(params: dict[str, str]) -> Any:
        return await client.get("/v1/search", params=params, headers=api.read)

    await problem(await get({"q": 'lamp "warm'}), 400, "invalid-argument")
    await problem(await get({"q": "lamp -"}), 400, "invalid-argument")
    await problem(await get({"q": "x", "cursor": "not-a-cursor"}), 400, "invalid-argument")
    for params in (
        {"limit": "500"},
        {"limit": "many"},
        {"sort": "cheapest"},
        {"facet": "colour"},
        {"min_price": "900", "max_price": "100"},
        {"min_price": "-5"},
        {"currency": "EURO"},
        {"category": "Bad Category"},
        {"unknown": "1"},
    ):
        await problem(await get(params), 422, "validation-failed")

    tag = word()
    for i in range(3):
        await api.create(title=f"{tag} Mug {i}")
    first = await found(api, 3, q=tag)
    assert "next_cursor" not in first
    page = await api.search(q=tag, limit="1")
    # A cursor is bound to its query: another query cannot continue from it.
    await problem(
        await get({"q": f"{tag} other", "limit": "1", "cursor": page["next_cursor"]}),
        400,
        "invalid-argument",
    )


async def test_highlights_escape_the_products_own_markup(search_api: CatalogApi) -> None:
    # Fragments are HTML: a title's own tags must come back as text, never as markup.
    api = search_api
    tag = word()
    await api.create(
        title=f"Lamp {tag} <img src=x onerror=alert(1)> & Co",
        description=f"Bright {tag} <script>alert(2)</script>",
    )
    result = await found(api, 1, q=tag, highlight="true")
    highlights = {h["field"]: h["fragments"] for h in result["hits"][0]["highlights"]}
    escaped = "&lt;img src=x onerror=alert(1)&gt; &amp; Co"
    assert highlights["title"] == [f"Lamp <em>{tag}</em> {escaped}"]
    for fragment in (f for fragments in highlights.values() for f in fragments):
        markup = fragment.replace("<em>", "").replace("</em>", "")
        assert "<" not in markup and ">" not in markup, fragment
    assert "&lt;script&gt;" in highlights["description"][0]


async def test_every_part_of_a_hyphenated_word_must_match(search_api: CatalogApi) -> None:
    api = search_api
    tag = word()
    usb_c = await api.create(title=f"{tag}-c cable")
    await api.create(title=f"{tag} cable")
    await found(api, 2, q=tag)
    result = await api.search(q=f"{tag}-c")
    assert [h["sku"] for h in result["hits"]] == [usb_c["sku"]]


async def test_a_word_of_punctuation_alone_does_not_empty_the_search(
    search_api: CatalogApi,
) -> None:
    # The analyzer keeps no term of "&", "/", "..." or "&&": such a word or phrase
    # asks for nothing, where it used to match nothing at all.
    api = search_api
    tag = word()
    drill = await api.create(title=f"{tag} Black Decker drill")
    await api.create(title=f"{tag} Makita saw")
    await found(api, 2, q=tag)
    for q in (
        f"{tag} Black & Decker",
        f"{tag} Black / Decker ...",
        f'{tag} "&" Decker',  # a phrase of no terms
        f"{tag} Decker &&",  # the last word, also a title prefix
        f'{tag} "Black & Decker" -& -"..."',  # the phrase's "&" is no word between them
    ):
        hits = (await api.search(q=q))["hits"]
        assert [h["sku"] for h in hits] == [drill["sku"]], q


async def test_a_brand_filter_matches_as_the_index_lower_cases_it(search_api: CatalogApi) -> None:
    # Final sigma and dotted capital I: Python's lower() and Elasticsearch's disagree.
    api = search_api
    tag = word()
    await api.create(title=f"{tag} Sandal", brand="ΟΔΟΣ")
    await api.create(title=f"{tag} Scarf", brand="İpek")
    await found(api, 2, q=tag)
    for asked, brand in (("ΟΔΟΣ", "ΟΔΟΣ"), ("οδοσ", "ΟΔΟΣ"), ("İpek", "İpek"), ("ipek", "İpek")):
        hits = (await api.search(q=tag, brand=asked))["hits"]
        assert [h["brand"] for h in hits] == [brand], asked


async def test_price_sorts_and_the_price_facet_keep_to_one_currency(
    search_api: CatalogApi,
) -> None:
    api = search_api
    tag = word()
    for amount, currency in ((800, "EUR"), (3000, "EUR"), (500, "USD"), (60000, "USD")):
        await api.create(title=f"{tag} Clock", price={"amount_minor": amount, "currency": currency})
    everything = await found(api, 4, q=tag, facet="price")
    # The hits keep every currency; the buckets count EUR (the default) only.
    assert everything["total"] == 4
    assert _counted(everything) == {"0-10": 1, "25-50": 1}
    in_usd = await api.search(q=tag, facet="price", min_price="0", currency="USD")
    assert _counted(in_usd) == {"0-10": 1, "500+": 1}
    # The currency alone is enough: no price bound needed to name it.
    assert _counted(await api.search(q=tag, facet="price", currency="USD")) == _counted(in_usd)

    cheapest = await api.search(q=tag, sort="price_asc")
    assert _prices(cheapest) == [(800, "EUR"), (3000, "EUR")]
    dearest = await api.search(q=tag, sort="price_desc", currency="USD")
    assert _prices(dearest) == [(60000, "USD"), (500, "USD")]


def _counted(result: dict[str, Any]) -> dict[str, int]:
    return {b["key"]: b["count"] for b in result["facets"]["price"] if b["count"]}


def _prices(result: dict[str, Any]) -> list[tuple[int, str]]:
    return [(h["price"]["amount_minor"], h["price"]["currency"]) for h in result["hits"]]
