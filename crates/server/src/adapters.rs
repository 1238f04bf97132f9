//! The server's implementations of the small traits the domain use cases take: users
//! from the account and user stores, and the link-proof code mail through the mailer.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::upstream::Upstream;
use ponte_linking::account::{AccountStore, LoginCandidate, User, UserStore, active_user};
use ponte_linking::federation::{FederationUsers, LinkCode, LinkCodeMail, MailUnavailable};
use ponte_linking::ids::{AccountId, UserId};

use crate::mail::{Mail, Mailer};

/// [`FederationUsers`] over the account and user stores.
#[derive(Debug, Clone)]
pub struct StoreUsers {
    /// Accounts.
    pub accounts: Arc<dyn AccountStore>,
    /// Their users.
    pub users: Arc<dyn UserStore>,
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

/// [`LinkCodeMail`] through the mailer, naming the provider as configured.
#[derive(Debug, Clone)]
pub struct MailerLinkCode {
    /// Where mail goes.
    pub mailer: Arc<dyn Mailer>,
    /// The providers, for their display names.
    pub providers: Arc<BTreeMap<String, Arc<Upstream>>>,
}

#[async_trait]
impl LinkCodeMail for MailerLinkCode {
    async fn send_link_code(&self, mail: LinkCode<'_>) -> Result<(), MailUnavailable> {
        let provider_name =
            self.providers.get(mail.provider).map(|p| p.config.display_name.clone()).unwrap_or_default();
        let (code, upstream_email) = (mail.code, mail.upstream_email);
        // One bilingual message for now; the outbox brings per-language templates.
        let message = Mail {
            to: mail.to.to_owned(),
            subject: "Ponte: codice per collegare il tuo ID / code to link your ID".into(),
            body: format!(
                "Codice / code: {code}\n\nQualcuno vuole collegare l'ID {provider_name} ({upstream_email}) al tuo account Ponte. Se non sei tu, ignora questa email.\nSomeone wants to link the {provider_name} ID ({upstream_email}) to your Ponte account. If it was not you, ignore this email.\n",
            ),
        };
        self.mailer.send(message).await.map_err(|e| MailUnavailable(e.to_string()))
    }
}
