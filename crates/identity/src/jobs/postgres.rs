//! The queue's SQL that only PostgreSQL speaks.

/// Claims due jobs: `SKIP LOCKED` lets replicas claim side by side without waiting on, or
/// double-claiming, each other's rows. `$1` token, `$2` lease end, `$3` now, `$4` limit.
pub(super) fn claim(columns: &str) -> String {
    format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_token = $1, lease_until = $2, updated_at = $3 \
         WHERE id IN (SELECT id FROM jobs \
                      WHERE (state = 'pending' AND run_at <= $3) OR (state = 'running' AND lease_until < $3) \
                      ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
         RETURNING {columns}"
    )
}

/// Wakes every listening worker, on any replica, when the enqueueing transaction commits.
pub(super) const NOTIFY: &str = "SELECT pg_notify('ponte_jobs', '')";

/// The channel workers `LISTEN` on.
pub const CHANNEL: &str = "ponte_jobs";
