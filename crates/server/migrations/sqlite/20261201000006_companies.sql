-- Companies of an account, their e-invoicing integrations and the collaboration invites
-- that activate them. `data` holds the validated company fields as JSON (the API shape);
-- the VAT number is also a column so one account cannot hold it twice.

CREATE TABLE companies (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    vat_number  TEXT NOT NULL,
    data        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    UNIQUE (account_id, vat_number)
);
CREATE INDEX companies_account ON companies (account_id, created_at);

-- One row per (company, kind). `version` is the compare-and-set guard of every change.
CREATE TABLE integrations (
    company_id        TEXT NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    kind              TEXT NOT NULL,
    account_id        TEXT NOT NULL,
    state             TEXT NOT NULL,
    since             BIGINT NOT NULL,
    last_error        TEXT,
    next_retry_at     BIGINT,
    platform_account  TEXT,
    platform_data     TEXT,
    invitee_user_id   TEXT,
    version           BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    PRIMARY KEY (company_id, kind)
);
CREATE INDEX integrations_account ON integrations (account_id);

-- Only a digest of each invite's token is kept.
CREATE TABLE invites (
    id                TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL,
    company_id        TEXT NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    kind              TEXT NOT NULL,
    invitee_user_id   TEXT NOT NULL,
    email             TEXT NOT NULL,
    email_normalized  TEXT NOT NULL,
    token_digest      TEXT NOT NULL UNIQUE,
    state             TEXT NOT NULL,
    expires_at        BIGINT NOT NULL,
    sent_count        BIGINT NOT NULL,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    accepted_at       BIGINT
);
CREATE INDEX invites_integration ON invites (company_id, kind, state);
CREATE INDEX invites_invitee ON invites (invitee_user_id, email_normalized, state);
