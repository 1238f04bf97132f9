//! Where the account aggregate is kept: [`AccountStore`] for the account row,
//! [`UserStore`] for its users.
//!
//! Users belong to the account aggregate, yet they get a trait of their own. The account
//! root and its users are read and written by different callers (sign-in and token paths
//! need users only; provisioning needs the root), and one trait for both would grow into
//! the bundle this module replaced. What keeps them one aggregate is the implementation:
//! both live in [`super::sql`] on the same tables, and every write to a user first takes
//! the account's lock ([`super::sql::lock_account`]) in the same transaction as the
//! rules it checks ([`check_patch`](super::check_patch),
//! [`check_delete`](super::check_delete), later the seat count), so an invariant spanning
//! the root and its users cannot be raced.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{Account, AccountStatus, NewUser, User, UserPatch, may_sign_in};
use crate::Result;
use crate::audit::Actor;
use crate::ids::{AccountId, UserId};

/// What password login needs to know about a user.
#[derive(Debug, Clone)]
pub struct LoginCandidate {
    /// The user.
    pub user: User,
    /// Its argon2id hash, if it has a password.
    pub password_hash: Option<String>,
    /// Its account's status.
    pub account_status: AccountStatus,
    /// Its account's name, for pages.
    pub account_name: String,
}

/// The account rows (tenants). Creating one creates its owner, atomically.
#[async_trait]
pub trait AccountStore: Send + Sync + std::fmt::Debug {
    /// Creates an account and its owner (whatever role `owner` asked for) in one
    /// transaction, audited; nothing is left behind when it fails.
    async fn create(&self, name: String, owner: NewUser, actor: &Actor, now: OffsetDateTime)
    -> Result<(Account, User)>;
    /// An account by id.
    async fn get(&self, id: AccountId) -> Result<Option<Account>>;
}

/// The users of accounts. Every operation is scoped by account: a user id from another
/// account is simply not found. Every write is audited in its own transaction.
#[async_trait]
pub trait UserStore: Send + Sync + std::fmt::Debug {
    /// The account's users, oldest first.
    async fn list(&self, account: AccountId) -> Result<Vec<User>>;
    /// One user of the account.
    async fn get(&self, account: AccountId, user: UserId) -> Result<Option<User>>;
    /// Adds a user to the account; [`crate::Error::NotFound`]`("account")` if there is no
    /// such account, [`crate::Error::EmailTaken`] if the email is in use (any case), a
    /// conflict `no_free_seat` when an active member would exceed the valid seats
    /// ([`crate::seats`]), checked under the account lock.
    async fn create(&self, account: AccountId, new: NewUser, actor: &Actor, now: OffsetDateTime) -> Result<User>;
    /// Changes a user, enforcing [`check_patch`](super::check_patch) inside the write transaction.
    async fn update(
        &self,
        account: AccountId,
        user: UserId,
        patch: UserPatch,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<User>;
    /// Replaces a member's grants ([`check_grants_target`](super::check_grants_target));
    /// every company named must be the account's. Audited with the new list.
    async fn set_grants(
        &self,
        account: AccountId,
        user: UserId,
        grants: Vec<crate::access::Grant>,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<User>;
    /// Deletes a user, enforcing [`check_delete`](super::check_delete) inside the write transaction.
    async fn delete(&self, account: AccountId, user: UserId, actor: &Actor, now: OffsetDateTime) -> Result<()>;
    /// The user with this email (any case), across accounts, for password login. Text that
    /// is not a valid email matches nobody.
    async fn login_candidate(&self, email: &str) -> Result<Option<LoginCandidate>>;
}

/// The user, if it and its account may still sign in now ([`may_sign_in`]): the lookup
/// behind every session, token, grant and link check.
pub async fn active_user(
    accounts: &dyn AccountStore,
    users: &dyn UserStore,
    account: AccountId,
    user: UserId,
) -> Result<Option<User>> {
    let (user, account) = tokio::try_join!(users.get(account, user), accounts.get(account))?;
    Ok(match (user, account) {
        (Some(u), Some(a)) if may_sign_in(&u, a.status) => Some(u),
        _ => None,
    })
}
