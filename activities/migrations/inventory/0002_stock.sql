-- Stock per sku (one warehouse). available = on_hand - reserved is derived, never stored,
-- so it cannot drift; the CHECKs make overselling impossible even for a buggy statement.
CREATE TABLE stock (
    sku        text        PRIMARY KEY,
    on_hand    bigint      NOT NULL CHECK (on_hand >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    -- Bumped by every change; events carry it so consumers can drop stale levels.
    version    bigint      NOT NULL DEFAULT 1,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT stock_reserved_within_on_hand CHECK (reserved <= on_hand)
);

-- A hold on stock for an order. 'released' rows without lines are tombstones: a
-- release that arrived before its reserve, so a late reserve cannot hold stock.
CREATE TABLE reservations (
    reservation_id text        PRIMARY KEY,
    order_id       text        NOT NULL DEFAULT '',
    status         text        NOT NULL
        CHECK (status IN ('held', 'committed', 'released', 'expired')),
    expires_at     timestamptz NOT NULL,
    release_reason text        NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT now(),
    settled_at     timestamptz
);
CREATE INDEX reservations_held_expiry ON reservations (expires_at) WHERE status = 'held';

CREATE TABLE reservation_lines (
    reservation_id text   NOT NULL REFERENCES reservations ON DELETE CASCADE,
    sku            text   NOT NULL REFERENCES stock,
    quantity       bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (reservation_id, sku)
);

-- The first result of every keyed operation, written in the operation's own
-- transaction: a retried call returns it instead of acting again. `fingerprint`
-- is a digest of the request, so one key reused for a different request is refused.
CREATE TABLE idempotency_keys (
    operation   text        NOT NULL,
    key         text        NOT NULL,
    fingerprint text        NOT NULL,
    result      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (operation, key)
);
