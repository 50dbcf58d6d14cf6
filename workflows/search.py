"""Search's reindex workflow: a new index version built from the catalog, swapped in live.

1. `begin_reindex` creates the index and adds it to the write alias: from then
   on the consumer writes every event to the old and the new index.
2. A durable timer outlasts the consumer's cached view of the write alias
   (workers/search/index.py TARGETS_TTL_S), so every event handled after it
   reaches the new index.
3. `backfill` copies the catalog, read after that point, into the new index.
   Anything committed before the read is in the copy; anything after it arrives
   as an event; the versioned merge keeps the newer of the two. No update is lost.
4. `swap_alias` moves both aliases to the new index in one atomic call: searches
   never see a missing or half-built index. The call holds only if the aliases are
   as it read them, and never swaps in an index another swap took out of the write
   alias (it missed updates since); one reindex at a time, under REINDEX_WORKFLOW_ID.
5. After a grace period (searches in flight on the old index finish) it is dropped.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

with workflow.unsafe.imports_passed_through():
    from activities.search import (
        BackfillInput,
        BeginReindexInput,
        BeginReindexResult,
        DropInput,
        SearchActivities,
        SwapInput,
        SwapResult,
    )
    from workers.search.index import TARGETS_TTL_S, WRITE_ALIAS_SUFFIX

__all__ = [
    "REINDEX_WORKFLOW_ID",
    "TASK_QUEUE",
    "VERSION_PATTERN",
    "ReindexInput",
    "ReindexProgress",
    "ReindexWorkflow",
]

TASK_QUEUE = "agora-search"
# One reindex at a time: a second start while one runs joins or is refused. A run
# under any other id (the temporal CLI makes up one when none is given) is refused.
REINDEX_WORKFLOW_ID = "search-reindex"
PROPAGATION_WAIT = timedelta(seconds=TARGETS_TTL_S * 3)
DROP_GRACE = timedelta(seconds=5)
STEP = timedelta(seconds=30)
# The backfill heartbeats once per page: a page's two gRPC calls (30 s each at most,
# activities.search.PAGE_CALL_TIMEOUT_S) and its Elasticsearch writes (10 s, three
# tries) must fit. At 30 s one slow page timed the attempt out, and its retry redid
# the page while the timed-out attempt still wrote beside it.
BACKFILL_HEARTBEAT = timedelta(minutes=2)
RETRY = RetryPolicy(maximum_interval=timedelta(seconds=10))
# What Elasticsearch takes in an index name (lower case; no space, '#', ',', ':', '*'
# ...), short enough for its 255-byte limit. A version it refuses would fail
# begin_reindex on every retry, and hold the one reindex workflow id, for ever.
VERSION_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,100}$")
INVALID = "InvalidArgument"


# Since this change a version Elasticsearch's index names refuse (or VERSION_PATTERN
# does) fails the run at once instead of retrying begin_reindex for good.
VERSION_CHECKED = "reindex-version-checked"
# Since this change so does the version whose index name is the write alias's.
ALIAS_VERSION_CHECKED = "reindex-alias-version-checked"
# Since this change a run under another id than REINDEX_WORKFLOW_ID fails at once.
WORKFLOW_ID_CHECKED = "reindex-workflow-id-checked"
# Since this change a run cancelled, or failed for good, between its begin and its
# swap deletes the index it began (search.abandon_reindex). Before, that index stayed
# in the write alias, so every event was written twice until a later reindex's swap
# took it out, and it was never dropped.
ABANDONED_CLEANED = "reindex-abandoned-index-deleted"
# Since this change a run cancelled after its swap (in the drop's grace or during the
# drop) still drops the old indices, after the grace, then ends cancelled. Before,
# they were left for good. Asked only on a cancel then.
DROPPED_WHEN_CANCELLED = "reindex-old-indices-dropped-when-cancelled"


def version_refusal(version: str) -> tuple[str, str] | None:
    """Why a (lower-cased) version can never be an index: (patch id, message), or None."""
    if not VERSION_PATTERN.fullmatch(version):
        return VERSION_CHECKED, (
            f"version {version[:120]!r} must be 1-101 ASCII letters, digits, '.', '_'"
            " or '-', starting with a letter or digit"
        )
    # Elasticsearch answers "exists" for the alias, so no index is made, and every
    # retry of adding the alias to it fails (404). (No version names the read
    # alias, the bare prefix.)
    if version == WRITE_ALIAS_SUFFIX:
        return ALIAS_VERSION_CHECKED, f"version {version!r} would name the write alias"
    return None


@dataclass
class ReindexInput:
    # Index version suffix; empty: derived from the workflow's start time.
    version: str = ""


@dataclass
class ReindexProgress:
    # starting | propagating | backfilling | swapping | dropping | done; abandoning (cancelled)
    phase: str = "starting"
    new_index: str = ""
    old_indices: list[str] | None = None
    copied: int = 0
    merged: int = 0


def _swap_cut_short(phase: str, error: BaseException) -> bool:
    """A cancel that came while the swap ran: its attempt may still go through (it never
    heartbeats, so it never hears of the cancel), and deleting the new index then would
    delete the one searches read. Only a swap that refused (StaleIndex: the index never
    went live) or one not yet begun leaves the index safe to delete."""
    if phase != "swapping":
        return False
    cause = error.cause if isinstance(error, ActivityError) else None
    return not (isinstance(cause, ApplicationError) and cause.non_retryable)


@workflow.defn(name="Reindex")
class ReindexWorkflow:
    def __init__(self) -> None:
        self._progress = ReindexProgress()

    @workflow.run
    async def run(self, data: ReindexInput) -> ReindexProgress:
        progress = self._progress
        # Two reindexes at once: the first swap takes the other's index out of the
        # write alias, and swapped in after, that index would serve without the
        # updates it missed. So only the one id, which Temporal runs once at a time.
        # Asked only for another id: a run started before the check replays as it ran.
        workflow_id = workflow.info().workflow_id
        if workflow_id != REINDEX_WORKFLOW_ID and workflow.patched(WORKFLOW_ID_CHECKED):
            raise ApplicationError(
                f"a reindex runs only as workflow id {REINDEX_WORKFLOW_ID!r}, one at a time,"
                f" not as {workflow_id[:120]!r}",
                type=INVALID,
                non_retryable=True,
            )
        version = (data.version or "r" + workflow.now().strftime("%Y%m%dt%H%M%S")).lower()
        refusal = version_refusal(version)
        # Asked only for a bad version: a run started before the check replays as it ran.
        if refusal is not None and workflow.patched(refusal[0]):
            raise ApplicationError(refusal[1], type=INVALID, non_retryable=True)
        begun = await workflow.execute_activity_method(
            SearchActivities.begin_reindex,
            BeginReindexInput(version),
            start_to_close_timeout=STEP,
            retry_policy=RETRY,
        )
        progress.new_index = begun.new_index
        try:
            swapped = await self.build(begun)
        except (asyncio.CancelledError, ActivityError) as error:
            if not _swap_cut_short(progress.phase, error) and workflow.patched(ABANDONED_CLEANED):
                progress.phase = "abandoning"
                await workflow.execute_activity_method(
                    SearchActivities.abandon_reindex,
                    SwapInput(begun.new_index),
                    start_to_close_timeout=STEP,
                    retry_policy=RETRY,
                )
            raise
        # A swap retried after it had succeeded (its completion lost) finds the
        # aliases moved already and names no old index: the one searches read
        # when the reindex began is dropped in any case (drop keeps a live one).
        old = set(swapped.old_indices) | ({begun.source_index} - {"", begun.new_index})
        progress.old_indices = sorted(old)
        progress.phase = "dropping"
        try:
            await self.drop_after_grace(progress.old_indices)
        except (asyncio.CancelledError, ActivityError) as error:
            cancelled = isinstance(error, asyncio.CancelledError) or isinstance(
                error.cause, CancelledError
            )
            if not (cancelled and workflow.patched(DROPPED_WHEN_CANCELLED)):
                raise
            # Swapped in: only the old indices are left to drop, and nothing else drops
            # them. Searches in flight on them get their grace again.
            await self.drop_after_grace(progress.old_indices)
            raise
        progress.phase = "done"
        return progress

    async def drop_after_grace(self, indices: list[str]) -> None:
        await workflow.sleep(DROP_GRACE)
        await workflow.execute_activity_method(
            SearchActivities.drop_indices,
            DropInput(indices),
            start_to_close_timeout=STEP,
            retry_policy=RETRY,
        )

    async def build(self, begun: BeginReindexResult) -> SwapResult:
        """The new index filled and swapped in; until the swap it only receives updates."""
        progress = self._progress
        progress.phase = "propagating"
        await workflow.sleep(PROPAGATION_WAIT)
        progress.phase = "backfilling"
        copied = await workflow.execute_activity_method(
            SearchActivities.backfill,
            BackfillInput(begun.new_index, begun.source_index),
            start_to_close_timeout=timedelta(hours=1),
            heartbeat_timeout=BACKFILL_HEARTBEAT,
            retry_policy=RETRY,
        )
        progress.copied, progress.merged = copied.copied, copied.merged
        progress.phase = "swapping"
        return await workflow.execute_activity_method(
            SearchActivities.swap_alias,
            SwapInput(begun.new_index),
            start_to_close_timeout=STEP,
            retry_policy=RETRY,
        )

    @workflow.query(name="progress")
    def progress(self) -> ReindexProgress:
        return self._progress
