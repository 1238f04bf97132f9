-- Members' permissions and seats (issue #9).
--
-- A user's grants are kept on the user row as JSON in the API shape
-- (`[{"permission": "invoices:read", "companies": "all"}, …]`): they are read with the
-- user on every token and REST check, and written whole by `PUT …/permissions`.
-- `status_reason` says why a user is not active when the system decided it
-- (`seats_lapsed`), so a renewal restores exactly those.
ALTER TABLE users ADD COLUMN permissions TEXT NOT NULL DEFAULT '[]';
ALTER TABLE users ADD COLUMN status_reason TEXT;

-- Additional-user licences bought for an account. `paid_at` is NULL while the payment is
-- pending; a paid grant counts until `valid_until`. `reminded_days` is the smallest
-- reminder already sent (30, then 7) for the current `valid_until`.
CREATE TABLE seat_grants (
    id                   TEXT PRIMARY KEY,
    account_id           TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    quantity             BIGINT NOT NULL CHECK (quantity > 0),
    order_reference      TEXT NOT NULL,
    extend_other_grants  INTEGER NOT NULL DEFAULT 0,
    paid_at              BIGINT,
    valid_until          BIGINT,
    reminded_days        BIGINT,
    created_at           BIGINT NOT NULL,
    updated_at           BIGINT NOT NULL,
    UNIQUE (account_id, order_reference)
);
CREATE INDEX seat_grants_valid_until ON seat_grants (valid_until);
CREATE INDEX users_account_status ON users (account_id, status, role);
