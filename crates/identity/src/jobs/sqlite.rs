//! The queue's SQL for SQLite.

/// Claims due jobs. SQLite has one writer at a time and takes the write lock when this
/// statement starts, so the select inside cannot hand the same row to two claimers; it
/// has no row locks to skip. `$1` token, `$2` lease end, `$3` now, `$4` limit.
pub(super) fn claim(columns: &str) -> String {
    format!(
        "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_token = $1, lease_until = $2, updated_at = $3 \
         WHERE id IN (SELECT id FROM jobs \
                      WHERE (state = 'pending' AND run_at <= $3) OR (state = 'running' AND lease_until < $3) \
                      ORDER BY run_at, id LIMIT $4) \
         RETURNING {columns}"
    )
}
