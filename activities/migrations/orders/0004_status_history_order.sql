-- depends: 0003_refund_key_per_order

-- A status change is stamped when it is written, after its transaction took the
-- order's row lock (clock_timestamp), not when the transaction began (now()):
-- two refunds of one order that began in one order and locked in the other were
-- listed in the wrong one. `seq` orders changes stamped alike.
ALTER TABLE order_status_history ALTER COLUMN changed_at SET DEFAULT clock_timestamp();
ALTER TABLE order_status_history ADD COLUMN seq bigserial;
