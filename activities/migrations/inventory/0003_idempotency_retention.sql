-- depends: 0002_stock

-- idempotency_keys gains two rows or more per order (reserve, then commit or
-- release) and nothing removed them. The reservation sweep now prunes rows older
-- than the retention (workers/inventory/idempotency.py, RETENTION_DAYS), oldest
-- first through this index. A plain CREATE INDEX (it blocks writes while it builds):
-- this ships before any deployment holds a large table. A later index on a big
-- table would be built CONCURRENTLY, in a migration marked `-- transactional: false`.

CREATE INDEX inventory_idempotency_keys_created ON idempotency_keys (created_at);
