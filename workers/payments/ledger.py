"""The double-entry ledger: every money movement is a set of entries summing to zero.

Chart of accounts (docs/payments.md). An entry's amount is signed, debit
positive; an account's balance says how much of the customers' money sits there.

| account            | balance per intent                          |
|--------------------|---------------------------------------------|
| `customer_funds`   | -(authorized - released - refunded): what has left the customer |
| `authorized_holds` | authorized - captured - released: held, not yet taken |
| `merchant_revenue` | captured: taken by the merchant (gross)     |
| `refunds`          | -refunded: contra-revenue, given back       |

Movements:

| kind      | entries                                         |
|-----------|-------------------------------------------------|
| authorize | authorized_holds +a, customer_funds -a          |
| capture   | merchant_revenue +a, authorized_holds -a        |
| void      | customer_funds +a, authorized_holds -a          |
| refund    | customer_funds +a, refunds -a                   |

The database refuses a movement that does not balance (a deferred constraint
trigger) and any update or delete of an entry; `check` proves the rest: the
whole ledger nets to zero per currency and each intent's balances are exactly
what its amounts say.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

import asyncpg


class Account(StrEnum):
    CUSTOMER_FUNDS = "customer_funds"
    AUTHORIZED_HOLDS = "authorized_holds"
    MERCHANT_REVENUE = "merchant_revenue"
    REFUNDS = "refunds"


class Movement(StrEnum):
    AUTHORIZE = "authorize"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"


# kind -> (debited account, credited account)
_LEGS: dict[Movement, tuple[Account, Account]] = {
    Movement.AUTHORIZE: (Account.AUTHORIZED_HOLDS, Account.CUSTOMER_FUNDS),
    Movement.CAPTURE: (Account.MERCHANT_REVENUE, Account.AUTHORIZED_HOLDS),
    Movement.VOID: (Account.CUSTOMER_FUNDS, Account.AUTHORIZED_HOLDS),
    Movement.REFUND: (Account.CUSTOMER_FUNDS, Account.REFUNDS),
}


@dataclass(frozen=True)
class Entry:
    account: Account
    amount_minor: int  # debit > 0, credit < 0


def entries_for(kind: Movement, amount_minor: int) -> list[Entry]:
    """The balanced entries of one movement of `amount_minor` (> 0)."""
    if amount_minor <= 0:
        raise ValueError("a movement moves a positive amount")
    debit, credit = _LEGS[kind]
    return [Entry(debit, amount_minor), Entry(credit, -amount_minor)]


def balances(entries: Iterable[Entry]) -> dict[Account, int]:
    totals = dict.fromkeys(Account, 0)
    for entry in entries:
        totals[entry.account] += entry.amount_minor
    return totals


def expected_balances(
    *, authorized: int, captured: int, released: int, refunded: int
) -> dict[Account, int]:
    """What an intent's account balances must be, given its amounts."""
    return {
        Account.CUSTOMER_FUNDS: -(authorized - released - refunded),
        Account.AUTHORIZED_HOLDS: authorized - captured - released,
        Account.MERCHANT_REVENUE: captured,
        Account.REFUNDS: -refunded,
    }


def mismatches(actual: Mapping[Account, int], expected: Mapping[Account, int]) -> list[str]:
    return [
        f"{account}: {actual.get(account, 0)} != expected {want}"
        for account, want in expected.items()
        if actual.get(account, 0) != want
    ]


async def post(
    conn: asyncpg.Connection,
    *,
    movement_id: uuid.UUID,
    payment_id: uuid.UUID,
    kind: Movement,
    amount_minor: int,
    currency: str,
) -> None:
    """Write one movement's entries in the caller's transaction."""
    await conn.executemany(
        "INSERT INTO ledger_entries"
        " (movement_id, payment_id, kind, account, amount_minor, currency)"
        " VALUES ($1, $2, $3, $4, $5, $6)",
        [
            (movement_id, payment_id, str(kind), str(e.account), e.amount_minor, currency)
            for e in entries_for(kind, amount_minor)
        ],
    )


@dataclass
class LedgerReport:
    """Balances per (account, currency) and what the check found wrong."""

    balances: dict[tuple[str, str], int]
    net_by_currency: dict[str, int]
    entry_count: int
    intent_count: int
    problems: list[str] = field(default_factory=list)

    @property
    def balanced(self) -> bool:
        return not self.problems


async def check(
    conn: asyncpg.Connection,
    *,
    payment_id: uuid.UUID | None = None,
    account: str = "",
    currency: str = "",
) -> LedgerReport:
    """Prove the ledger (or one payment's part of it) balanced and consistent with the intents.

    `account` only narrows the balances listed; the proof always covers every
    account in scope.
    """
    scope = "($1::uuid IS NULL OR payment_id = $1) AND ($2 = '' OR currency = $2)"
    rows = await conn.fetch(
        f"SELECT account, currency, sum(amount_minor)::bigint AS balance, count(*) AS n"
        f" FROM ledger_entries WHERE {scope} GROUP BY account, currency",
        payment_id,
        currency,
    )
    report = LedgerReport(balances={}, net_by_currency={}, entry_count=0, intent_count=0)
    nets: dict[str, int] = defaultdict(int)
    for row in rows:
        nets[row["currency"]] += row["balance"]
        report.entry_count += row["n"]
        if not account or row["account"] == account:
            report.balances[(row["account"], row["currency"])] = row["balance"]
    report.net_by_currency = dict(nets)
    report.problems += [f"{cur}: ledger nets to {net}, not 0" for cur, net in nets.items() if net]

    unbalanced = await conn.fetch(
        f"SELECT movement_id, sum(amount_minor)::bigint AS net FROM ledger_entries"
        f" WHERE {scope} GROUP BY movement_id HAVING sum(amount_minor) <> 0",
        payment_id,
        currency,
    )
    report.problems += [f"movement {r['movement_id']} nets to {r['net']}" for r in unbalanced]

    # Each intent's balances in its own currency, and its entries in any other counted
    # apart. Under a currency filter, an intent is in scope when its currency is the
    # filter's or it has entries in it: filtered by the intent's currency alone, a USD
    # intent with (balanced) EUR entries was never compared, and the EUR check passed.
    intents = await conn.fetch(
        """
        WITH b AS (
            SELECT payment_id, account, currency, sum(amount_minor)::bigint AS balance
              FROM ledger_entries WHERE ($1::uuid IS NULL OR payment_id = $1)
             GROUP BY payment_id, account, currency
        )
        SELECT i.payment_id, i.currency, i.authorized_minor, i.captured_minor,
               i.released_minor, i.refunded_minor,
               coalesce(array_agg(b.account) FILTER (WHERE b.currency = i.currency), '{}')
                   AS accounts,
               coalesce(array_agg(b.balance) FILTER (WHERE b.currency = i.currency), '{}')
                   AS amounts,
               count(*) FILTER (WHERE b.currency IS NOT NULL AND b.currency <> i.currency)
                   AS foreign_entries
          FROM payment_intents i LEFT JOIN b USING (payment_id)
         WHERE ($1::uuid IS NULL OR i.payment_id = $1)
           AND ($2 = '' OR i.currency = $2 OR EXISTS (
                SELECT 1 FROM ledger_entries e
                 WHERE e.payment_id = i.payment_id AND e.currency = $2))
         GROUP BY i.payment_id
        """,
        payment_id,
        currency,
    )
    report.intent_count = len(intents)
    for row in intents:
        actual = {Account(a): n for a, n in zip(row["accounts"], row["amounts"], strict=True)}
        expected = expected_balances(
            authorized=row["authorized_minor"],
            captured=row["captured_minor"],
            released=row["released_minor"],
            refunded=row["refunded_minor"],
        )
        found = mismatches(actual, expected)
        if row["foreign_entries"]:
            found.append("entries in another currency than the intent's")
        report.problems += [f"payment {row['payment_id']}: {p}" for p in found]
    return report
