-- Accounts (tenants), their users, OAuth clients, signing keys and the audit trail.
-- Ids are TEXT, instants are BIGINT Unix seconds: the same shape on SQLite and PostgreSQL.

CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE users (
    id                TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    email             TEXT NOT NULL,
    email_normalized  TEXT NOT NULL UNIQUE,
    name              TEXT NOT NULL,
    role              TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
    status            TEXT NOT NULL CHECK (status IN ('active', 'disabled', 'suspended')),
    password_hash     TEXT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE INDEX users_by_account ON users (account_id, created_at);

CREATE TABLE oauth_clients (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL,
    secret_digest  TEXT,
    grants         TEXT NOT NULL,
    scopes         TEXT NOT NULL,
    redirect_uris  TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid             TEXT PRIMARY KEY,
    alg             TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('current', 'next', 'previous', 'retired')),
    private_sealed  TEXT NOT NULL,
    public_jwk      TEXT NOT NULL,
    created_at      BIGINT NOT NULL
);

CREATE TABLE audit_entries (
    id          TEXT PRIMARY KEY,
    account_id  TEXT,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    detail      TEXT,
    ip          TEXT,
    at          BIGINT NOT NULL
);
CREATE INDEX audit_by_account ON audit_entries (account_id, at);
