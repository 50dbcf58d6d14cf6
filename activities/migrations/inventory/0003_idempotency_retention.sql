-- depends: 0002_stock
-- transactional: false

-- idempotency_keys gains two rows or more per order (reserve, then commit or
-- release) and nothing removed them. The reservation sweep now prunes rows older
-- than the retention (workers/inventory/idempotency.py, RETENTION_DAYS), oldest
-- first through this index. Built CONCURRENTLY, so reserves, commits and releases go
-- on while a large table is indexed; that cannot run in a transaction (hence the
-- directive above). A build that failed half-way leaves an INVALID index and this
-- migration unapplied: the next start drops it and builds it again.

DROP INDEX CONCURRENTLY IF EXISTS inventory_idempotency_keys_created;

CREATE INDEX CONCURRENTLY inventory_idempotency_keys_created ON idempotency_keys (created_at);
