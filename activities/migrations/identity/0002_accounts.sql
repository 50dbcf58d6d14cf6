-- Accounts: one row per person or machine owner; email unique case-insensitively.
CREATE TABLE accounts (
    account_id    uuid PRIMARY KEY,
    email         text NOT NULL,
    display_name  text NOT NULL DEFAULT '',
    password_hash text NOT NULL,
    roles         text[] NOT NULL DEFAULT '{customer}',
    scopes        text[] NOT NULL DEFAULT '{}',
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accounts_email ON accounts (lower(email));
