-- The order projection: what the saga has done to each order, written by its activities.
CREATE TABLE orders (
    order_id         uuid PRIMARY KEY,
    customer_id      text        NOT NULL,
    idempotency_key  text        NOT NULL,
    status           text        NOT NULL,
    currency         text        NOT NULL,
    total_minor      bigint      NOT NULL CHECK (total_minor >= 0),
    refunded_minor   bigint      NOT NULL DEFAULT 0 CHECK (refunded_minor >= 0),
    reservation_id   text        NOT NULL DEFAULT '',
    payment_id       text        NOT NULL DEFAULT '',
    workflow_id      text        NOT NULL,
    run_id           text        NOT NULL DEFAULT '',
    reason           text        NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, idempotency_key)
);
-- A customer's orders, newest first, for keyset pagination.
CREATE INDEX orders_by_customer ON orders (customer_id, created_at DESC, order_id DESC);

CREATE TABLE order_lines (
    order_id          uuid    NOT NULL REFERENCES orders ON DELETE CASCADE,
    line_no           int     NOT NULL,
    sku               text    NOT NULL,
    title             text    NOT NULL,
    quantity          int     NOT NULL CHECK (quantity > 0),
    unit_price_minor  bigint  NOT NULL CHECK (unit_price_minor >= 0),
    line_total_minor  bigint  NOT NULL CHECK (line_total_minor >= 0),
    PRIMARY KEY (order_id, line_no)
);

-- Each transition once: the key makes a retried activity a no-op.
CREATE TABLE order_status_history (
    order_id        uuid        NOT NULL REFERENCES orders ON DELETE CASCADE,
    transition_key  text        NOT NULL,
    status          text        NOT NULL,
    reason          text        NOT NULL DEFAULT '',
    changed_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, transition_key)
);

CREATE TABLE order_refunds (
    refund_key    text PRIMARY KEY,
    order_id      uuid        NOT NULL REFERENCES orders ON DELETE CASCADE,
    refund_id     text        NOT NULL,
    amount_minor  bigint      NOT NULL CHECK (amount_minor > 0),
    reason        text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now()
);
