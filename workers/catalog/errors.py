"""Catalog's business rejections, as domain errors (gRPC) and ApplicationError types (Temporal).

The types are ones the gateway's failure table already maps (gateway/failures.py),
so an admin write rejected by an activity answers the same problem as a read.
"""

from __future__ import annotations

from agora.errors import AlreadyExists, Conflict, InvalidArgument, NotFound

# ApplicationError.type raised by catalog activities and workflows.
NOT_FOUND = "NotFound"
ALREADY_EXISTS = "AlreadyExists"
CONFLICT = "Conflict"
INVALID = "InvalidArgument"


class ProductNotFound(NotFound):
    code = "product-not-found"


class ProductExists(AlreadyExists):
    code = "product-exists"


class InvalidProduct(InvalidArgument):
    code = "invalid-product"


class VersionConflict(Conflict):
    code = "version-conflict"
