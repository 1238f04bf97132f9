//! The federation rules without HTTP: an in-memory session store, stand-in provider,
//! users, links and mail, and a fixed `now`.

#![allow(clippy::unwrap_used)]

use std::sync::Mutex;

use async_trait::async_trait;
use ponte_identity::federation::{self as flow, CallbackParams, Refusal, StartOutcome, StartRequest};
use ponte_identity::session::{MemoryStore, Session};
use ponte_identity::upstream::{Ask, FlowSecrets, LogoutRequest, Provider, Started, UpstreamError, UpstreamIdentity};
use time::OffsetDateTime;

use super::*;
use crate::account::{AccountStatus, Role};
use crate::links::{ExternalIdentity, decide};
use crate::testing::{NOW, user};

#[derive(Debug)]
struct FakeProvider {
    identity: UpstreamIdentity,
}

#[async_trait]
impl Provider for FakeProvider {
    fn id(&self) -> &str {
        "up"
    }

    async fn start(&self, _: &str, _: Ask, _: Option<&str>) -> Result<Started, UpstreamError> {
        let state = ponte_identity::secret::random_token();
        Ok(Started {
            url: format!("https://id.example/authorize?state={state}"),
            state,
            nonce: "n".into(),
            pkce_verifier: "v".into(),
        })
    }

    async fn finish(
        &self,
        _: &str,
        _: &str,
        _: Option<&str>,
        _: &FlowSecrets,
        _: Option<i64>,
        _: OffsetDateTime,
    ) -> Result<UpstreamIdentity, UpstreamError> {
        Ok(self.identity.clone())
    }

    async fn validate_logout_token(&self, _: &str, _: OffsetDateTime) -> Result<LogoutRequest, UpstreamError> {
        Err(UpstreamError::Invalid("not in these tests".into()))
    }
}

#[derive(Debug, Default)]
struct FakeUsers(Vec<(User, Option<String>)>);

#[async_trait]
impl FederationUsers for FakeUsers {
    async fn active_user(&self, account: AccountId, user: UserId) -> Result<Option<User>> {
        Ok(self.0.iter().map(|(u, _)| u).find(|u| u.id == user && u.account_id == account).cloned())
    }

    async fn by_email(&self, email: &str) -> Result<Option<LoginCandidate>> {
        Ok(self.0.iter().find(|(u, _)| u.email == email).map(|(u, hash)| LoginCandidate {
            user: u.clone(),
            password_hash: hash.clone(),
            account_status: AccountStatus::Active,
            account_name: "Bar Roma".into(),
        }))
    }

    async fn account_name(&self, _: AccountId) -> Result<Option<String>> {
        Ok(Some("Bar Roma".into()))
    }
}

#[derive(Debug, Default)]
struct FakeLinks(Mutex<Vec<ExternalIdentity>>);

#[async_trait]
impl Links for FakeLinks {
    async fn find(&self, issuer: &str, subject: &str) -> Result<Option<ExternalIdentity>> {
        Ok(self.0.lock().unwrap().iter().find(|l| l.issuer == issuer && l.subject == subject).cloned())
    }

    async fn for_user(&self, _: AccountId, user: UserId) -> Result<Vec<ExternalIdentity>> {
        Ok(self.0.lock().unwrap().iter().filter(|l| l.user_id == user).cloned().collect())
    }

    async fn link(&self, user: &User, identity: &UpstreamIdentity, _: &Actor, now: OffsetDateTime) -> Result<Decision> {
        let existing = self.find(&identity.issuer, &identity.subject).await?;
        let mine = self.for_user(user.account_id, user.id).await?;
        let decision = decide(existing.as_ref(), &mine, user.id, &identity.provider);
        if decision == Decision::Link {
            self.0.lock().unwrap().push(ExternalIdentity {
                id: format!("link-{}", identity.subject),
                user_id: user.id,
                account_id: user.account_id,
                provider: identity.provider.clone(),
                issuer: identity.issuer.clone(),
                subject: identity.subject.clone(),
                email: identity.email.clone(),
                name: identity.name.clone(),
                linked_at: now,
                last_login_at: None,
            });
        }
        Ok(decision)
    }

    async fn unlink(&self, _: AccountId, user: UserId, provider: &str, _: &Actor, _: OffsetDateTime) -> Result<bool> {
        let mut links = self.0.lock().unwrap();
        let before = links.len();
        links.retain(|l| !(l.user_id == user && l.provider == provider));
        Ok(links.len() < before)
    }

    async fn record_login(
        &self,
        _: &ExternalIdentity,
        _: &UpstreamIdentity,
        _: &Actor,
        _: OffsetDateTime,
    ) -> Result<()> {
        Ok(())
    }
}

#[derive(Debug, Default)]
struct FakeMail(Mutex<Vec<(String, String)>>, Mutex<Vec<crate::account::Lang>>);

#[async_trait]
impl LinkCodeMail for FakeMail {
    async fn send_link_code(&self, mail: LinkCode<'_>) -> std::result::Result<(), MailUnavailable> {
        self.0.lock().unwrap().push((mail.to.to_owned(), mail.code.to_owned()));
        self.1.lock().unwrap().push(mail.lang);
        Ok(())
    }
}

/// A mail outbox that is down: it sees the code it was asked to send, then refuses it.
#[derive(Debug, Default)]
struct DownMail(Mutex<Vec<String>>);

#[async_trait]
impl LinkCodeMail for DownMail {
    async fn send_link_code(&self, mail: LinkCode<'_>) -> std::result::Result<(), MailUnavailable> {
        self.0.lock().unwrap().push(mail.code.to_owned());
        Err(MailUnavailable("outbox down".into()))
    }
}

/// Integrations of which these tests only need "whose invites were revoked".
#[derive(Debug, Default)]
struct FakeIntegrations(Mutex<Vec<UserId>>);

#[async_trait]
impl Integrations for FakeIntegrations {
    async fn get(
        &self,
        _: AccountId,
        _: crate::ids::CompanyId,
        _: crate::integration::IntegrationKind,
    ) -> Result<Option<crate::integration::Integration>> {
        Ok(None)
    }
    async fn for_account(&self, _: AccountId) -> Result<Vec<crate::integration::Integration>> {
        Ok(Vec::new())
    }
    async fn apply(
        &self,
        _: crate::integration::Change,
    ) -> Result<std::result::Result<crate::integration::Applied, crate::integration::store::Refused>> {
        Ok(Err(crate::integration::store::Refused::NoCompany))
    }
    async fn set_platform_account(
        &self,
        _: AccountId,
        _: crate::ids::CompanyId,
        _: crate::integration::IntegrationKind,
        _: &crate::integration::PlatformAccount,
        _: OffsetDateTime,
    ) -> Result<()> {
        Ok(())
    }
    async fn invites(
        &self,
        _: AccountId,
        _: crate::ids::CompanyId,
        _: crate::integration::IntegrationKind,
    ) -> Result<Vec<crate::invite::Invite>> {
        Ok(Vec::new())
    }
    async fn invite_by_token_digest(&self, _: &str) -> Result<Option<crate::invite::Invite>> {
        Ok(None)
    }
    async fn invite_by_id(&self, _: crate::ids::InviteId) -> Result<Option<crate::invite::Invite>> {
        Ok(None)
    }
    async fn by_platform_account(
        &self,
        _: &str,
        _: &str,
        _: crate::integration::IntegrationKind,
    ) -> Result<Vec<crate::integration::Integration>> {
        Ok(Vec::new())
    }
    async fn pending_invites_for(&self, _: UserId, _: &str, _: OffsetDateTime) -> Result<Vec<crate::invite::Invite>> {
        Ok(Vec::new())
    }
    async fn revoke_invites_of(&self, user: UserId, _: &Actor, _: OffsetDateTime) -> Result<u64> {
        self.0.lock().unwrap().push(user);
        Ok(1)
    }
    async fn resend(
        &self,
        _: AccountId,
        _: crate::ids::CompanyId,
        _: crate::integration::IntegrationKind,
        _: crate::ids::InviteId,
        _: &Actor,
        _: OffsetDateTime,
    ) -> Result<std::result::Result<crate::invite::Invite, crate::integration::store::Refused>> {
        Ok(Err(crate::integration::store::Refused::NoCompany))
    }
}

struct World {
    store: MemoryStore,
    users: FakeUsers,
    links: FakeLinks,
    integrations: FakeIntegrations,
    mail: FakeMail,
    admin: User,
    member: User,
}

fn identity(subject: &str, email: Option<&str>, verified: bool) -> UpstreamIdentity {
    UpstreamIdentity {
        provider: "up".into(),
        issuer: "https://id.example".into(),
        subject: subject.into(),
        email: email.map(str::to_owned),
        email_verified: verified,
        name: Some("Anna".into()),
        auth_time: Some(NOW.unix_timestamp()),
        sid: None,
    }
}

fn session_of(user: &User, id: &str) -> Session {
    Session {
        id: id.into(),
        user_id: user.id,
        account_id: user.account_id,
        amr: vec!["pwd".into()],
        created_at: NOW,
        last_seen_at: NOW,
        idle_expires_at: NOW,
        absolute_expires_at: NOW,
        user_agent: None,
        ip: None,
    }
}

impl World {
    async fn new() -> Self {
        let account = AccountId::new();
        let admin = user("admin@pos.test", Role::Owner, account);
        // The member reads English; the pages of these tests do not say which language.
        let member = User { lang: crate::account::Lang::En, ..user("member@pos.test", Role::Member, account) };
        let hash = ponte_identity::password::hash("correct horse battery".into()).await.unwrap();
        let users = FakeUsers(vec![(admin.clone(), Some(hash.clone())), (member.clone(), Some(hash))]);
        Self {
            store: MemoryStore::new(),
            users,
            links: FakeLinks::default(),
            integrations: FakeIntegrations::default(),
            mail: FakeMail::default(),
            admin,
            member,
        }
    }

    fn stores(&self) -> Stores<'_> {
        Stores { store: &self.store, links: &self.links, users: &self.users }
    }

    /// Starts a flow as `session` would and comes back from the provider as `who`.
    async fn round_trip(
        &self,
        intent: &str,
        starter: Option<&Session>,
        finisher: Option<&Session>,
        who: UpstreamIdentity,
    ) -> CallbackOutcome {
        let provider = FakeProvider { identity: who };
        let request: StartRequest =
            plan_start(&self.users, Some(intent), None, starter).await.unwrap().expect("may start");
        let StartOutcome::Redirect { url, binding } =
            flow::begin(&self.store, &provider, "cb", request, NOW).await.unwrap()
        else {
            panic!("started")
        };
        let state = url.rsplit('=').next().unwrap().to_owned();
        let params = CallbackParams { code: Some("code"), state: Some(&state), ..Default::default() };
        let browser = Browser { binding: Some(&binding), session: finisher, ip: None };
        callback(self.stores(), &provider, "cb", params, browser, NOW).await.unwrap()
    }

    async fn post(&self, id: &str, binding: &str, session: Option<&Session>, action: ConfirmAction) -> ConfirmOutcome {
        let browser = Browser { binding: Some(binding), session, ip: None };
        confirm(self.stores(), &self.mail, id, action, browser, NOW).await.unwrap()
    }

    /// The binding cookie value of the pending link's flow is not kept, so tests that post
    /// to the confirmation page make their pending links directly.
    async fn pending(&self, kind: PendingKind, for_user: &User, initiating_sid: Option<&str>) -> String {
        let pending = Pending {
            kind,
            identity: identity("sub-new", Some(&for_user.email), true),
            account_id: for_user.account_id,
            user_id: for_user.id,
            initiating_sid: initiating_sid.map(str::to_owned),
            binding: ponte_identity::secret::digest("cookie"),
            return_to: "/after".into(),
            code_digest: None,
            epoch: pending::link_epoch(&self.store, for_user.id).await.unwrap(),
        };
        pending::create(&self.store, &pending).await.unwrap()
    }
}

#[tokio::test]
async fn only_a_signed_in_owner_or_admin_may_start_a_link() {
    let w = World::new().await;
    let (admin, member) = (session_of(&w.admin, "a"), session_of(&w.member, "m"));
    let plan = |intent, return_to, session| plan_start(&w.users, intent, return_to, session);
    assert_eq!(plan(Some("link"), None, None).await.unwrap(), Err(Refusal::SignInFirst));
    assert_eq!(plan(Some("link"), None, Some(&member)).await.unwrap(), Err(Refusal::LinkNotAllowed));
    assert_eq!(plan(Some("steal"), None, Some(&admin)).await.unwrap(), Err(Refusal::InvalidRequest));
    assert_eq!(
        plan(Some("link"), Some("https://evil.example/"), Some(&admin)).await.unwrap(),
        Err(Refusal::InvalidReturnTo)
    );
    let request = plan(Some("register"), Some("/back"), Some(&admin)).await.unwrap().unwrap();
    assert_eq!(request.initiator.map(|i| i.session_id).as_deref(), Some("a"));
    assert!(plan(None, None, None).await.unwrap().unwrap().initiator.is_none(), "a login needs no session");
}

#[tokio::test]
async fn a_link_flow_is_confirmed_only_from_the_session_that_started_it() {
    let w = World::new().await;
    let (admin, other) = (session_of(&w.admin, "a"), session_of(&w.admin, "another-session"));
    let who = identity("sub-1", Some("anna@up.test"), true);
    assert_eq!(
        w.round_trip("link", Some(&admin), Some(&other), who.clone()).await,
        CallbackOutcome::Refused(Refusal::FlowOtherBrowser)
    );
    assert_eq!(
        w.round_trip("link", Some(&admin), None, who.clone()).await,
        CallbackOutcome::Refused(Refusal::FlowOtherBrowser)
    );
    assert!(matches!(w.round_trip("link", Some(&admin), Some(&admin), who).await, CallbackOutcome::ConfirmLink { .. }));
    assert!(w.links.0.lock().unwrap().is_empty(), "nothing links before Continue");
}

#[tokio::test]
async fn a_login_signs_in_the_linked_user_or_offers_a_proof_never_a_silent_link() {
    let w = World::new().await;
    let linked = identity("sub-linked", None, false);
    w.links.link(&w.member, &linked, &Actor::user(w.member.id, None), NOW).await.unwrap();
    match w.round_trip("login", None, None, linked).await {
        CallbackOutcome::SignIn { user, return_to, .. } => {
            assert_eq!((user.id, return_to.as_str()), (w.member.id, "/"))
        }
        other => panic!("{other:?}"),
    }
    let same_email = identity("sub-new", Some("member@pos.test"), true);
    assert!(matches!(w.round_trip("login", None, None, same_email).await, CallbackOutcome::ProveExisting { .. }));
    let unverified = identity("sub-new", Some("member@pos.test"), false);
    assert_eq!(w.round_trip("login", None, None, unverified).await, CallbackOutcome::Refused(Refusal::NotLinked));
    let stranger = identity("sub-x", Some("nobody@pos.test"), true);
    assert_eq!(w.round_trip("login", None, None, stranger).await, CallbackOutcome::Refused(Refusal::NotLinked));
    assert_eq!(w.links.0.lock().unwrap().len(), 1, "only the link made on purpose");
}

#[tokio::test]
async fn continue_links_once_and_an_identity_never_moves_to_another_user() {
    let w = World::new().await;
    let admin = session_of(&w.admin, "a");
    let id = w.pending(PendingKind::Confirm, &w.admin, Some("a")).await;
    let member = session_of(&w.member, "m");
    assert_eq!(
        w.post(&id, "cookie", Some(&member), ConfirmAction::Continue).await,
        ConfirmOutcome::Refused(Refusal::FlowOtherBrowser)
    );
    assert_eq!(
        w.post(&id, "other-cookie", Some(&admin), ConfirmAction::Continue).await,
        ConfirmOutcome::Refused(Refusal::FlowOtherBrowser)
    );
    assert_eq!(
        w.post(&id, "cookie", Some(&admin), ConfirmAction::Password("x".into())).await,
        ConfirmOutcome::Refused(Refusal::InvalidRequest),
        "a confirmation is not a proof"
    );
    assert_eq!(
        w.post(&id, "cookie", Some(&admin), ConfirmAction::Continue).await,
        ConfirmOutcome::Linked { return_to: "/after".into() }
    );
    assert_eq!(
        w.post(&id, "cookie", Some(&admin), ConfirmAction::Continue).await,
        ConfirmOutcome::Refused(Refusal::FlowExpired),
        "a pending link is used once"
    );
    // The same upstream identity, offered to another user, is refused.
    let again = w.pending(PendingKind::ProveExisting, &w.member, None).await;
    assert_eq!(
        w.post(&again, "cookie", None, ConfirmAction::Password("correct horse battery".into())).await,
        ConfirmOutcome::Refused(Refusal::IdentityLinkedElsewhere)
    );
}

#[tokio::test]
async fn an_existing_account_is_proved_by_password_or_emailed_code_with_attempts_capped() {
    let w = World::new().await;
    let id = w.pending(PendingKind::ProveExisting, &w.member, None).await;
    let wrong = w.post(&id, "cookie", None, ConfirmAction::Password("guess".into())).await;
    assert!(matches!(wrong, ConfirmOutcome::Ask { notice: Notice::WrongProof, .. }), "{wrong:?}");
    let sent = w.post(&id, "cookie", None, ConfirmAction::SendCode).await;
    let ConfirmOutcome::Ask { view, notice: Notice::CodeSent } = sent else { panic!("{sent:?}") };
    assert!(view.code_sent);
    assert_eq!(view.account_name, "Bar Roma");
    let (to, code) = w.mail.0.lock().unwrap()[0].clone();
    assert_eq!(to, "member@pos.test", "the code goes to the existing account, not upstream");
    assert_eq!(w.mail.1.lock().unwrap()[0], crate::account::Lang::En, "in the recipient's language");
    match w.post(&id, "cookie", None, ConfirmAction::Code(code)).await {
        ConfirmOutcome::SignIn { user, return_to, .. } => {
            assert_eq!((user.id, return_to.as_str()), (w.member.id, "/after"))
        }
        other => panic!("{other:?}"),
    }

    // Guessing: five attempts per pending link, then it is gone.
    let guessed = w.pending(PendingKind::ProveExisting, &w.admin, None).await;
    for _ in 0..pending::MAX_PROOF_ATTEMPTS {
        let outcome = w.post(&guessed, "cookie", None, ConfirmAction::Code("00000000".into())).await;
        assert!(matches!(outcome, ConfirmOutcome::Ask { notice: Notice::WrongProof, .. }));
    }
    assert_eq!(
        w.post(&guessed, "cookie", None, ConfirmAction::Password("correct horse battery".into())).await,
        ConfirmOutcome::Refused(Refusal::TooManyAttempts),
        "even the right password, after five wrong guesses"
    );
    assert_eq!(
        w.post(&guessed, "cookie", None, ConfirmAction::Cancel).await,
        ConfirmOutcome::Refused(Refusal::FlowExpired),
        "the pending link was dropped"
    );
}

#[tokio::test]
async fn a_code_whose_mail_could_not_be_queued_is_neither_offered_nor_accepted() {
    let w = World::new().await;
    let id = w.pending(PendingKind::ProveExisting, &w.member, None).await;
    let down = DownMail::default();
    let browser = Browser { binding: Some("cookie"), ..Default::default() };
    let failed = confirm(w.stores(), &down, &id, ConfirmAction::SendCode, browser, NOW).await.unwrap();
    assert_eq!(failed, ConfirmOutcome::MailUnavailable);
    let view = confirmation(w.stores(), &id, browser).await.unwrap().unwrap();
    assert!(!view.code_sent, "no code field for a mail that never left");
    let unsent = down.0.lock().unwrap()[0].clone();
    let tried = w.post(&id, "cookie", None, ConfirmAction::Code(unsent)).await;
    assert!(matches!(tried, ConfirmOutcome::Ask { notice: Notice::WrongProof, .. }), "{tried:?}");

    // A code that did leave stays good when a later resend fails.
    let sent = w.post(&id, "cookie", None, ConfirmAction::SendCode).await;
    assert!(matches!(sent, ConfirmOutcome::Ask { notice: Notice::CodeSent, .. }), "{sent:?}");
    let (_, code) = w.mail.0.lock().unwrap()[0].clone();
    let failed = confirm(w.stores(), &down, &id, ConfirmAction::SendCode, browser, NOW).await.unwrap();
    assert_eq!(failed, ConfirmOutcome::MailUnavailable);
    assert!(confirmation(w.stores(), &id, browser).await.unwrap().unwrap().code_sent);
    assert!(matches!(w.post(&id, "cookie", None, ConfirmAction::Code(code)).await, ConfirmOutcome::SignIn { .. }));
}

/// A mail outbox slow enough that the pending link is consumed (a Cancel in another tab)
/// while the code is being queued.
struct RacingMail<'a> {
    store: &'a MemoryStore,
    id: String,
}

#[async_trait]
impl LinkCodeMail for RacingMail<'_> {
    async fn send_link_code(&self, _mail: LinkCode<'_>) -> std::result::Result<(), MailUnavailable> {
        assert!(pending::take(self.store, &self.id).await.unwrap(), "the other request consumes it");
        Ok(())
    }
}

#[tokio::test]
async fn a_pending_link_consumed_while_its_code_is_queued_stays_consumed() {
    let w = World::new().await;
    let id = w.pending(PendingKind::ProveExisting, &w.member, None).await;
    let racing = RacingMail { store: &w.store, id: id.clone() };
    let browser = Browser { binding: Some("cookie"), ..Default::default() };
    let outcome = confirm(w.stores(), &racing, &id, ConfirmAction::SendCode, browser, NOW).await.unwrap();
    assert_eq!(outcome, ConfirmOutcome::Refused(Refusal::FlowExpired));
    assert!(confirmation(w.stores(), &id, browser).await.unwrap().is_err(), "not brought back by the late write");
}

#[tokio::test]
async fn an_unlink_voids_pending_links_and_cancel_drops_one() {
    let w = World::new().await;
    let id = w.pending(PendingKind::ProveExisting, &w.member, None).await;
    let linked = identity("sub-linked", None, false);
    let actor = Actor::user(w.member.id, None);
    w.links.link(&w.member, &linked, &actor, NOW).await.unwrap();
    let unlink =
        |provider| unlink(&w.store, &w.links, &w.integrations, w.member.account_id, w.member.id, provider, &actor, NOW);
    assert!(!unlink("elsewhere").await.unwrap());
    assert!(w.integrations.0.lock().unwrap().is_empty(), "no link, nothing revoked");
    assert!(
        confirmation(w.stores(), &id, Browser { binding: Some("cookie"), ..Default::default() }).await.unwrap().is_ok()
    );
    assert!(unlink("up").await.unwrap());
    assert_eq!(w.integrations.0.lock().unwrap().as_slice(), &[w.member.id], "their pending invites are revoked");
    assert_eq!(
        confirmation(w.stores(), &id, Browser { binding: Some("cookie"), ..Default::default() }).await.unwrap(),
        Err(Refusal::FlowExpired),
        "voided by the unlink"
    );
    let fresh = w.pending(PendingKind::ProveExisting, &w.member, None).await;
    assert_eq!(
        w.post(&fresh, "cookie", None, ConfirmAction::Cancel).await,
        ConfirmOutcome::Cancelled { return_to: "/after".into() }
    );
    assert_eq!(
        w.post(&fresh, "cookie", None, ConfirmAction::Cancel).await,
        ConfirmOutcome::Refused(Refusal::FlowExpired)
    );
}

#[tokio::test]
async fn an_invite_flow_yields_the_fresh_identity_and_the_digest_whoever_is_signed_in() {
    let w = World::new().await;
    let provider = FakeProvider { identity: identity("sub-invitee", Some("anna@pos.test"), true) };
    let request = plan_invite(ponte_identity::secret::digest("invite-token"));
    assert_eq!(request.intent, ponte_identity::federation::Intent::AcceptInvite);
    let StartOutcome::Redirect { url, binding } = flow::begin(&w.store, &provider, "cb", request, NOW).await.unwrap()
    else {
        panic!("started")
    };
    let state = url.rsplit('=').next().unwrap().to_owned();
    let params = CallbackParams { code: Some("code"), state: Some(&state), ..Default::default() };
    // The browser holds someone else's Ponte session: it counts for nothing.
    let admin = session_of(&w.admin, "a");
    let browser = Browser { binding: Some(&binding), session: Some(&admin), ip: None };
    match callback(w.stores(), &provider, "cb", params, browser, NOW).await.unwrap() {
        CallbackOutcome::AcceptInvite { identity, invite_digest } => {
            assert_eq!(identity.subject, "sub-invitee");
            assert_eq!(invite_digest, ponte_identity::secret::digest("invite-token"));
        }
        other => panic!("{other:?}"),
    }
    assert!(w.links.0.lock().unwrap().is_empty(), "nothing was linked");
}
