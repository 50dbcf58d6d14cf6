"""The public API's routes, one module per area; `all_routes()` is the whole table."""

from __future__ import annotations

from gateway.routing import Route


def all_routes() -> list[Route]:
    from gateway.routes import (
        accounts,
        admin,
        admin_orders,
        audit,
        auth,
        catalog,
        codec,
        inventory,
        meta,
        orders,
        payments,
        psp,
        search,
    )

    return [
        *accounts.ROUTES,
        *auth.ROUTES,
        *admin.ROUTES,
        *meta.ROUTES,
        *catalog.ROUTES,
        *search.ROUTES,
        *inventory.ROUTES,
        *orders.ROUTES,
        *payments.ROUTES,
        *psp.ROUTES,
        *audit.ROUTES,
        *admin_orders.ROUTES,
        *codec.ROUTES,
    ]
