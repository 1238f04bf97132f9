//! Accounts (tenants) and their users: the types and the rules that guard changes.
//!
//! The account aggregate is the account row with its users. Its pure rules live here
//! ([`check_patch`], [`check_delete`], [`may_sign_in`], [`parse_name`]); where it is kept is
//! [`store`] (the traits) and [`sql`] (their sqlx implementation, with a per-engine file
//! for the SQL that must differ).
//! The use cases that change users, and end their sessions when a change calls for it,
//! are in [`manage`].

pub mod manage;
pub mod sql;
pub mod store;

pub use store::{AccountStore, LoginCandidate, UserStore, active_user};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use crate::access::Role;
use crate::access::{Grant, Principal};
use crate::email::Email;
use crate::ids::{AccountId, UserId};
use crate::{Error, Result};
pub use ponte_identity::outbox::Lang;

macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($(#[$vdoc])* $variant),+ }

        impl $name {
            /// The stored and wire spelling.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }

            /// Parses the stored and wire spelling.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some(Self::$variant),)+ _ => None }
            }
        }
    };
}

text_enum!(
    /// Whether a user may sign in.
    UserStatus {
        /// May sign in.
        Active = "active",
        /// Turned off by an admin.
        Disabled = "disabled",
        /// Turned off because the account's seats lapsed; never deleted for it.
        Suspended = "suspended",
    }
);

text_enum!(
    /// Whether an account's users may sign in.
    AccountStatus {
        /// In service.
        Active = "active",
        /// Turned off by the POS backend.
        Disabled = "disabled",
    }
);

/// A POS customer: the tenant that owns users, companies and seats.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Id.
    pub id: AccountId,
    /// Display name (usually the business name).
    pub name: String,
    /// In service or not.
    pub status: AccountStatus,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// A person who signs in, within one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Id.
    pub id: UserId,
    /// The account it belongs to.
    pub account_id: AccountId,
    /// Email as given (unique case-insensitively across Ponte).
    pub email: String,
    /// Display name.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Whether it may sign in.
    pub status: UserStatus,
    /// Whether a password is set (users may sign in only upstream).
    pub has_password: bool,
    /// The language its mail is written in.
    pub lang: Lang,
    /// What a member may do, on which companies (owners and admins may do everything).
    pub grants: Vec<Grant>,
    /// Why the system set the status (e.g. [`crate::seats::SEATS_LAPSED`]); `None` when a
    /// person set it.
    pub status_reason: Option<String>,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

impl User {
    /// The user as [`crate::access::allows`] sees them.
    pub fn principal(&self) -> Principal<'_> {
        Principal { role: self.role, grants: &self.grants }
    }
}

/// A user to create. The password, if any, is already hashed.
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Email.
    pub email: Email,
    /// Display name.
    pub name: String,
    /// Role.
    pub role: Role,
    /// argon2id PHC string.
    pub password_hash: Option<String>,
    /// The language its mail is written in.
    pub lang: Lang,
    /// A member's grants (empty for owners and admins).
    pub grants: Vec<Grant>,
}

/// A partial update of a user; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct UserPatch {
    /// New email.
    pub email: Option<Email>,
    /// New display name.
    pub name: Option<String>,
    /// New role.
    pub role: Option<Role>,
    /// New status.
    pub status: Option<UserStatus>,
    /// New password, hashed.
    pub password_hash: Option<String>,
    /// New mail language.
    pub lang: Option<Lang>,
}

impl UserPatch {
    /// Whether the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.email.is_none()
            && self.name.is_none()
            && self.role.is_none()
            && self.status.is_none()
            && self.password_hash.is_none()
            && self.lang.is_none()
    }
}

/// Whether a user may sign in (password, upstream ID, tokens, REST): it and its account
/// are both active. The one place this rule is written.
pub fn may_sign_in(user: &User, account: AccountStatus) -> bool {
    user.status == UserStatus::Active && account == AccountStatus::Active
}

/// Checks a display name: 1 to 200 characters, no control characters. Returns it trimmed.
pub fn parse_name(field: &'static str, input: &str) -> Result<String> {
    let s = input.trim();
    if s.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if s.chars().count() > 200 {
        return Err(Error::invalid(field, "must have at most 200 characters"));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::invalid(field, "must not contain control characters"));
    }
    Ok(s.to_owned())
}

/// Only the account's creation makes an owner.
pub fn check_new_user_role(role: Role) -> Result<()> {
    if role == Role::Owner {
        return Err(Error::invalid("role", "an account has exactly one owner; use admin or member"));
    }
    Ok(())
}

/// Rules for changing a user: the owner keeps its role and stays active, and nobody
/// becomes owner by an update.
pub fn check_patch(target: &User, patch: &UserPatch) -> Result<()> {
    if patch.is_empty() {
        return Err(Error::invalid("body", "nothing to change"));
    }
    if patch.role == Some(Role::Owner) && target.role != Role::Owner {
        return Err(Error::invalid("role", "ownership cannot be given by an update"));
    }
    if target.role == Role::Owner {
        if patch.role.is_some_and(|r| r != Role::Owner) {
            return Err(Error::Conflict { code: "owner_role_fixed", message: "the owner's role cannot change".into() });
        }
        if patch.status.is_some_and(|s| s != UserStatus::Active) {
            return Err(Error::Conflict {
                code: "owner_must_stay_active",
                message: "the owner cannot be disabled".into(),
            });
        }
    }
    if patch.status == Some(UserStatus::Suspended) {
        return Err(Error::invalid("status", "suspension follows seats; set active or disabled"));
    }
    Ok(())
}

/// Only members carry grants: owners and admins may already do everything.
pub fn check_grants_target(target: &User) -> Result<()> {
    if target.role != Role::Member {
        return Err(Error::Conflict {
            code: "not_a_member",
            message: format!(
                "a {} may already do everything; permissions are granted to members",
                target.role.as_str()
            ),
        });
    }
    Ok(())
}

/// The owner is never deleted (delete the account instead).
pub fn check_delete(target: &User) -> Result<()> {
    if target.role == Role::Owner {
        return Err(Error::Conflict {
            code: "owner_cannot_be_deleted",
            message: "the account owner cannot be deleted".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> User {
        User {
            id: UserId::new(),
            account_id: AccountId::new(),
            email: "a@example.com".into(),
            name: "A".into(),
            role,
            status: UserStatus::Active,
            has_password: true,
            lang: Lang::It,
            grants: Vec::new(),
            status_reason: None,
            created_at: OffsetDateTime::UNIX_EPOCH,
            updated_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn owner_cannot_be_demoted_disabled_or_deleted() {
        let owner = user(Role::Owner);
        let demote = UserPatch { role: Some(Role::Member), ..Default::default() };
        assert!(matches!(check_patch(&owner, &demote), Err(Error::Conflict { code: "owner_role_fixed", .. })));
        let disable = UserPatch { status: Some(UserStatus::Disabled), ..Default::default() };
        assert!(matches!(check_patch(&owner, &disable), Err(Error::Conflict { code: "owner_must_stay_active", .. })));
        assert!(check_delete(&owner).is_err());
        let rename = UserPatch { name: Some("New".into()), ..Default::default() };
        assert!(check_patch(&owner, &rename).is_ok());
    }

    #[test]
    fn nobody_becomes_owner_and_empty_patches_are_refused() {
        let member = user(Role::Member);
        let promote = UserPatch { role: Some(Role::Owner), ..Default::default() };
        assert!(check_patch(&member, &promote).is_err());
        assert!(check_patch(&member, &UserPatch::default()).is_err());
        assert!(check_new_user_role(Role::Owner).is_err());
        assert!(check_new_user_role(Role::Member).is_ok());
        let admin = UserPatch { role: Some(Role::Admin), status: Some(UserStatus::Disabled), ..Default::default() };
        assert!(check_patch(&member, &admin).is_ok());
        assert!(check_delete(&member).is_ok());
    }

    #[test]
    fn only_an_active_user_of_an_active_account_may_sign_in() {
        let mut u = user(Role::Member);
        assert!(may_sign_in(&u, AccountStatus::Active));
        assert!(!may_sign_in(&u, AccountStatus::Disabled));
        for status in [UserStatus::Disabled, UserStatus::Suspended] {
            u.status = status;
            assert!(!may_sign_in(&u, AccountStatus::Active), "{status:?}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(parse_name("name", "  Bar Sport  ").unwrap(), "Bar Sport");
        assert!(parse_name("name", "   ").is_err());
        assert!(parse_name("name", &"x".repeat(201)).is_err());
        assert!(parse_name("name", "a\u{0}b").is_err());
    }

    #[test]
    fn enums_round_trip_their_spelling() {
        for r in [Role::Owner, Role::Admin, Role::Member] {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(UserStatus::parse("suspended"), Some(UserStatus::Suspended));
        assert_eq!(Role::parse("root"), None);
    }
}
