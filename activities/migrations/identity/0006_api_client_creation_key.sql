-- depends: 0005_outbox_sent

-- The Idempotency-Key an API client was created with, scoped to its owner, and
-- a digest of what that creation asked for (name and scopes): a retried
-- CreateApiClient with the same key answers the first creation again instead of
-- minting a second client whose secret nobody ever received
-- (workers/identity/apiclients.py). Clients created before these columns, or
-- without a key, have none.
ALTER TABLE api_clients ADD COLUMN creation_key text, ADD COLUMN creation_digest text;
CREATE UNIQUE INDEX api_clients_creation_key ON api_clients (owner_account_id, creation_key)
    WHERE creation_key IS NOT NULL;
