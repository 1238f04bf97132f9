-- Links between Ponte users and upstream identities (the company-wide ID).
-- (issuer, subject) is unique: one upstream identity belongs to one user.
-- (user_id, provider) is unique: one identity per provider per user.

CREATE TABLE external_identities (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    account_id     TEXT NOT NULL,
    provider       TEXT NOT NULL,
    issuer         TEXT NOT NULL,
    subject        TEXT NOT NULL,
    email          TEXT,
    name           TEXT,
    linked_at      BIGINT NOT NULL,
    last_login_at  BIGINT,
    UNIQUE (issuer, subject),
    UNIQUE (user_id, provider)
);
