//! The server's implementations of the small traits the domain use cases take: users
//! from the account and user stores, and the link-proof code mail through the outbox.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::outbox::{Message, Outbox, OutgoingMail};
use ponte_identity::upstream::Upstream;
use ponte_linking::account::{AccountStore, LoginCandidate, User, UserStore, active_user};
use ponte_linking::federation::{FederationUsers, LinkCode, LinkCodeMail, MailUnavailable};
use ponte_linking::ids::{AccountId, UserId};

/// [`FederationUsers`] over the account and user stores.
#[derive(Debug, Clone)]
pub struct StoreUsers {
    /// Accounts.
    pub accounts: Arc<dyn AccountStore>,
    /// Their users.
    pub users: Arc<dyn UserStore>,
}

impl StoreUsers {
    /// The application's account and user stores.
    pub fn of(state: &crate::state::AppState) -> Self {
        Self { accounts: state.accounts.clone(), users: state.users.clone() }
    }
}

#[async_trait]
impl FederationUsers for StoreUsers {
    async fn active_user(&self, account: AccountId, user: UserId) -> ponte_linking::Result<Option<User>> {
        active_user(self.accounts.as_ref(), self.users.as_ref(), account, user).await
    }

    async fn by_email(&self, email: &str) -> ponte_linking::Result<Option<LoginCandidate>> {
        self.users.login_candidate(email).await
    }

    async fn account_name(&self, account: AccountId) -> ponte_linking::Result<Option<String>> {
        Ok(self.accounts.get(account).await?.map(|a| a.name))
    }
}

/// [`LinkCodeMail`] through the outbox, naming the provider as configured: the code is
/// queued as a `mail.send` job, so a mail server that is away delays it, never the page.
#[derive(Debug, Clone)]
pub struct OutboxLinkCode {
    /// Where mail goes.
    pub outbox: Arc<dyn Outbox>,
    /// The providers, for their display names.
    pub providers: Arc<BTreeMap<String, Arc<Upstream>>>,
}

#[async_trait]
impl LinkCodeMail for OutboxLinkCode {
    async fn send_link_code(&self, mail: LinkCode<'_>) -> Result<(), MailUnavailable> {
        let provider_name =
            self.providers.get(mail.provider).map(|p| p.config.display_name.clone()).unwrap_or_default();
        let message = OutgoingMail {
            to: mail.to.to_owned(),
            lang: mail.lang,
            message: Message::LinkCode {
                code: mail.code.to_owned(),
                provider_name,
                upstream_email: mail.upstream_email.to_owned(),
            },
        };
        self.outbox.send(message).await.map(|_| ()).map_err(|e| MailUnavailable(e.to_string()))
    }
}

/// The platform lookup when no `[platform]` is configured: every reactivation answers that
/// the platform is unavailable, rather than pretending it has no account.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPlatform;

#[async_trait]
impl ponte_linking::integration::actions::PlatformLookup for NoPlatform {
    async fn find_account(
        &self,
        _vat_number: &str,
    ) -> Result<Option<ponte_linking::integration::PlatformAccount>, String> {
        Err("no invoicing platform is configured ([platform] base_url)".into())
    }
}
