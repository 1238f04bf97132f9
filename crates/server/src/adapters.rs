//! The server's implementations of the small traits the domain use cases take: users
//! from the directory, and the link-proof code mail through the mailer.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::upstream::Upstream;
use ponte_linking::account::{User, may_sign_in};
use ponte_linking::federation::{FederationUsers, LinkCode, LinkCodeMail, MailUnavailable};
use ponte_linking::ids::{AccountId, UserId};
use ponte_linking::store::{Directory, LoginCandidate};

use crate::mail::{Mail, Mailer};

/// [`FederationUsers`] over the directory.
#[derive(Debug, Clone)]
pub struct DirectoryUsers(pub Arc<dyn Directory>);

#[async_trait]
impl FederationUsers for DirectoryUsers {
    async fn active_user(&self, account: AccountId, user: UserId) -> ponte_linking::Result<Option<User>> {
        let (user, account) = tokio::try_join!(self.0.user(account, user), self.0.account(account))?;
        Ok(match (user, account) {
            (Some(u), Some(a)) if may_sign_in(&u, a.status) => Some(u),
            _ => None,
        })
    }

    async fn by_email(&self, email: &str) -> ponte_linking::Result<Option<LoginCandidate>> {
        self.0.login_candidate(email).await
    }

    async fn account_name(&self, account: AccountId) -> ponte_linking::Result<Option<String>> {
        Ok(self.0.account(account).await?.map(|a| a.name))
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
