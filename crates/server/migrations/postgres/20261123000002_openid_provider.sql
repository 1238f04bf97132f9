-- Ponte as an OpenID Provider: browser clients, consents, refresh-token families, key rotation.

ALTER TABLE oauth_clients ADD COLUMN post_logout_redirect_uris TEXT NOT NULL DEFAULT '[]';
ALTER TABLE oauth_clients ADD COLUMN first_party INTEGER NOT NULL DEFAULT 0;

ALTER TABLE signing_keys ADD COLUMN activated_at BIGINT;
ALTER TABLE signing_keys ADD COLUMN deactivated_at BIGINT;

CREATE TABLE consents (
    user_id     TEXT NOT NULL,
    client_id   TEXT NOT NULL,
    scopes      TEXT NOT NULL,
    granted_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_id)
);

-- One row per refresh-token family: the token in use, the one just before it (for a
-- short retry grace), and whether the family was revoked (reuse, logout, reset).
CREATE TABLE refresh_families (
    id               TEXT PRIMARY KEY,
    client_id        TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    account_id       TEXT NOT NULL,
    scope            TEXT NOT NULL,
    sid              TEXT,
    auth_time        BIGINT NOT NULL,
    amr              TEXT NOT NULL,
    current_digest   TEXT NOT NULL,
    previous_digest  TEXT,
    rotated_at       BIGINT NOT NULL,
    created_at       BIGINT NOT NULL,
    expires_at       BIGINT NOT NULL,
    revoked_at       BIGINT
);
CREATE INDEX refresh_by_user ON refresh_families (user_id);
CREATE INDEX refresh_by_sid ON refresh_families (sid);
