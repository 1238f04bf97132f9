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

/// The platform's directory through the connector; without a `[platform]` every
/// reactivation answers that the platform is unavailable, rather than pretending it has
/// no account.
#[derive(Debug, Clone)]
pub struct PlatformDirectory(pub Option<Arc<dyn crate::connectors::platform::Platform>>);

#[async_trait]
impl ponte_linking::integration::actions::PlatformLookup for PlatformDirectory {
    async fn find_account(
        &self,
        vat_number: &str,
    ) -> Result<Option<ponte_linking::integration::PlatformAccount>, String> {
        let Some(platform) = &self.0 else {
            return Err("no invoicing platform is configured ([platform] base_url)".into());
        };
        // A lookup changes nothing at the platform: any fresh key will do.
        let key = uuid::Uuid::now_v7().to_string();
        let found = platform.find_account(vat_number, &key).await.map_err(|e| e.to_string())?;
        Ok(found.as_ref().map(crate::connectors::platform::PlatformAccount::summary))
    }
}

/// The credentials operations of the configured platform, for the domain's use cases.
#[derive(Debug, Clone)]
pub struct PlatformCredentialsOps(pub Option<Arc<dyn crate::connectors::platform::Platform>>);

fn failure(e: crate::connectors::platform::PlatformError) -> ponte_linking::integration::credentials::PlatformFailure {
    use ponte_linking::integration::credentials::PlatformFailure;
    if e.retryable() { PlatformFailure::Unavailable(e.to_string()) } else { PlatformFailure::Rejected(e.to_string()) }
}

#[async_trait]
impl ponte_linking::integration::credentials::CredentialsPlatform for PlatformCredentialsOps {
    async fn check_credentials(
        &self,
        vat_number: &str,
        credentials: &ponte_linking::integration::credentials::PlatformCredentials,
        key: &str,
    ) -> Result<
        ponte_linking::integration::credentials::CheckOutcome,
        ponte_linking::integration::credentials::PlatformFailure,
    > {
        use ponte_linking::integration::credentials::PlatformFailure;
        let Some(platform) = &self.0 else {
            return Err(PlatformFailure::Unavailable(
                "no invoicing platform is configured ([platform] base_url)".into(),
            ));
        };
        platform.check_credentials(vat_number, credentials, key).await.map_err(failure)
    }

    async fn issue_api_key(
        &self,
        account_id: &str,
        vat_number: &str,
        key: &str,
    ) -> Result<String, ponte_linking::integration::credentials::PlatformFailure> {
        use ponte_linking::integration::credentials::PlatformFailure;
        let Some(platform) = &self.0 else {
            return Err(PlatformFailure::Unavailable(
                "no invoicing platform is configured ([platform] base_url)".into(),
            ));
        };
        platform.issue_api_key(account_id, vat_number, key).await.map_err(failure)
    }
}

/// What the platform's signed webhook events do: an invite accepted on its side moves the
/// integration to `activating`; a finished activation makes it `active`.
#[derive(Debug, Clone)]
pub struct PlatformEvents {
    /// Integrations and invites.
    pub integrations: Arc<dyn ponte_linking::integration::Integrations>,
    /// The one clock.
    pub clock: Arc<dyn ponte_identity::clock::Clock>,
}

#[async_trait]
impl crate::webhooks::inbound::PlatformEventHandler for PlatformEvents {
    async fn handle(&self, event: &crate::webhooks::inbound::PlatformEvent) -> Result<(), crate::problem::Problem> {
        use crate::webhooks::inbound::PlatformEventType as T;
        use ponte_linking::integration::{IntegrationKind, actions};
        let actor = ponte_linking::audit::Actor { who: "platform".into(), ip: None };
        let now = self.clock.now();
        match event.type_ {
            T::InviteAccepted => {
                let reference = event.data.reference.as_deref().unwrap_or_default();
                let Ok(invite) = reference.parse() else {
                    tracing::warn!(event = %event.id, "invite.accepted names no invite of ours");
                    return Ok(());
                };
                let outcome =
                    ponte_linking::invite::accepted_on_platform(self.integrations.as_ref(), invite, &actor, now)
                        .await?;
                tracing::info!(event = %event.id, ?outcome, "platform reported an accepted invite");
            }
            T::ActivationCompleted => {
                let kind = IntegrationKind::DigitalInvoice;
                let found =
                    self.integrations.by_platform_account(&event.data.vat_number, &event.data.account_id, kind).await?;
                for i in found {
                    let target = actions::Target {
                        account: i.account_id,
                        company: i.company_id,
                        kind,
                        actor: actor.clone(),
                        now,
                    };
                    let outcome = actions::activated(self.integrations.as_ref(), &target).await?;
                    tracing::info!(event = %event.id, ok = outcome.is_ok(), "platform reported an activation");
                }
            }
            _ => tracing::info!(event = %event.id, "platform event of no concern, ignored"),
        }
        Ok(())
    }
}
