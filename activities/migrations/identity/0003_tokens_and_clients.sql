-- depends: 0002_accounts

-- Ed25519 signing keys. The private part is AES-GCM-encrypted under the KEK
-- (kek_id names which one); exactly one key is current. A retired key still
-- verifies until verify_until (its last token's expiry plus leeway), then is pruned.
CREATE TABLE signing_keys (
    kid            text PRIMARY KEY,
    public_x       text NOT NULL,
    private_sealed bytea NOT NULL,
    kek_id         text NOT NULL,
    is_current     boolean NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    retired_at     timestamptz,
    verify_until   timestamptz
);
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (is_current) WHERE is_current;

-- A session: one password sign-in and every refresh token rotated from it.
-- family_id is the `sid` claim of its access tokens.
CREATE TABLE token_families (
    family_id     uuid PRIMARY KEY,
    account_id    uuid NOT NULL REFERENCES accounts (account_id),
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    revoke_reason text
);
CREATE INDEX token_families_account ON token_families (account_id);

-- Refresh tokens are opaque; only their SHA-256 is kept. used_at is set when the
-- token is exchanged: presenting it again is reuse and revokes the family.
CREATE TABLE refresh_tokens (
    token_hash bytea PRIMARY KEY,
    family_id  uuid NOT NULL REFERENCES token_families (family_id),
    issued_at  timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

-- Machine accounts. The secret is kept only sealed under the KEK.
CREATE TABLE api_clients (
    client_id        uuid PRIMARY KEY,
    name             text NOT NULL,
    owner_account_id uuid REFERENCES accounts (account_id),
    scopes           text[] NOT NULL,
    secret_sealed    bytea NOT NULL,
    kek_id           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    revoked_at       timestamptz,
    revoked_by       text
);
CREATE INDEX api_clients_owner ON api_clients (owner_account_id, created_at);
