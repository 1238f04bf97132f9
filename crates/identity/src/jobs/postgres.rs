//! The queue's SQL that only PostgreSQL speaks.

/// Claims due jobs: `SKIP LOCKED` lets replicas claim side by side without waiting on, or
/// double-claiming, each other's rows. A running job whose lease ran out is claimed again
/// only if it has attempts left (the others are made dead by [`REAP`] first).
/// `$1` token, `$2` lease end, `$3` now, `$4` limit.
pub(super) fn claim(columns: &str) -> String {
    format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_token = $1, lease_until = $2, updated_at = $3 \
         WHERE id IN (SELECT id FROM jobs \
                      WHERE (state = 'pending' AND run_at <= $3) \
                         OR (state = 'running' AND lease_until < $3 AND attempts < max_attempts) \
                      ORDER BY run_at, id LIMIT $4 FOR UPDATE SKIP LOCKED) \
         RETURNING {columns}"
    )
}

/// Makes dead the running jobs whose lease ran out on their last attempt: their worker
/// died with them (a job that kills the process every time would otherwise be claimed
/// forever). Rows another replica holds are skipped, not waited for; the claim never takes
/// them either way. `$1` now, `$2` the error to record, `$3` the cutoff: leases that
/// ended before it (a whole lease ago).
pub(super) const REAP: &str = "UPDATE jobs SET state = 'dead', last_error = $2, lease_until = NULL, \
                                                lease_token = NULL, updated_at = $1 \
     WHERE id IN (SELECT id FROM jobs \
                  WHERE state = 'running' AND lease_until < $3 AND attempts >= max_attempts \
                  FOR UPDATE SKIP LOCKED) \
     RETURNING id, kind";

/// Wakes every listening worker, on any replica, when the enqueueing transaction commits.
pub(super) const NOTIFY: &str = "SELECT pg_notify('ponte_jobs', '')";

/// The channel workers `LISTEN` on.
pub const CHANNEL: &str = "ponte_jobs";
