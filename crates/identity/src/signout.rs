//! Ending a user's presence everywhere: every browser session and every refresh-token
//! family. Disabling, deleting, a password change and upstream logout all end here.

use time::OffsetDateTime;

use crate::Result;
use crate::ids::UserId;
use crate::refresh::RefreshRepo;
use crate::session::Sessions;

/// Ends every session and refresh-token family of `user`; returns how many sessions ended.
pub async fn end_everywhere(
    sessions: &Sessions,
    refresh: &dyn RefreshRepo,
    user: UserId,
    now: OffsetDateTime,
) -> Result<usize> {
    let ended = sessions.revoke_all_for_user(user).await?;
    refresh.revoke_user(user, now).await?;
    Ok(ended)
}
