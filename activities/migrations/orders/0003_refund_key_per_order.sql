-- depends: 0002_orders

-- A refund key (the customer's Idempotency-Key, or "cancel") names one refund of
-- one order. As the whole primary key it collided across orders: the second
-- order cancelled after completion found "cancel" taken, and its refund (made
-- at the PSP) never reached the projection.
ALTER TABLE order_refunds DROP CONSTRAINT order_refunds_pkey;
ALTER TABLE order_refunds ADD PRIMARY KEY (order_id, refund_key);
