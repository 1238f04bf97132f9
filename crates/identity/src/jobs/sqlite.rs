//! The queue's SQL for SQLite.

/// Claims due jobs. SQLite has one writer at a time and takes the write lock when this
/// statement starts, so the select inside cannot hand the same row to two claimers; it
/// has no row locks to skip. A running job whose lease ran out is claimed again only if it
/// has attempts left (the others are made dead by [`REAP`] first).
/// `$1` token, `$2` lease end, `$3` now, `$4` limit.
pub(super) fn claim(columns: &str) -> String {
    format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_token = $1, lease_until = $2, updated_at = $3 \
         WHERE id IN (SELECT id FROM jobs \
                      WHERE (state = 'pending' AND run_at <= $3) \
                         OR (state = 'running' AND lease_until < $3 AND attempts < max_attempts) \
                      ORDER BY run_at, id LIMIT $4) \
         RETURNING {columns}"
    )
}

/// Makes dead the running jobs whose lease ran out on their last attempt (their worker
/// died with them); one statement under the write lock, so no claimer sees them halfway.
/// `$1` now, `$2` the error to record, `$3` the cutoff: leases that ended before it (a
/// whole lease ago).
pub(super) const REAP: &str = "UPDATE jobs SET state = 'dead', last_error = $2, lease_until = NULL, \
                                                lease_token = NULL, updated_at = $1 \
     WHERE state = 'running' AND lease_until < $3 AND attempts >= max_attempts \
     RETURNING id, kind";
