-- Password resets: one row per reset link mailed. Only the SHA-256 digest of the link's
-- token is kept; used_at is set when it is redeemed, or when another link of the same user
-- is, so each works once. Instants are Unix seconds like everywhere else.

CREATE TABLE password_resets (
    digest      TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    account_id  TEXT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX password_resets_by_user ON password_resets (user_id, used_at);
