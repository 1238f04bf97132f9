//! Changing and deleting users, with what follows from it: disabling a user, changing
//! its password or deleting it ends all its sessions and refresh-token families, so an
//! old session or token cannot outlive the change.

use ponte_identity::refresh::RefreshRepo;
use ponte_identity::session::Sessions;
use ponte_identity::signout::end_everywhere;
use time::OffsetDateTime;

use super::{User, UserPatch, UserStatus, UserStore};
use crate::Result;
use crate::audit::Actor;
use crate::ids::{AccountId, UserId};

/// The stores a user change touches.
#[derive(Clone, Copy)]
pub struct UserStores<'a> {
    /// The users.
    pub users: &'a dyn UserStore,
    /// Browser sessions.
    pub sessions: &'a Sessions,
    /// Refresh-token families.
    pub refresh: &'a dyn RefreshRepo,
}

impl std::fmt::Debug for UserStores<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserStores").finish_non_exhaustive()
    }
}

/// Whether applying `patch` ends the user's presence everywhere: a new password, or any
/// status but active.
pub fn ends_presence(patch: &UserPatch) -> bool {
    patch.password_hash.is_some() || patch.status.is_some_and(|s| s != UserStatus::Active)
}

/// Changes a user (the store enforces [`check_patch`](super::check_patch)); when the
/// change [`ends_presence`], every session and refresh family of the user ends too.
pub async fn update_user(
    stores: UserStores<'_>,
    account: AccountId,
    user: UserId,
    patch: UserPatch,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<User> {
    let ends = ends_presence(&patch);
    let user = stores.users.update(account, user, patch, actor, now).await?;
    if ends {
        end_everywhere(stores.sessions, stores.refresh, user.id, now).await?;
    }
    Ok(user)
}

/// Deletes a user (the store enforces [`check_delete`](super::check_delete)) and ends
/// every session and refresh family it had.
pub async fn delete_user(
    stores: UserStores<'_>,
    account: AccountId,
    user: UserId,
    actor: &Actor,
    now: OffsetDateTime,
) -> Result<()> {
    stores.users.delete(account, user, actor, now).await?;
    end_everywhere(stores.sessions, stores.refresh, user, now).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
