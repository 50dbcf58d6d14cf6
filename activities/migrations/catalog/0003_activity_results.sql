-- The result of every write activity that committed, keyed by the activity
-- execution (workflow run id and activity id, the same for all its attempts).
-- An attempt retried after its commit (a worker died before reporting it)
-- returns this result instead of writing again: without it, a retry that came
-- after another admin's write would write its older data over it.
-- Rows are needed only while their workflow can still retry the activity;
-- writes prune those older than 30 days (catalog_activity_results_created).
CREATE TABLE activity_results (
    attempt_key text        PRIMARY KEY,
    result      jsonb       NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX catalog_activity_results_created ON activity_results (created_at);
