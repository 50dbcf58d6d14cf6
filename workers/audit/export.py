"""Export of one aggregate's trail: its events plus the Temporal history that caused them.

Workflow ids are read from the events themselves (no id convention assumed).
Each event is linked to the history event of the activity that wrote it: an
activity of the event's producer (activity types are named `<service>.<step>`)
that was running when the event occurred; among several, the shortest such
execution. Clocks of the service and of Temporal are the same host's locally;
a small tolerance absorbs the rest.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from urllib.parse import quote

from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import Client
from temporalio.service import RPCError

log = logging.getLogger(__name__)
TOLERANCE = dt.timedelta(milliseconds=500)


@dataclass(frozen=True)
class ActivityRun:
    activity_type: str
    started: dt.datetime
    finished: dt.datetime
    completed_event_id: int


@dataclass
class FetchedHistory:
    workflow_id: str
    run_id: str
    workflow_type: str = ""
    history_json: str = ""
    error: str = ""
    activities: list[ActivityRun] = field(default_factory=list)


def _time(event: HistoryEvent) -> dt.datetime:
    return event.event_time.ToDatetime(tzinfo=dt.UTC)


def activity_runs(events: list[HistoryEvent]) -> list[ActivityRun]:
    """Completed (or failed) activity executions: type, start, finish, closing event id."""
    scheduled: dict[int, str] = {}
    started: dict[int, dt.datetime] = {}
    runs: list[ActivityRun] = []
    for event in events:
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attrs = event.activity_task_scheduled_event_attributes
            scheduled[event.event_id] = attrs.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            started[event.activity_task_started_event_attributes.scheduled_event_id] = _time(event)
        elif event.event_type in (
            EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED,
            EventType.EVENT_TYPE_ACTIVITY_TASK_FAILED,
        ):
            attrs_c = (
                event.activity_task_completed_event_attributes
                if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED
                else event.activity_task_failed_event_attributes
            )
            sid = attrs_c.scheduled_event_id
            if sid in scheduled:
                runs.append(
                    ActivityRun(
                        scheduled[sid], started.get(sid, _time(event)), _time(event), event.event_id
                    )
                )
    return runs


def link(runs: list[ActivityRun], producer: str, occurred_at: dt.datetime) -> ActivityRun | None:
    candidates = [
        run
        for run in runs
        if run.activity_type.startswith(f"{producer}.")
        and run.started - TOLERANCE <= occurred_at <= run.finished + TOLERANCE
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda run: run.finished - run.started)


def ui_url(base: str, namespace: str, workflow_id: str, run_id: str) -> str:
    return (
        f"{base.rstrip('/')}/namespaces/{quote(namespace, safe='')}/workflows/"
        f"{quote(workflow_id, safe='')}/{quote(run_id, safe='')}/history"
    )


async def fetch_history(client: Client, workflow_id: str, run_id: str) -> FetchedHistory:
    fetched = FetchedHistory(workflow_id, run_id)
    try:
        handle = client.get_workflow_handle(workflow_id, run_id=run_id or None)
        history = await handle.fetch_history()
    except RPCError as error:
        # E.g. the run is past the namespace's retention: the events still export.
        fetched.error = f"{error.status.name}: {error.message}"
        return fetched
    events = list(history.events)
    if events:
        started = events[0].workflow_execution_started_event_attributes
        fetched.workflow_type = started.workflow_type.name
        if not run_id:
            fetched.run_id = started.original_execution_run_id
    fetched.history_json = history.to_json()
    fetched.activities = activity_runs(events)
    return fetched
