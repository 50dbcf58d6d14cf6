"""Audit's domain errors. The gRPC API maps each to its status via agora.errors."""

from __future__ import annotations

from agora.errors import InvalidArgument


class InvalidQuery(InvalidArgument):
    """A query's parameters make no sense (bad cursor, empty range, half an aggregate)."""

    code = "invalid-query"


class SigningKeyError(RuntimeError):
    """The checkpoint signing key is missing or malformed."""
