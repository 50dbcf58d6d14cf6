"""Amounts, in minor units of their currency (cents), as every service bounds them."""

from __future__ import annotations

# The largest amount payments takes, so the largest order total and refund: far above
# any real payment, far below PostgreSQL's bigint and int64 (sums of refunds fit). An
# amount beyond it is refused as invalid, never left to fail in a database (retried as
# if transient) or at payments after the order was accepted.
MAX_AMOUNT_MINOR = 10**15
