"""One table maps upstream failures (gRPC and Temporal) to HTTP problems."""

from __future__ import annotations

import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError
from temporalio.api.enums.v1 import RetryState
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError

from gateway import failures


@pytest.mark.parametrize(
    ("status", "http", "code"),
    [
        (Status.INVALID_ARGUMENT, 400, "invalid-argument"),
        (Status.UNAUTHENTICATED, 401, "invalid-credentials"),
        (Status.PERMISSION_DENIED, 403, "permission-denied"),
        (Status.NOT_FOUND, 404, "not-found"),
        (Status.ALREADY_EXISTS, 409, "conflict"),
        (Status.DEADLINE_EXCEEDED, 504, "upstream-timeout"),
        (Status.UNAVAILABLE, 503, "upstream-unavailable"),
        (Status.INTERNAL, 502, "upstream-error"),
    ],
)
def test_grpc_statuses(status: Status, http: int, code: str) -> None:
    problem = failures.from_grpc(GRPCError(status, "why"))
    assert (problem.status, problem.code) == (http, code)


def test_every_grpc_status_is_mapped() -> None:
    assert set(failures.GRPC_STATUS) == set(Status) - {Status.OK}


def test_a_service_over_its_capacity_is_asked_again_shortly() -> None:
    # e.g. identity's bounded password verifications (agora/passwords.py).
    problem = failures.from_grpc(GRPCError(Status.RESOURCE_EXHAUSTED, "too many at once"))
    assert (problem.status, problem.headers) == (429, {"Retry-After": "1"})
    assert not failures.from_grpc(GRPCError(Status.NOT_FOUND, "x")).headers


def test_internal_details_are_not_shown() -> None:
    assert "secret" not in failures.from_grpc(GRPCError(Status.INTERNAL, "secret")).detail
    assert failures.from_grpc(GRPCError(Status.NOT_FOUND, "no such account")).detail == (
        "no such account"
    )


def _workflow_failure(error_type: str) -> WorkflowFailureError:
    application = ApplicationError("an account with this email exists", type=error_type)
    activity = ActivityError(
        "activity failed",
        scheduled_event_id=1,
        started_event_id=2,
        identity="w",
        activity_type="identity.create_account",
        activity_id="1",
        retry_state=RetryState.RETRY_STATE_NON_RETRYABLE_FAILURE,
    )
    activity.__cause__ = application
    failure = WorkflowFailureError(cause=activity)
    return failure


def test_business_failures_inside_workflows_map_by_type() -> None:
    problem = failures.from_temporal(_workflow_failure("EmailTaken"))
    assert (problem.status, problem.code) == (409, "email-taken")
    problem = failures.from_temporal(_workflow_failure("SomethingElse"))
    assert (problem.status, problem.code) == (502, "upstream-error")
    # A POST retried after its order saga failed for reusing an ended order's key.
    problem = failures.from_temporal(_workflow_failure("OrderAlreadyPlaced"))
    assert (problem.status, problem.code) == (409, "conflict")


def test_an_update_to_a_finished_workflow_is_a_conflict_not_an_outage() -> None:
    from temporalio.service import RPCError, RPCStatusCode

    finished = RPCError("workflow execution already completed", RPCStatusCode.NOT_FOUND, b"")
    assert failures.from_temporal(finished).code == "conflict"
    unavailable = RPCError("connection refused", RPCStatusCode.UNAVAILABLE, b"")
    assert failures.from_temporal(unavailable).code == "upstream-unavailable"


def test_a_request_temporal_refuses_as_made_is_the_clients_error_not_an_outage() -> None:
    from temporalio.service import RPCError, RPCStatusCode

    too_long = RPCError("WorkflowId length exceeds limit.", RPCStatusCode.INVALID_ARGUMENT, b"")
    problem = failures.from_temporal(too_long)
    assert (problem.status, problem.code) == (400, "invalid-argument")
    assert "WorkflowId" not in problem.detail  # Temporal's own words stay inside


def test_a_deadline_the_sdk_client_ran_out_of_is_a_timeout_not_an_outage() -> None:
    from temporalio.service import RPCError, RPCStatusCode

    # What a Temporal call gets when the request's own short deadline passes first.
    expired = RPCError("Timeout expired", RPCStatusCode.CANCELLED, b"")
    assert failures.from_temporal(expired).code == "upstream-timeout"
    cancelled = RPCError("Request cancelled", RPCStatusCode.CANCELLED, b"")
    assert failures.from_temporal(cancelled).code == "upstream-unavailable"
