-- depends: 0003_sequence_positive

-- One row per log row, for the whole log: its sequence (primary key) and its event
-- id (unique). The partitioned log's own primary key (log_sequence, recorded_at)
-- took a second row for an old sequence under another recorded_at, and
-- audit_event_ids took any id from the service's role, so a made-up event could be
-- planted below the latest checkpoint (outside every walk from it) and a future
-- event's id planted to have the real event dropped as a redelivery.
--
-- Only a trigger writes audit_entries: a statement-level AFTER INSERT trigger on
-- audit_log (SECURITY DEFINER, owned by audit_owner) inserts a row per inserted log
-- row from its transition table, one INSERT per append. So an event id is recorded
-- only for a row the log holds, and a second row for a sequence or an event id
-- fails with its insert (unique_violation), whoever inserts it short of a superuser
-- with triggers off. The role `audit` may read audit_entries, not write it. A
-- statement trigger fires for inserts through audit_log, the only way in for
-- `audit`: a partition holds no grant, only its owner can insert into it by name.
--
-- audit_event_ids is no longer written (INSERT revoked) nor read: it stays as it
-- was, since whatever was planted in it is evidence. The new table is filled from
-- the rows the log holds, not from it: an id no row vouches for is not carried
-- over, nor are the ids of months already detached. Where the log already holds a
-- second row for a sequence or an id, the first in key order is entered and the
-- other is left to verification, which counts the log's rows (verification.py).
--
-- The trigger is created before the backfill: CREATE TRIGGER locks audit_log
-- against inserts until this migration commits, so no append falls between them.
-- A process still running the code before this migration fails its appends (it
-- writes audit_event_ids) and retries them until it is replaced; nothing is lost.
-- As the tables' owner, like 0002_log.

SET LOCAL ROLE audit_owner;

CREATE TABLE audit_entries (
    log_sequence bigint PRIMARY KEY,
    event_id     uuid   NOT NULL UNIQUE
);

CREATE TRIGGER audit_entries_no_change BEFORE UPDATE OR DELETE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_entries_no_truncate BEFORE TRUNCATE ON audit_entries
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();

CREATE FUNCTION audit_record_entries() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO audit_entries (log_sequence, event_id)
    SELECT log_sequence, event_id FROM appended;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION audit_record_entries() FROM PUBLIC;

CREATE TRIGGER audit_log_entries AFTER INSERT ON audit_log
    REFERENCING NEW TABLE AS appended
    FOR EACH STATEMENT EXECUTE FUNCTION audit_record_entries();

INSERT INTO audit_entries (log_sequence, event_id)
SELECT log_sequence, event_id FROM audit_log ORDER BY log_sequence, recorded_at
ON CONFLICT DO NOTHING;

REVOKE ALL ON audit_entries FROM PUBLIC;
GRANT SELECT ON audit_entries TO audit;
-- audit keeps its INSERT on audit_event_ids for one release: during a rolling
-- deploy the pods still on the code before this migration write it with every
-- append. Nothing reads it any more, so an id planted there hides nothing. A later
-- migration revokes it once no such pod runs.

RESET ROLE;
