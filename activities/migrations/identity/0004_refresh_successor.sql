-- depends: 0003_tokens_and_clients

-- The token a refresh token was exchanged for (its hash). A client whose refresh
-- answer was lost presents the old token again: within the reuse grace, and while
-- this successor was never used, it is exchanged again instead of revoking the
-- session (workers/identity/sessions.py). Tokens exchanged before this column
-- have none, and a second presentation of one revokes its family as before.
ALTER TABLE refresh_tokens ADD COLUMN replaced_by bytea;
