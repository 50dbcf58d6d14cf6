-- depends: 0002_log

-- Sequences start at 1 (the head starts at 0, genesis). A row at 0 or below was
-- accepted from anyone with INSERT: outside what verification walks, it would come
-- first in its aggregate's queries and exports. The primary key (log_sequence,
-- recorded_at) cannot refuse a second row with a sequence; verification names that.
--
-- A CHECK added to the partitioned table is added to (and validated on) every
-- existing partition, and partitions made later inherit it. As the table's owner,
-- like 0002_log.

SET LOCAL ROLE audit_owner;

ALTER TABLE audit_log ADD CONSTRAINT audit_log_sequence_positive CHECK (log_sequence > 0);

RESET ROLE;
