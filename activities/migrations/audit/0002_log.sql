-- The audit log (the service emits no events, so it has no outbox): append-only, hash-chained, partitioned by month of recorded_at.
--
-- Owned by audit_owner (a NOLOGIN role; the stack creates it). The service's login
-- role `audit` is a NOINHERIT member: it SET ROLEs here to create the tables and
-- otherwise holds only INSERT and SELECT on the log (the stack grants both roles
-- the public schema). Triggers reject UPDATE, DELETE
-- and TRUNCATE for everyone, the owner included.

SET LOCAL ROLE audit_owner;

CREATE FUNCTION audit_reject_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit log is append-only: % on % rejected', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END $$;

-- Every event ever recorded, once (the partitioned log cannot hold a global
-- unique index on event_id: the partition key would have to be part of it).
CREATE TABLE audit_event_ids (
    event_id     uuid   PRIMARY KEY,
    log_sequence bigint NOT NULL
);

CREATE TABLE audit_log (
    log_sequence       bigint      NOT NULL,
    recorded_at        timestamptz NOT NULL,
    event_id           uuid        NOT NULL,
    event_type         text        NOT NULL,
    payload_type       text        NOT NULL,
    aggregate_type     text        NOT NULL,
    aggregate_id       text        NOT NULL,
    aggregate_sequence bigint      NOT NULL,
    producer           text        NOT NULL,
    occurred_at        timestamptz NOT NULL,
    trace_id           text        NOT NULL,
    workflow_id        text        NOT NULL,
    run_id             text        NOT NULL,
    topic              text        NOT NULL,
    canonical          bytea       NOT NULL,
    prev_hash          bytea       NOT NULL,
    hash               bytea       NOT NULL,
    PRIMARY KEY (log_sequence, recorded_at)
) PARTITION BY RANGE (recorded_at);

CREATE INDEX audit_log_aggregate ON audit_log (aggregate_type, aggregate_id, log_sequence);
CREATE INDEX audit_log_trace ON audit_log (trace_id, log_sequence) WHERE trace_id <> '';
CREATE INDEX audit_log_workflow ON audit_log (workflow_id, log_sequence) WHERE workflow_id <> '';
CREATE INDEX audit_log_occurred ON audit_log (occurred_at, log_sequence);

-- Row triggers on a partitioned table apply to every partition; TRUNCATE triggers
-- do not (a partition can be truncated by name), so each partition gets its own.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
-- Statement-level too: an UPDATE or DELETE is refused even when it matches no row.
-- (Row triggers are cloned onto every partition; these cover the parent table.)
CREATE TRIGGER audit_log_no_change_statement BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();

-- Catches a row whose month has no partition yet (should not happen: partitions
-- are made ahead), so an insert never fails for want of one.
CREATE TABLE audit_log_default PARTITION OF audit_log DEFAULT;
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log_default
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();

-- Creates the monthly partitions from this month to `months_ahead` ahead. SECURITY
-- DEFINER: the service's role may add partitions (never drop or alter them).
CREATE FUNCTION audit_ensure_partitions(months_ahead int) RETURNS int
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    first_month date := date_trunc('month', now() AT TIME ZONE 'UTC')::date;
    month date;
    name text;
    made int := 0;
BEGIN
    FOR i IN 0..months_ahead LOOP
        month := (first_month + make_interval(months => i))::date;
        name := format('audit_log_%s', to_char(month, 'YYYY_MM'));
        IF to_regclass(name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF audit_log FOR VALUES FROM (%L) TO (%L)',
                name,
                (month::timestamp AT TIME ZONE 'UTC'),
                ((month + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
            EXECUTE format(
                'CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON %I'
                ' FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change()', name);
            made := made + 1;
        END IF;
    END LOOP;
    RETURN made;
END $$;
-- PERFORM, not SELECT: yoyo prints a statement's rows to stdout, among the JSON lines.
DO $$ BEGIN PERFORM audit_ensure_partitions(2); END $$;

-- The head of the chain: one row, locked FOR UPDATE by every append, which makes
-- appending serial across processes (Kafka partitions interleave, so the chain's
-- order is the audit's own recording order).
CREATE TABLE audit_chain_head (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    log_sequence bigint  NOT NULL,
    hash         bytea   NOT NULL
);
INSERT INTO audit_chain_head (log_sequence, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

-- Last sequence seen per aggregate, to detect gaps and reordering.
CREATE TABLE audit_aggregate_heads (
    producer       text   NOT NULL,
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    last_sequence  bigint NOT NULL,
    PRIMARY KEY (producer, aggregate_type, aggregate_id)
);

CREATE TABLE audit_sequence_anomalies (
    log_sequence   bigint      PRIMARY KEY,
    producer       text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    kind           text        NOT NULL CHECK (kind IN ('gap', 'reordered')),
    expected       bigint      NOT NULL,
    got            bigint      NOT NULL,
    detected_at    timestamptz NOT NULL DEFAULT now()
);

-- Signed checkpoints of the chain head (append-only as well).
CREATE TABLE audit_checkpoints (
    id              bigserial   PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    log_sequence    bigint      NOT NULL,
    head_hash       bytea       NOT NULL,
    signed_at       timestamptz NOT NULL,
    key_id          text        NOT NULL,
    signature       bytea       NOT NULL
);
CREATE INDEX audit_checkpoints_sequence ON audit_checkpoints (log_sequence);

CREATE TRIGGER audit_event_ids_no_update BEFORE UPDATE OR DELETE ON audit_event_ids
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_event_ids_no_truncate BEFORE TRUNCATE ON audit_event_ids
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit_reject_change();

REVOKE ALL ON audit_log, audit_event_ids, audit_checkpoints FROM PUBLIC;
GRANT SELECT, INSERT ON audit_log, audit_event_ids, audit_checkpoints TO audit;
GRANT USAGE ON SEQUENCE audit_checkpoints_id_seq TO audit;
GRANT SELECT, UPDATE ON audit_chain_head TO audit;
GRANT SELECT, INSERT, UPDATE ON audit_aggregate_heads TO audit;
GRANT SELECT, INSERT ON audit_sequence_anomalies TO audit;
REVOKE ALL ON FUNCTION audit_ensure_partitions(int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION audit_ensure_partitions(int) TO audit;

RESET ROLE;
