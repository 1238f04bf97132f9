-- A company's credentials at the invoicing platform, one set per integration: typed
-- (credential_type) and sealed under the master key with the id of the key that sealed
-- them (sealed), never returned by the API. last_outcome/checked_at record the latest
-- "check credentials"; next_check_at is when a check the platform could not answer runs
-- again. Instants are Unix seconds like everywhere else.

CREATE TABLE integration_credentials (
    company_id       TEXT NOT NULL REFERENCES companies (id) ON DELETE CASCADE,
    kind             TEXT NOT NULL,
    account_id       TEXT NOT NULL,
    credential_type  TEXT NOT NULL CHECK (credential_type IN ('username_password', 'api_key', 'technical_key')),
    sealed           TEXT NOT NULL,
    updated_at       BIGINT NOT NULL,
    last_outcome     TEXT CHECK (last_outcome IN ('ok', 'invalid_credentials', 'delegation_missing', 'platform_unavailable')),
    checked_at       BIGINT,
    next_check_at    BIGINT,
    PRIMARY KEY (company_id, kind)
);
