"""Search's Elasticsearch indices: versioned product indices behind two aliases.

* `<prefix>` (read alias): the one index searches read. A reindex swaps it to a
  new index in one `_aliases` call, so no search ever sees no index or two.
* `<prefix>-write` (write alias): every index that must receive updates. Outside
  a reindex that is the read index; during one it is also the index being
  built, so events keep reaching both while the new one is filled.

The consumer resolves the write alias itself (a write through an alias with two
indices is refused by Elasticsearch) and caches the answer for `TARGETS_TTL_S`;
the reindex waits longer than that before it starts copying (see
workflows/search.py). Automatic index creation is turned off for our prefix, so
a late write to an index dropped after a swap fails instead of resurrecting it.
That rule is cluster-wide and shared: start-up adds ours to the patterns already
there (another deployment's, an operator's) and never opens what they close.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from elasticsearch import ApiError, AsyncElasticsearch, BadRequestError, NotFoundError

log = logging.getLogger(__name__)

TARGETS_TTL_S = 1.0
FIRST_VERSION = "v1"
# The write alias is `<prefix>-write`: an index of this version would bear its name.
WRITE_ALIAS_SUFFIX = "write"
AUTO_CREATE = "action.auto_create_index"

# Explicit mappings: nothing is mapped dynamically (unknown fields are rejected).
MAPPINGS: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "sku": {"type": "keyword"},
        "title": {
            "type": "text",
            "analyzer": "standard",
            # Indexes 2-5 character prefixes: as-you-type prefix queries stay cheap.
            "index_prefixes": {"min_chars": 2, "max_chars": 5},
        },
        "description": {"type": "text", "analyzer": "standard"},
        "brand": {
            "type": "text",
            "analyzer": "standard",
            "fields": {
                "raw": {"type": "keyword"},  # facet keys, as written
                "lc": {"type": "keyword", "normalizer": "lowercase"},  # filters, any case
            },
        },
        "category": {"type": "keyword"},
        # The category and its ancestors: a filter on "a/b" finds "a/b" and "a/b/c".
        "category_path": {"type": "keyword"},
        "price_minor": {"type": "long"},
        "currency": {"type": "keyword"},
        "active": {"type": "boolean"},
        # False for a stub that holds only stock (its product event is still to come).
        "has_product": {"type": "boolean"},
        "in_stock": {"type": "boolean"},
        "available": {"type": "long"},
        # Versions of the two sources this document merges; each update keeps the newer.
        "product_version": {"type": "long"},
        "stock_version": {"type": "long"},
        "created_at": {"type": "date"},
        "updated_at": {"type": "date"},
    },
}

# One replica wherever a second node can hold it (production's three zone-aware
# nodes: losing one keeps every shard searchable and writable), none on a single
# local node (a replica it could never place would keep the index yellow).
REPLICAS = "0-1"
SETTINGS: dict[str, Any] = {
    "number_of_shards": 1,
    "auto_expand_replicas": REPLICAS,
    "analysis": {"normalizer": {"lowercase": {"type": "custom", "filter": ["lowercase"]}}},
}


def index_settings(refresh_interval: str) -> dict[str, Any]:
    """The settings a new product index is created with."""
    return {**SETTINGS, "refresh_interval": refresh_interval}


def auto_create_refusing(current: str | None, prefix: str) -> str | None:
    """`current` (action.auto_create_index) with `<prefix>-*` refused ahead of its patterns.

    Unset or true means "+*". False (creation off everywhere) and a rule that refuses
    the prefix already stay as they are; every other pattern is kept, in order."""
    if current is not None and current.lower() == "false":
        return current
    patterns = "+*" if current is None or current.lower() == "true" else current
    refusal = f"-{prefix}-*"
    if refusal in (p.strip() for p in patterns.split(",")):
        return current
    return f"{refusal},{patterns}"


class StaleIndex(Exception):
    """A swap to an index that no longer receives updates: swapped in, searches would
    read it without every update it missed (a reindex never makes it whole again)."""


class AliasLost(Exception):
    """The read alias is gone and which index it named cannot be told from the rest."""


class Indices:
    """Names and alias operations of one deployment's product indices."""

    def __init__(self, es: AsyncElasticsearch, prefix: str, refresh_interval: str = "100ms"):
        self.es = es
        self.prefix = prefix
        self.read_alias = prefix
        self.write_alias = f"{prefix}-{WRITE_ALIAS_SUFFIX}"
        self.refresh_interval = refresh_interval
        self._targets: list[str] = []
        self._targets_at = 0.0

    def index_name(self, version: str) -> str:
        return f"{self.prefix}-{version}"

    async def create(self, name: str) -> bool:
        """Create an index with the explicit mappings; False if it exists (idempotent)."""
        if await self.es.indices.exists(index=name):
            return False
        try:
            await self.es.indices.create(
                index=name,
                mappings=MAPPINGS,
                settings=index_settings(self.refresh_interval),
            )
        except BadRequestError as error:
            # Another replica starting on the same fresh cluster created it first.
            if error.message == "resource_already_exists_exception":
                return False
            raise
        return True

    async def ensure(self) -> None:
        """On start-up: the first index and both aliases, unless they exist."""
        await self.refuse_auto_create()
        if await self.es.indices.exists_alias(name=self.read_alias):
            await self.restore_write_alias()
            await self.replicate(await self.behind(self.write_alias))
            return
        if await self.restore_read_alias():
            return
        first = self.index_name(FIRST_VERSION)
        await self.create(first)
        await self.es.indices.update_aliases(
            actions=[
                {"add": {"index": first, "alias": self.read_alias}},
                {"add": {"index": first, "alias": self.write_alias}},
            ]
        )

    async def restore_write_alias(self) -> None:
        """Put a lost write alias back on the index searches read: without it events
        would reach no index (deleted by hand, or a half-done alias change)."""
        if await self.behind(self.write_alias):
            return
        await self.es.indices.update_aliases(
            actions=[
                {"add": {"index": name, "alias": self.write_alias}}
                for name in await self.behind(self.read_alias)
            ]
        )

    async def restore_read_alias(self) -> bool:
        """Put a lost read alias back on the index the write alias names; False on a
        fresh cluster (neither alias). Without this, start-up took a lost read alias
        for a fresh cluster: searches read a new, empty first index (ready, and
        answering with almost nothing) while every event was written twice."""
        writers = await self.behind(self.write_alias)
        if not writers:
            return False
        if len(writers) > 1:
            # Mid-reindex: the old index and the one being built both take writes, and
            # only the reindex knows which is complete.
            raise AliasLost(
                f"the read alias {self.read_alias} is missing and the write alias names "
                f"{writers}: put it back on the complete one by hand (docs/search.md)"
            )
        log.warning(
            "read alias lost: put back on the write alias's index",
            extra={"alias": self.read_alias, "index": writers[0]},
        )
        await self.es.indices.update_aliases(
            actions=[{"add": {"index": writers[0], "alias": self.read_alias}}]
        )
        await self.replicate(writers)
        return True

    async def refuse_auto_create(self) -> None:
        """No write may create one of our indices by auto-creation (cluster-wide). Read
        first: a cluster-wide metadata block refuses the write even when it changes
        nothing, and the setting outlives the service."""
        found = (await self.es.cluster.get_settings(flat_settings=True, include_defaults=True)).body
        # The rule in force: a transient one overrides the persistent one, which
        # overrides elasticsearch.yml's (listed among the defaults). The merge starts
        # from it, and is written where it takes effect.
        level = "transient" if AUTO_CREATE in found.get("transient", {}) else "persistent"
        current = next(
            (
                found[where][AUTO_CREATE]
                for where in (level, "defaults")
                if AUTO_CREATE in found.get(where, {})
            ),
            None,
        )
        wanted = auto_create_refusing(current, self.prefix)
        if wanted == current:
            return
        if level == "transient":
            await self.es.cluster.put_settings(transient={AUTO_CREATE: wanted})
        else:
            await self.es.cluster.put_settings(persistent={AUTO_CREATE: wanted})

    async def replicate(self, names: list[str]) -> None:
        """Give indices made before REPLICAS their replica (a dynamic setting: no reindex).

        Writes only the indices whose setting differs, and logs a refusal instead of
        raising: a metadata block (index.blocks.read_only, index.blocks.metadata)
        refuses the read or the write, and a search service that exited over a replica
        count would crash-loop and stop the searches the block still allows. (The disk
        flood stage's read_only_allow_delete block allows settings writes since
        Elasticsearch 8, elastic/elasticsearch#81781.)"""
        try:
            stale = await self.without_replicas(names)
            if stale:
                await self.es.indices.put_settings(
                    index=",".join(stale), settings={"index.auto_expand_replicas": REPLICAS}
                )
        except ApiError as error:
            log.warning(
                "replica setting refused, serving the indices as they are",
                extra={"indices": names, "error": str(error)},
            )

    async def without_replicas(self, names: list[str]) -> list[str]:
        """Those of `names` whose auto_expand_replicas is not REPLICAS."""
        if not names:
            return []
        found = await self.es.indices.get_settings(
            index=",".join(names), name="index.auto_expand_replicas"
        )
        return sorted(
            name
            for name, entry in found.body.items()
            if entry["settings"].get("index", {}).get("auto_expand_replicas") != REPLICAS
        )

    async def behind(self, alias: str) -> list[str]:
        try:
            found = await self.es.indices.get_alias(name=alias)
        except NotFoundError:
            return []
        return sorted(found.body.keys())

    async def write_targets(self, *, fresh: bool = False) -> list[str]:
        now = time.monotonic()
        if fresh or not self._targets or now - self._targets_at > TARGETS_TTL_S:
            self._targets = await self.behind(self.write_alias)
            self._targets_at = now
        return self._targets

    @property
    def targets_loaded_at(self) -> float:
        """When the cached write targets were read from Elasticsearch (monotonic)."""
        return self._targets_at

    async def add_write_target(self, index: str) -> None:
        await self.es.indices.update_aliases(
            actions=[{"add": {"index": index, "alias": self.write_alias}}]
        )

    async def swap(self, new_index: str) -> list[str]:
        """Point both aliases at `new_index` only, in one atomic call; returns the old indices.

        The call holds only if the aliases are still as read here: it takes the
        read alias off each index it was read on, and `new_index` out of the write
        alias and back in, all with must_exist, so an alias change in between (another
        reindex's swap) fails the whole call (404) instead of being overwritten; a
        retry reads the aliases again. Already swapped (a retry after the call went
        through, its answer lost): nothing to do, no old index. Raises StaleIndex when
        `new_index` no longer receives updates."""
        readers = await self.behind(self.read_alias)
        if readers == [new_index]:
            return []
        writers = await self.behind(self.write_alias)
        if new_index not in writers:
            raise StaleIndex(
                f"{new_index!r} is no longer in the write alias {self.write_alias!r} (another"
                " swap took it out): it has missed updates since and is not swapped in"
            )
        old = sorted((set(readers) | set(writers)) - {new_index})
        actions: list[dict[str, Any]] = [
            {"remove": {"index": new_index, "alias": self.write_alias, "must_exist": True}},
            {"add": {"index": new_index, "alias": self.write_alias}},
            {"add": {"index": new_index, "alias": self.read_alias}},
        ]
        for name in old:
            actions.append(
                {"remove": {"index": name, "alias": self.read_alias, "must_exist": name in readers}}
            )
            actions.append(
                {"remove": {"index": name, "alias": self.write_alias, "must_exist": False}}
            )
        await self.es.indices.update_aliases(actions=actions)
        return old

    async def abandon(self, name: str) -> bool:
        """A reindex given up before its swap: its index `name` deleted, which takes it
        out of the write alias too, unless searches read it (swapped in after all).
        True when it was deleted."""
        if name in await self.behind(self.read_alias):
            return False
        await self.drop([name])
        return True

    async def drop(self, names: list[str]) -> None:
        live = set(await self.behind(self.read_alias))
        for name in names:
            if name not in live:  # never the index searches read
                await self.es.indices.delete(index=name, ignore_unavailable=True)
