"""Domain errors shared by every service, and the one table that maps them to the edges.

A service raises these; the gRPC layer turns them into a grpclib status, the
gateway into problem+json, Temporal activities into non-retryable failures.
"""

from __future__ import annotations

from typing import Any

from grpclib.const import Status


class DomainError(Exception):
    """A business rejection: retrying will not help.

    Raised in a gRPC handler it becomes `grpc_status` (agora.grpc); raised in an
    activity it becomes a non-retryable ApplicationError of type `failure_type`
    with `failure_details()` (agora.temporal.business_rejections), the stable
    names a workflow and the gateway switch on.
    """

    code = "domain-error"
    grpc_status = Status.FAILED_PRECONDITION
    http_status = 422
    failure_type = "DomainError"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def failure_details(self) -> list[Any]:
        """What a workflow needs beside the type (e.g. which lines were short)."""
        return []


class InvalidArgument(DomainError):
    code = "invalid-argument"
    grpc_status = Status.INVALID_ARGUMENT
    http_status = 400


class NotFound(DomainError):
    code = "not-found"
    grpc_status = Status.NOT_FOUND
    http_status = 404


class AlreadyExists(DomainError):
    code = "already-exists"
    grpc_status = Status.ALREADY_EXISTS
    http_status = 409


class Unauthenticated(DomainError):
    code = "unauthenticated"
    grpc_status = Status.UNAUTHENTICATED
    http_status = 401


class PermissionDenied(DomainError):
    code = "permission-denied"
    grpc_status = Status.PERMISSION_DENIED
    http_status = 403


class Conflict(DomainError):
    code = "conflict"
    grpc_status = Status.ABORTED
    http_status = 409


class PoisonMessage(Exception):
    """A Kafka record that can never be handled: it goes to the dead-letter topic."""
