"""The boundary to a payment service provider (PSP): what payments needs from one.

The service depends only on `PaymentServiceProvider`; `psp_sim.SimulatedPsp`
implements it for local runs and tests, and a real PSP's adapter would too.
Card numbers never cross this boundary inward: the PSP tokenizes them (on the
client, for a real PSP) and the service handles only the token, the brand and
the last four digits.

Every call carries a PSP idempotency key; calling twice with the same key must
return the first answer and move money once. The keys payments uses:
the payment id for an authorization, `<operation>:<caller's key>` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Card:
    """What may be known of a card: its token, brand and last four digits."""

    token: str
    brand: str
    last4: str


@dataclass(frozen=True)
class Authorized:
    reference: str


@dataclass(frozen=True)
class Declined:
    reason: str  # "insufficient_funds", "card_expired", ...
    message: str


@dataclass(frozen=True)
class ActionRequired:
    """The cardholder must authenticate (3-D-Secure-like) before the PSP authorizes."""

    next_action_url: str


AuthorizationOutcome = Authorized | Declined | ActionRequired


@dataclass(frozen=True)
class Receipt:
    """The PSP's acknowledgement of a capture, void or refund."""

    reference: str
    # A void's: what it released of the authorization, as the PSP counts it (None
    # from a PSP that does not say). Less than payments has open when a capture the
    # PSP made is not recorded yet.
    released_minor: int | None = None


class PspTransientError(Exception):
    """The PSP could not answer now (network, overload); the same call may succeed later."""


class PspRejected(Exception):
    """The PSP refuses the call for good (unknown or cancelled authorization, over the limit)."""


class PspKeyReused(PspRejected):
    """The operation's idempotency key was used before for another request (another
    authorization, amount or currency): a PSP replays the first result only for the
    same request, as a real one does (e.g. Stripe's idempotency errors)."""


class InvalidCardToken(ValueError):
    """Not a token of this PSP. The message never repeats the input (it may be a card number)."""


class PaymentServiceProvider(Protocol):
    def card(self, token: str) -> Card:
        """The card behind a token; raises InvalidCardToken."""
        ...

    async def authorize(
        self, *, key: str, card_token: str, amount_minor: int, currency: str
    ) -> AuthorizationOutcome: ...

    async def capture(
        self, *, key: str, authorization_key: str, amount_minor: int, currency: str
    ) -> Receipt: ...

    async def void(self, *, key: str, authorization_key: str) -> Receipt:
        """Release what is left of the authorization, or cancel it if it has not happened
        yet; the receipt says how much was released."""
        ...

    async def refund(
        self, *, key: str, authorization_key: str, amount_minor: int, currency: str
    ) -> Receipt: ...
