-- The durable job queue (and so the mail outbox). A job is claimed with a lease; a lease
-- that runs out makes it claimable again. Instants are Unix seconds like everywhere else;
-- enqueued_at_ms is wall-clock milliseconds, only for the enqueue-to-done histogram.

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL UNIQUE,
    state            TEXT NOT NULL CHECK (state IN ('pending', 'running', 'done', 'dead')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    max_attempts     BIGINT NOT NULL,
    run_at           BIGINT NOT NULL,
    lease_until      BIGINT,
    lease_token      TEXT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL,
    enqueued_at_ms   BIGINT NOT NULL
);
-- The claim looks for due pending jobs and for running jobs whose lease ran out.
CREATE INDEX jobs_due ON jobs (state, run_at);
CREATE INDEX jobs_leases ON jobs (state, lease_until);
