-- Payment intents, their idempotency records and the double-entry ledger (docs/payments.md).
-- Card data is never stored beyond the PSP's token, the brand and the last four digits.
CREATE TABLE payment_intents (
    payment_id       uuid PRIMARY KEY,
    order_id         text        NOT NULL,
    customer_id      text        NOT NULL DEFAULT '',
    currency         text        NOT NULL,
    -- pending (authorize in flight), requires_action, declined, authorized,
    -- partially_captured, captured, voided, partially_refunded, refunded
    status           text        NOT NULL,
    requested_minor  bigint      NOT NULL DEFAULT 0,
    authorized_minor bigint      NOT NULL DEFAULT 0,
    captured_minor   bigint      NOT NULL DEFAULT 0,
    released_minor   bigint      NOT NULL DEFAULT 0,
    refunded_minor   bigint      NOT NULL DEFAULT 0,
    card_token       text        NOT NULL DEFAULT '',
    card_brand       text        NOT NULL DEFAULT '',
    card_last4       text        NOT NULL DEFAULT '',
    psp_reference    text        NOT NULL DEFAULT '',
    decline_reason   text        NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (card_last4 ~ '^([0-9]{4})?$'),
    CHECK (requested_minor >= 0 AND authorized_minor >= 0 AND captured_minor >= 0
           AND released_minor >= 0 AND refunded_minor >= 0),
    -- The money limits, enforced by the database as well as by the code.
    CHECK (captured_minor + released_minor <= authorized_minor),
    CHECK (refunded_minor <= captured_minor)
);
CREATE INDEX payment_intents_order ON payment_intents (order_id, created_at DESC);

-- One row per idempotency key: the operation's parameters (hashed) and its first
-- result, written in the same transaction as the state change it reports.
CREATE TABLE payment_operations (
    idempotency_key text PRIMARY KEY,
    operation       text        NOT NULL,
    payment_id      uuid        NOT NULL REFERENCES payment_intents (payment_id),
    request_hash    text        NOT NULL,
    outcome         text        NOT NULL,  -- ok | declined | requires_action
    result          jsonb       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payment_operations_payment ON payment_operations (payment_id);

-- Double-entry ledger: one movement = several entries summing to zero.
-- amount_minor > 0 is a debit, < 0 a credit.
CREATE TABLE ledger_entries (
    entry_id     bigserial PRIMARY KEY,
    movement_id  uuid        NOT NULL,
    payment_id   uuid        NOT NULL REFERENCES payment_intents (payment_id),
    kind         text        NOT NULL CHECK (kind IN ('authorize', 'capture', 'void', 'refund')),
    account      text        NOT NULL CHECK (account IN
                   ('customer_funds', 'authorized_holds', 'merchant_revenue', 'refunds')),
    amount_minor bigint      NOT NULL CHECK (amount_minor <> 0),
    currency     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_payment ON ledger_entries (payment_id);
CREATE INDEX ledger_entries_movement ON ledger_entries (movement_id);

-- A movement that does not balance cannot commit: checked at commit time, after
-- all of the movement's entries are in.
CREATE FUNCTION ledger_movement_balanced() RETURNS trigger AS $$
DECLARE
    net bigint;
BEGIN
    SELECT coalesce(sum(amount_minor), 0) INTO net
      FROM ledger_entries WHERE movement_id = NEW.movement_id;
    IF net <> 0 THEN
        RAISE EXCEPTION 'ledger movement % does not balance (net %)', NEW.movement_id, net
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE CONSTRAINT TRIGGER ledger_movement_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_movement_balanced();

-- The ledger is append-only: corrections are new movements, never edits.
CREATE FUNCTION ledger_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'ledger_entries is append-only';
END $$ LANGUAGE plpgsql;
CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only();
