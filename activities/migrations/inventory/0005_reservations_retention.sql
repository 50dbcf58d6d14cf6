-- depends: 0004_outbox_sent
-- transactional: false

-- Every order left a reservation and its lines (and every early release a
-- tombstone), kept for good. The reservation sweep now prunes settled ones past the
-- retention of the idempotency records (workers/inventory/reservations.py, `prune`),
-- oldest first through this index; their lines go with them (ON DELETE CASCADE).
-- Built CONCURRENTLY like 0003: reserves go on while a large table is indexed.

DROP INDEX CONCURRENTLY IF EXISTS reservations_settled;

CREATE INDEX CONCURRENTLY reservations_settled ON reservations (settled_at)
    WHERE settled_at IS NOT NULL;
