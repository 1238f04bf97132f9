//! Ponte as OpenID Provider, wired to this service: the identity crate's [`Provider`]
//! over the application's stores, and the user store as its [`Subjects`].

use async_trait::async_trait;
use ponte_identity::ids::{AccountId, UserId};
use ponte_identity::op::{OpSettings, Provider, Subject, Subjects};
use ponte_linking::account::active_user;
use time::Duration;

use crate::config::Config;
use crate::state::AppState;

/// The OP over `state`'s stores and configuration: built for each request that needs it,
/// from parts that are all shared (the settings too, [`settings`]).
pub fn provider(state: &AppState) -> Provider<'_> {
    Provider {
        settings: &state.op_settings,
        keys: state.keys.ring(),
        store: state.sessions.store().as_ref(),
        sessions: &state.sessions,
        clients: state.clients.as_ref(),
        consents: state.consents.as_ref(),
        refresh: state.refresh.as_ref(),
        subjects: state,
    }
}

/// The OP's settings from the configuration, built once with the application state.
pub fn settings(config: &Config) -> OpSettings {
    let secs = |s: u64| Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX));
    OpSettings {
        issuer: config.issuer(),
        access_token_ttl: secs(config.access_token_ttl_secs),
        id_token_ttl: secs(config.id_token_ttl_secs),
        refresh_token_ttl: secs(config.refresh_token_ttl_secs),
        assert_email_verified: config.assert_email_verified,
    }
}

/// Who may sign in is the account store's one rule (`ponte_linking::account::may_sign_in`), as in
/// [`AppState::active_user`]; this adapter keeps the stores' own errors.
#[async_trait]
impl Subjects for AppState {
    async fn active_subject(&self, account: AccountId, user: UserId) -> ponte_identity::Result<Option<Subject>> {
        let user =
            active_user(self.accounts.as_ref(), self.users.as_ref(), account, user).await.map_err(as_identity)?;
        Ok(user.map(|u| Subject {
            access: ponte_linking::access::claim(u.principal()),
            id: u.id,
            account_id: u.account_id,
            role: u.role.as_str().to_owned(),
            email: u.email,
            name: u.name,
        }))
    }

    async fn is_active(&self, account: AccountId, user: UserId) -> ponte_identity::Result<bool> {
        let user =
            active_user(self.accounts.as_ref(), self.users.as_ref(), account, user).await.map_err(as_identity)?;
        Ok(user.is_some())
    }
}

/// The account store's errors as the identity crate's, keeping its own errors as they are.
fn as_identity(e: ponte_linking::Error) -> ponte_identity::Error {
    match e {
        ponte_linking::Error::Identity(inner) => inner,
        other => ponte_identity::Error::Corrupt(format!("user lookup: {other}")),
    }
}
