-- Webhooks. webhook_receivers: where the POS backend takes Ponte's events (receivers
-- defined over REST; those from the configuration are not stored), each with its signing
-- secret sealed under the master key. platform_events: the ids of the invoicing platform's
-- events already processed, so a retried delivery is answered without acting twice.
-- Instants are Unix seconds like everywhere else.

CREATE TABLE webhook_receivers (
    id             TEXT PRIMARY KEY,
    url            TEXT NOT NULL,
    secret_sealed  TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);

CREATE TABLE platform_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    received_at  BIGINT NOT NULL
);
