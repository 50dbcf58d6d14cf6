"""`python -m workers.catalog.seed [--products N]`: load the demo catalog (`make seed`).

Generates a realistic catalog locally with Faker (seeded, so the same flags give
the same products) over a three-level category tree, and loads it through the
catalog's own import workflow in chunks. Re-running is a no-op: the seed's
imports are create-only (ImportInput.create_only), so a product that exists is
left as it is, even one an admin has changed or deactivated since. A seed started
while an earlier one still runs waits for the earlier one's imports instead of
starting them again. When
the inventory service exists, initial stock goes through its SeedStock
workflow too (without overwriting stock that has changed since).
Needs the platform running (`make run` calls this after the stack is up).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass

from faker import Faker
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy

from agora import config, temporal
from agora.config import Settings
from agora.leave import run_and_leave
from agora.logs import setup_logging
from workflows.catalog import (
    TASK_QUEUE,
    ImportInput,
    ImportProductsWorkflow,
    ImportProgress,
    ProductData,
    import_workflow_id,
)

LOCALES = ["en_US", "de_DE", "fr_FR"]  # the names and words products are made of
CHUNK = 1_000  # products per import workflow (its input stays far below Temporal's limit)
# Stock levels per SeedStock workflow: its input stays under Temporal's 2 MiB payload
# limit (20,000 levels are about 760 KB; 100,000 in one were 3.8 MB and refused).
STOCK_PART = 20_000

# top level -> second level -> leaves, with the nouns products in a leaf are named after
# and a typical price range in euros.
TREE: dict[str, dict[str, dict[str, tuple[list[str], tuple[int, int]]]]] = {
    "electronics": {
        "audio": {
            "headphones": (["Headphones", "Earbuds", "Headset"], (19, 399)),
            "speakers": (["Speaker", "Soundbar", "Subwoofer"], (29, 899)),
        },
        "computers": {
            "laptops": (["Laptop", "Notebook", "Ultrabook"], (399, 2999)),
            "accessories": (["Mouse", "Keyboard", "USB Hub", "Webcam"], (9, 199)),
        },
        "phones": {
            "smartphones": (["Smartphone", "Phone"], (149, 1499)),
            "cases": (["Phone Case", "Screen Protector"], (5, 59)),
        },
    },
    "home": {
        "kitchen": {
            "cookware": (["Frying Pan", "Saucepan", "Dutch Oven", "Wok"], (15, 299)),
            "appliances": (["Kettle", "Toaster", "Blender", "Coffee Maker"], (19, 499)),
        },
        "furniture": {
            "chairs": (["Chair", "Stool", "Armchair"], (39, 899)),
            "tables": (["Desk", "Dining Table", "Side Table"], (59, 1299)),
        },
        "lighting": {
            "lamps": (["Desk Lamp", "Floor Lamp", "Pendant Light"], (15, 399)),
        },
    },
    "sports": {
        "running": {
            "shoes": (["Running Shoe", "Trail Shoe"], (49, 249)),
            "apparel": (["Running Shirt", "Running Tights", "Jacket"], (15, 199)),
        },
        "cycling": {
            "bikes": (["Road Bike", "Mountain Bike", "City Bike"], (299, 4999)),
            "helmets": (["Helmet"], (29, 299)),
        },
        "outdoor": {
            "camping": (["Tent", "Sleeping Bag", "Camping Stove", "Backpack"], (19, 699)),
        },
    },
    "books": {
        "fiction": {
            "novels": (["Novel", "Paperback"], (7, 35)),
            "crime": (["Crime Novel", "Thriller"], (7, 30)),
        },
        "non-fiction": {
            "cooking": (["Cookbook"], (12, 49)),
            "science": (["Science Book", "Popular Science"], (10, 59)),
        },
    },
}
ADJECTIVES = [
    "Classic", "Pro", "Lite", "Ultra", "Essential", "Compact", "Premium", "Eco",
    "Urban", "Nordic", "Active", "Studio", "Travel", "Smart", "Vintage", "Max",
]  # fmt: skip
MATERIALS = ["aluminium", "steel", "cotton", "wool", "oak", "bamboo", "plastic", "leather"]


@dataclass(frozen=True)
class Leaf:
    path: str
    nouns: list[str]
    euros: tuple[int, int]


def leaves() -> list[Leaf]:
    return [
        Leaf(f"{top}/{mid}/{leaf}", nouns, euros)
        for top, mids in TREE.items()
        for mid, leafs in mids.items()
        for leaf, (nouns, euros) in leafs.items()
    ]


def generate(count: int, seed: int = 42) -> list[ProductData]:
    """`count` products, the same ones for the same (count, seed)."""
    fake = Faker(LOCALES)
    fake.seed_instance(seed)
    rng = random.Random(seed)
    brands = sorted({fake.company().split(",")[0].split(" ")[0] for _ in range(200)})
    tree = leaves()
    products = []
    for number in range(count):
        leaf = tree[number % len(tree)]
        brand = rng.choice(brands)
        noun = rng.choice(leaf.nouns)
        title = f"{brand} {rng.choice(ADJECTIVES)} {noun} {rng.randint(100, 999)}"
        low, high = leaf.euros
        # Log-uniform in the leaf's range, ending in .99 or .49 as shop prices do.
        euros = int(low * (high / low) ** rng.random())
        cents = rng.choice([99, 49, 0])
        products.append(
            ProductData(
                sku=f"SKU-{seed}-{number:06d}",
                title=title,
                category=leaf.path,
                price_minor=euros * 100 + cents,
                currency="EUR",
                description=fake.paragraph(nb_sentences=3),
                brand=brand,
                attributes={
                    "color": fake.safe_color_name(),
                    "material": rng.choice(MATERIALS),
                    "weight_g": str(rng.randint(50, 20_000)),
                },
            )
        )
    return products


async def import_all(client: Client, products: list[ProductData], seed: int) -> ImportProgress:
    chunks = [products[i : i + CHUNK] for i in range(0, len(products), CHUNK)]
    handles = [
        await client.start_workflow(
            ImportProductsWorkflow.run,
            ImportInput(
                import_id=f"seed-{seed}-{n}", products=chunk, batch_size=250, create_only=True
            ),
            id=import_workflow_id(f"seed-{seed}-{n}"),
            task_queue=TASK_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        for n, chunk in enumerate(chunks)
    ]
    # A chunk an earlier seed still imports is not started again: its handle follows
    # that run, and the result awaited below is that run's.
    total = ImportProgress(import_id=f"seed-{seed}")
    # In completion order, so a slow first chunk does not hide the others' progress.
    for done, pending in enumerate(asyncio.as_completed([h.result() for h in handles]), 1):
        result = await pending
        total.total += result.total
        total.created += result.created
        total.updated += result.updated
        total.unchanged += result.unchanged
        total.failed += result.failed
        print(
            f"catalog import: chunk {done}/{len(handles)} done,"
            f" {total.total}/{len(products)} products",
            file=sys.stderr,
            flush=True,
        )
    return total


async def seed_stock(
    client: Client, products: list[ProductData], seed: int, part_size: int = STOCK_PART
) -> str:
    try:
        from workers.inventory.model import StockLine
        from workflows.inventory import TASK_QUEUE as INVENTORY_QUEUE
        from workflows.inventory import SeedStockInput, SeedStockWorkflow, seed_stock_workflow_id
    except ImportError:
        return "inventory service not present: stock not seeded"
    rng = random.Random(seed + 1)
    # Most products in stock, some scarce, about one in twelve sold out.
    levels = [
        StockLine(p.sku, 0 if rng.random() < 0.08 else rng.choice([3, 10, 25, 50, 120]))
        for p in products
    ]
    parts = [levels[i : i + part_size] for i in range(0, len(levels), part_size)]
    created = unchanged = 0
    for n, part in enumerate(parts):
        key = f"catalog-seed-{seed}-{len(products)}" + (f"-{n}" if n else "")
        progress = await client.execute_workflow(
            SeedStockWorkflow.run,
            SeedStockInput(key=key, levels=part, overwrite=False),
            id=seed_stock_workflow_id(key),
            task_queue=INVENTORY_QUEUE,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            # An earlier seed's run still going: wait for its result rather than fail.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
        created, unchanged = created + progress.created, unchanged + progress.unchanged
        if len(parts) > 1:
            print(f"stock: part {n + 1}/{len(parts)} done", file=sys.stderr, flush=True)
    return f"stock: {created} created, {unchanged} unchanged"


async def main_async(settings: Settings, count: int, seed: int, with_stock: bool) -> int:
    client = await temporal.connect(settings, sdk_metrics=False)
    started = time.monotonic()
    products = generate(count, seed)
    total = await import_all(client, products, seed)
    print(
        f"catalog: {total.total} products ({total.created} created, {total.updated} updated,"
        f" {total.unchanged} unchanged, {total.failed} rejected)"
        f" in {time.monotonic() - started:.1f}s"
    )
    if with_stock:
        print(await seed_stock(client, products, seed))
    return 0 if total.failed == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.catalog.seed", description=__doc__)
    parser.add_argument("--products", type=int, default=10_000, help="how many (default 10000)")
    parser.add_argument("--seed", type=int, default=42, help="generator seed (default 42)")
    parser.add_argument("--no-stock", action="store_true", help="skip inventory's SeedStock")
    args = parser.parse_args(argv)
    if args.products < 1:
        parser.error("--products must be positive")
    setup_logging("seed")  # before the settings, so a refused one is a JSON line too
    settings = config.load(service="seed")
    # Library warnings (the SDK's) as JSON lines like every service's; the summary
    # and progress lines stay plain text.
    setup_logging("seed", settings.log_level)
    return asyncio.run(main_async(settings, args.products, args.seed, not args.no_stock))


if __name__ == "__main__":
    run_and_leave(main)
