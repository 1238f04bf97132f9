//! Collaboration invites in the browser, against the upstream provider of the federation
//! suite: the invite page, the fresh upstream sign-in it starts, acceptance by the right
//! person only (whatever sessions the browser holds), expiry and resend, the fallback
//! offer after a login, revoke on unlink, and the owner's view of the companies.

use async_trait::async_trait;
use ponte_identity::federation::flow::flow_key;
use ponte_identity::jobs::JobStore;
use ponte_identity::outbox::{Message, OutgoingMail};
use ponte_identity::secret::digest;
use ponte_identity::upstream::UpstreamIdentity;
use ponte_linking::account::User;
use ponte_linking::audit::Actor;
use ponte_linking::company::{CompanyData, CompanyDraft};
use ponte_linking::ids::{AccountId, CompanyId, UserId};
use ponte_linking::integration::actions::{self, PlatformLookup, Stores, Target};
use ponte_linking::integration::{Integration, IntegrationKind, IntegrationState, PlatformAccount, jobs};
use ponte_linking::invite::{Invite, InviteState};
use serde_json::json;
use time::Duration;

use crate::federation::{PASSWORD, World, location, query_of};
use crate::harness::{NowForTest, TestApp, TestDb, TestRedis, csrf_from, dd};

const KIND: IntegrationKind = IntegrationKind::DigitalInvoice;
const INVITEE_UPSTREAM: &str = "mario.rossi@gruppo.it";
const MASKED: &str = "m***i@gruppo.it";

/// The platform already has an account for every VAT number.
#[derive(Debug)]
struct Existing;

#[async_trait]
impl PlatformLookup for Existing {
    async fn find_account(&self, _: &str) -> Result<Option<PlatformAccount>, String> {
        Ok(Some(PlatformAccount {
            id: "pa-77".into(),
            legal_name: "Bar Sport S.r.l. (piattaforma)".into(),
            owner_email: None,
        }))
    }
}

/// A world whose owner's external ID is linked and whose company waits for the invite.
struct Invited {
    world: World,
    account: AccountId,
    owner: User,
    company: CompanyId,
    token: String,
}

fn ponte(w: &World) -> &TestApp {
    &w.ponte
}

/// The upstream identity of `email`, as Ponte would see it after a sign-in.
async fn upstream_identity(world: &World, email: &str) -> UpstreamIdentity {
    let user = world.upstream.state.users.login_candidate(email).await.unwrap().expect("upstream user").user;
    UpstreamIdentity {
        provider: "up".into(),
        issuer: world.upstream.base.clone(),
        subject: user.id.to_string(),
        email: Some(email.into()),
        email_verified: true,
        name: None,
        auth_time: None,
        sid: None,
    }
}

/// Links `email`'s upstream identity to `user`.
async fn link(world: &World, user: &User, email: &str) {
    let identity = upstream_identity(world, email).await;
    let now = world.ponte.clock.now_for_test();
    world.ponte.state.links.link(user, &identity, &Actor::system(), now).await.unwrap();
}

fn company_data(legal_name: &str, vat: &str) -> CompanyData {
    let draft: CompanyDraft = serde_json::from_value(json!({
        "legal_name": legal_name,
        "vat_number": vat,
        "tax_code": vat,
        "address": {"street": "Via Roma 1", "city": "Milano", "postal_code": "20121", "province": "MI", "country": "IT"},
        "sdi_code": "M5UXCR1",
    }))
    .unwrap();
    CompanyData::parse(&draft).unwrap()
}

fn target(app: &TestApp, account: AccountId, company: CompanyId) -> Target {
    Target { account, company, kind: KIND, actor: Actor::system(), now: app.clock.now_for_test() }
}

/// The newest invite link queued as a `mail.send` job, read as the worker would.
async fn newest_invite_token(app: &TestApp) -> String {
    for job in app.state.jobs.list(None, None, 200).await.unwrap() {
        if job.kind != "mail.send" {
            continue;
        }
        let mail = OutgoingMail::from_payload(&job.payload, &app.state.master).unwrap();
        if let Message::CollaborationInvite { link, .. } = mail.message {
            return link.rsplit("/invites/").next().unwrap().to_owned();
        }
    }
    panic!("no invite mail queued")
}

/// Adds a company to `account` and drives its integration to `invite_pending`.
async fn invite_for(world: &World, account: AccountId, name: &str, vat: &str) -> CompanyId {
    let app = ponte(world);
    let now = app.clock.now_for_test();
    let company = app.state.companies.create(account, company_data(name, vat), &Actor::system(), now).await.unwrap();
    let stores = Stores {
        integrations: app.state.integrations.as_ref(),
        users: app.state.users.as_ref(),
        links: app.state.links.as_ref(),
    };
    let t = target(app, account, company.id);
    let found = actions::reactivate(stores, &Existing, &t, company_data(name, vat), None).await.unwrap().unwrap();
    assert_eq!(found.integration().state, IntegrationState::AwaitingConfirmation);
    let confirmed = actions::confirm(stores, &t, None).await.unwrap().unwrap();
    assert_eq!(confirmed.integration().state, IntegrationState::InvitePending);
    company.id
}

impl Invited {
    async fn new() -> Self {
        Self::on(World::new().await).await
    }

    async fn on(world: World) -> Self {
        let account: AccountId = world.account["id"].as_str().unwrap().parse().unwrap();
        let owner_id: UserId = world.account["owner"]["id"].as_str().unwrap().parse().unwrap();
        let owner = world.ponte.state.users.get(account, owner_id).await.unwrap().unwrap();
        link(&world, &owner, INVITEE_UPSTREAM).await;
        let company = invite_for(&world, account, "Bar Sport S.r.l.", "12345670017").await;
        let token = newest_invite_token(&world.ponte).await;
        Self { world, account, owner, company, token }
    }

    fn app(&self) -> &TestApp {
        &self.world.ponte
    }

    async fn integration(&self) -> Integration {
        self.app().state.integrations.get(self.account, self.company, KIND).await.unwrap().unwrap()
    }

    async fn invite(&self) -> Invite {
        self.app().state.integrations.invites(self.account, self.company, KIND).await.unwrap().remove(0)
    }

    async fn audit_actions(&self) -> Vec<String> {
        self.app().state.audit.list(self.account, 100).await.unwrap().into_iter().map(|e| e.action).collect()
    }

    async fn jobs_of(&self, kind: &str) -> usize {
        self.app().state.jobs.list(None, None, 500).await.unwrap().iter().filter(|j| j.kind == kind).count()
    }

    /// Opens the invite page and presses the button; returns the response to the press.
    async fn press_accept(&self, browser: &reqwest::Client, token: &str) -> reqwest::Response {
        let page = browser.get(self.app().url(&format!("/invites/{token}"))).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let html = page.text().await.unwrap();
        browser
            .post(self.app().url(&format!("/invites/{token}")))
            .form(&[("csrf_token", csrf_from(&html))])
            .send()
            .await
            .unwrap()
    }

    /// Presses the button and signs in upstream as `upstream_user`; returns the last page
    /// and the way there.
    async fn accept_as(
        &self,
        browser: &reqwest::Client,
        token: &str,
        upstream_user: &str,
    ) -> (reqwest::Response, Vec<String>) {
        let pressed = self.press_accept(browser, token).await;
        assert_eq!(pressed.status(), 303);
        self.world.browse(browser, &location(&pressed), upstream_user).await
    }
}

#[tokio::test]
async fn the_invite_page_shows_the_company_the_platform_account_and_the_masked_email() {
    let w = Invited::new().await;
    let browser = w.app().browser();
    let page = browser
        .get(w.app().url(&format!("/invites/{}", w.token)))
        .header("accept-language", "it-IT,it;q=0.9")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert_eq!(dd(&html, "invite-company"), "Bar Sport S.r.l.");
    assert_eq!(dd(&html, "invite-vat"), "12345670017");
    assert!(dd(&html, "invite-platform-account").contains("pa-77"), "{html}");
    assert_eq!(dd(&html, "invite-email"), MASKED);
    assert!(!dd(&html, "invite-expires").is_empty());
    assert!(html.contains("Accetta con il tuo ID esterno") && html.contains("name=\"csrf_token\""), "{html}");
    assert!(!html.contains(INVITEE_UPSTREAM), "the invited address is masked");
    let english = browser.get(w.app().url(&format!("/invites/{}", w.token))).send().await.unwrap();
    assert!(english.text().await.unwrap().contains("Accept with your external ID"));
}

#[tokio::test]
async fn a_bad_or_unknown_token_gets_a_404_page_never_a_500() {
    let w = Invited::new().await;
    let browser = w.app().browser();
    let long = "a".repeat(129);
    for token in
        [long.as_str(), "not.base64url", "%00", "%E2%80%AE", "x%20y", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"]
    {
        let r = browser.get(w.app().url(&format!("/invites/{token}"))).send().await.unwrap();
        assert_eq!(r.status(), 404, "{token}");
        let html = r.text().await.unwrap();
        assert!(html.contains("data-code=\"invite_unknown\"") && !html.contains("<form"), "{token}: {html}");
        let posted = browser.post(w.app().url(&format!("/invites/{token}"))).form(&[("csrf_token", "x")]).send();
        assert!(posted.await.unwrap().status().is_client_error(), "{token}");
    }
}

#[tokio::test]
async fn the_invitees_fresh_sign_in_accepts_once_and_activates() {
    let w = Invited::new().await;
    let browser = w.app().browser();
    let no_csrf =
        browser.post(w.app().url(&format!("/invites/{}", w.token))).form(&[("other", "x")]).send().await.unwrap();
    assert_eq!(no_csrf.status(), 403, "the form must come from the page");

    let pressed = w.press_accept(&browser, &w.token).await;
    assert_eq!(pressed.status(), 303);
    let authorize = location(&pressed);
    assert!(authorize.starts_with(&w.world.upstream.base), "{authorize}");
    let asked = query_of(&authorize);
    assert_eq!(asked["prompt"], "login", "a stale upstream session cannot answer");
    assert_eq!(asked["max_age"], "0");
    let kept = w.app().state.sessions.store().peek(&flow_key(&asked["state"])).await.unwrap().expect("flow kept");
    assert!(!kept.contains(&w.token), "the flow never holds the raw token: {kept}");
    assert!(kept.contains(&digest(&w.token)) && kept.contains("accept_invite"), "{kept}");
    assert_eq!(w.integration().await.state, IntegrationState::InvitePending, "nothing before the sign-in");

    let (done, seen) = w.world.browse(&browser, &authorize, INVITEE_UPSTREAM).await;
    assert!(seen.iter().any(|s| s == "upstream-login"), "credentials were asked for: {seen:?}");
    assert_eq!(done.status(), 200);
    let html = done.text().await.unwrap();
    assert!(html.contains("id=\"invite-accepted\"") && html.contains("Bar Sport S.r.l."), "{html}");
    assert_eq!(w.integration().await.state, IntegrationState::Activating);
    assert_eq!(w.jobs_of(jobs::ACTIVATE).await, 1, "one activation queued");
    let invite = w.invite().await;
    assert_eq!(invite.state, InviteState::Accepted);
    assert!(w.audit_actions().await.iter().any(|a| a == "invite.accepted"));

    let again = browser.get(w.app().url(&format!("/invites/{}", w.token))).send().await.unwrap();
    assert_eq!(again.status(), 410, "a used link fails closed");
    assert!(again.text().await.unwrap().contains("invite_used"));
    let posted =
        browser.post(w.app().url(&format!("/invites/{}", w.token))).form(&[("csrf_token", "x")]).send().await.unwrap();
    assert_eq!(posted.status(), 403, "CSRF first");
    assert_eq!(w.jobs_of(jobs::ACTIVATE).await, 1, "and never a second activation");
}

#[tokio::test]
async fn another_upstream_person_is_refused_and_nothing_moves() {
    let w = Invited::new().await;
    // Bruno is linked to nobody.
    let (refused, _) = w.accept_as(&w.app().browser(), &w.token, "bruno@gruppo.it").await;
    assert_eq!(refused.status(), 403);
    let html = refused.text().await.unwrap();
    assert!(html.contains("data-code=\"invite_wrong_person\""), "{html}");
    assert!(html.contains(MASKED) && html.contains("bruno@gruppo.it"), "names both: {html}");
    assert_eq!(w.integration().await.state, IntegrationState::InvitePending);

    // Bruno is linked to a user of another account.
    let other = w.app().create_account(&w.world.admin_token, "luigi@esempio.it", PASSWORD).await;
    let other_account: AccountId = other["id"].as_str().unwrap().parse().unwrap();
    let luigi_id: UserId = other["owner"]["id"].as_str().unwrap().parse().unwrap();
    let luigi = w.app().state.users.get(other_account, luigi_id).await.unwrap().unwrap();
    link(&w.world, &luigi, "bruno@gruppo.it").await;
    let (refused, _) = w.accept_as(&w.app().browser(), &w.token, "bruno@gruppo.it").await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("invite_wrong_person"));

    assert_eq!(w.integration().await.state, IntegrationState::InvitePending);
    assert_eq!(w.invite().await.state, InviteState::Pending, "the right person can still accept");
    assert_eq!(w.jobs_of(jobs::ACTIVATE).await, 0);
    assert!(w.audit_actions().await.iter().any(|a| a == "invite.refused"));
    let (done, _) = w.accept_as(&w.app().browser(), &w.token, INVITEE_UPSTREAM).await;
    assert_eq!(done.status(), 200);
    assert_eq!(w.integration().await.state, IntegrationState::Activating);
}

#[tokio::test]
async fn the_right_person_without_a_verified_email_is_refused() {
    let w = Invited::on(World::unverified_emails().await).await;
    let (refused, _) = w.accept_as(&w.app().browser(), &w.token, INVITEE_UPSTREAM).await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("data-code=\"invite_email_mismatch\""));
    assert_eq!(w.integration().await.state, IntegrationState::InvitePending);
    assert_eq!(w.invite().await.state, InviteState::Pending);
}

#[tokio::test]
async fn an_expired_invite_fails_closed_and_a_resend_revives_it_with_a_new_link() {
    let w = Invited::new().await;
    for clock in [&w.app().clock, &w.world.upstream.clock] {
        clock.advance(Duration::days(8));
    }
    let browser = w.app().browser();
    let expired = browser.get(w.app().url(&format!("/invites/{}", w.token))).send().await.unwrap();
    assert_eq!(expired.status(), 410);
    let html = expired.text().await.unwrap();
    assert!(html.contains("data-code=\"invite_expired\"") && !html.contains("<form"), "{html}");

    let invite = w.invite().await;
    let now = w.app().clock.now_for_test();
    let system = Actor::system();
    let resent = w.app().state.integrations.resend(w.account, w.company, KIND, invite.id, &system, now);
    let resent = resent.await.unwrap().unwrap();
    assert!(resent.expires_at > now);
    let fresh = newest_invite_token(w.app()).await;
    assert_ne!(fresh, w.token, "a resend rotates the token");
    let old = browser.get(w.app().url(&format!("/invites/{}", w.token))).send().await.unwrap();
    assert_eq!(old.status(), 404, "the old link stays dead");
    assert!(old.text().await.unwrap().contains("invite_unknown"));

    let (done, _) = w.accept_as(&browser, &fresh, INVITEE_UPSTREAM).await;
    assert_eq!(done.status(), 200);
    assert_eq!(w.integration().await.state, IntegrationState::Activating);
}

/// Signs in with the external ID (intent login) and returns the offer page and its URL.
async fn offer_after_login(w: &Invited, browser: &reqwest::Client) -> (String, String) {
    let start = w.app().url("/federation/up/start?intent=login&return_to=/after");
    let (page, seen) = w.world.browse(browser, &start, INVITEE_UPSTREAM).await;
    assert_eq!(page.status(), 200);
    let offer_url = seen.iter().find(|u| u.contains("/invites/offer?offer=")).expect("sent to the offer").clone();
    (page.text().await.unwrap(), offer_url)
}

fn offer_form(html: &str) -> Vec<(&'static str, String)> {
    let field = |name: &str| {
        html.split(&format!("name=\"{name}\" value=\"")).nth(1).unwrap().split('"').next().unwrap().to_owned()
    };
    vec![("csrf_token", csrf_from(html)), ("offer", field("offer")), ("invite", field("invite"))]
}

#[tokio::test]
async fn the_offer_after_a_login_lists_the_invite_and_accepting_there_activates() {
    let w = Invited::new().await;
    let browser = w.app().browser();
    let (html, _) = offer_after_login(&w, &browser).await;
    assert!(html.contains("Bar Sport S.r.l.") && html.contains(MASKED), "{html}");
    assert!(html.contains("id=\"offer-not-now\" href=\"/after\""), "not now returns where the login was going");
    assert_eq!(browser.get(w.app().url("/")).send().await.unwrap().status(), 200, "the sign-in itself happened");

    let form = offer_form(&html);
    let done = browser.post(w.app().url("/invites/offer")).form(&form).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert!(done.text().await.unwrap().contains("id=\"invite-accepted\""));
    assert_eq!(w.integration().await.state, IntegrationState::Activating);
    assert_eq!(w.invite().await.state, InviteState::Accepted);
    assert_eq!(w.jobs_of(jobs::ACTIVATE).await, 1);

    let replay = browser.post(w.app().url("/invites/offer")).form(&form).send().await.unwrap();
    assert_eq!(replay.status(), 400, "an offer is used once");
    assert!(replay.text().await.unwrap().contains("offer_expired"));

    // Nothing waits any more: the next login goes straight to return_to.
    let start = w.app().url("/federation/up/start?intent=login&return_to=/after");
    let (_, seen) = w.world.browse(&w.app().browser(), &start, INVITEE_UPSTREAM).await;
    assert!(!seen.iter().any(|u| u.contains("/invites/offer")), "{seen:?}");
}

#[tokio::test]
async fn the_offer_is_only_usable_by_the_session_it_was_made_for() {
    let w = Invited::new().await;
    let browser = w.app().browser();
    let (html, offer_url) = offer_after_login(&w, &browser).await;
    let form = offer_form(&html);

    // The same user signed in elsewhere with a password, and a browser with no session.
    let elsewhere = w.app().browser();
    assert_eq!(w.world.password_login(w.app(), &elsewhere, "mario@esempio.it", None).await.status(), 303);
    for stranger in [&elsewhere, &w.app().browser()] {
        let seen = stranger.get(&offer_url).send().await.unwrap();
        assert_eq!(seen.status(), 400);
        assert!(!seen.text().await.unwrap().contains("Bar Sport"), "shows nothing of the offer");
        let page = stranger.get(w.app().url("/login")).send().await.unwrap().text().await.unwrap();
        let mut theirs = form.clone();
        theirs[0].1 = csrf_from(&page);
        let posted = stranger.post(w.app().url("/invites/offer")).form(&theirs).send().await.unwrap();
        assert_eq!(posted.status(), 400);
    }
    assert_eq!(w.integration().await.state, IntegrationState::InvitePending);

    let done = browser.post(w.app().url("/invites/offer")).form(&form).send().await.unwrap();
    assert_eq!(done.status(), 200, "the strangers did not spend it");
    assert_eq!(w.integration().await.state, IntegrationState::Activating);
}

#[tokio::test]
async fn a_browser_holding_other_ponte_sessions_accepts_only_as_the_fresh_upstream_identity() {
    let w = Invited::new().await;
    // The owner's own Ponte session does not make a sign-in upstream as Bruno acceptable.
    let owners = w.app().browser();
    assert_eq!(w.world.password_login(w.app(), &owners, "mario@esempio.it", None).await.status(), 303);
    let (refused, _) = w.accept_as(&owners, &w.token, "bruno@gruppo.it").await;
    assert_eq!(refused.status(), 403);
    assert!(refused.text().await.unwrap().contains("invite_wrong_person"));
    assert_eq!(w.integration().await.state, IntegrationState::InvitePending);

    // Luigi's Ponte session (another account) plus a stale upstream session of Bruno's do
    // not stop the invitee, and are left as they were.
    let other = w.app().create_account(&w.world.admin_token, "luigi@esempio.it", PASSWORD).await;
    let shared = w.app().browser();
    assert_eq!(w.world.password_login(w.app(), &shared, "luigi@esempio.it", None).await.status(), 303);
    assert_eq!(w.world.password_login(&w.world.upstream, &shared, "bruno@gruppo.it", None).await.status(), 303);
    let owner_sessions_before =
        w.app().state.sessions.list_for_user(w.owner.id, w.app().clock.now_for_test()).await.unwrap().len();
    let (done, seen) = w.accept_as(&shared, &w.token, INVITEE_UPSTREAM).await;
    assert!(seen.iter().any(|s| s == "upstream-login"), "asked upstream despite Bruno's session: {seen:?}");
    assert_eq!(done.status(), 200);
    assert_eq!(w.integration().await.state, IntegrationState::Activating);
    let home = shared.get(w.app().url("/")).send().await.unwrap().text().await.unwrap();
    assert!(home.contains("luigi@esempio.it"), "the browser's Ponte session is still Luigi's");
    let owner_sessions_after =
        w.app().state.sessions.list_for_user(w.owner.id, w.app().clock.now_for_test()).await.unwrap().len();
    assert_eq!(owner_sessions_after, owner_sessions_before, "accepting signs nobody in to Ponte");
    let luigi: UserId = other["owner"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(w.app().state.sessions.list_for_user(luigi, w.app().clock.now_for_test()).await.unwrap().len(), 1);
}

#[tokio::test]
async fn two_companies_with_two_invitees_in_one_browser_each_activate_only_for_their_own() {
    let w = Invited::new().await;
    // A second company whose invite goes to an admin linked to Bruno's external ID.
    let admin = w
        .app()
        .browser()
        .post(w.app().url(&format!("/api/v1/accounts/{}/users", w.account)))
        .bearer_auth(&w.world.admin_token)
        .json(&json!({"email": "bruno@esempio.it", "name": "Bruno", "role": "admin", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 201);
    let admin_id: UserId = admin.json::<serde_json::Value>().await.unwrap()["id"].as_str().unwrap().parse().unwrap();
    let bruno = w.app().state.users.get(w.account, admin_id).await.unwrap().unwrap();
    link(&w.world, &bruno, "bruno@gruppo.it").await;
    let app = w.app();
    let (system, now) = (Actor::system(), app.clock.now_for_test());
    let second = app.state.companies.create(w.account, company_data("Pizzeria Due", "07654321004"), &system, now);
    let second = second.await.unwrap();
    let stores = Stores {
        integrations: app.state.integrations.as_ref(),
        users: app.state.users.as_ref(),
        links: app.state.links.as_ref(),
    };
    let t = target(app, w.account, second.id);
    actions::reactivate(stores, &Existing, &t, company_data("Pizzeria Due", "07654321004"), Some(admin_id))
        .await
        .unwrap()
        .unwrap();
    actions::confirm(stores, &t, None).await.unwrap().unwrap();
    let second_token = newest_invite_token(app).await;
    assert_ne!(second_token, w.token);

    let browser = app.browser();
    // Bruno opens Mario's invite in the shared browser: refused.
    let (refused, _) = w.accept_as(&browser, &w.token, "bruno@gruppo.it").await;
    assert_eq!(refused.status(), 403);
    // Then each opens their own.
    let (done, _) = w.accept_as(&browser, &second_token, "bruno@gruppo.it").await;
    assert_eq!(done.status(), 200);
    let second_state = app.state.integrations.get(w.account, second.id, KIND).await.unwrap().unwrap().state;
    assert_eq!(second_state, IntegrationState::Activating);
    assert_eq!(w.integration().await.state, IntegrationState::InvitePending, "Mario's company did not move");
    let (done, _) = w.accept_as(&browser, &w.token, INVITEE_UPSTREAM).await;
    assert_eq!(done.status(), 200);
    assert_eq!(w.integration().await.state, IntegrationState::Activating);
}

#[tokio::test]
async fn unlinking_the_invitees_external_id_revokes_the_pending_invite() {
    let w = Invited::new().await;
    let url = format!("/api/v1/accounts/{}/users/{}/identities/up", w.account, w.owner.id);
    let r = w.app().browser().delete(w.app().url(&url)).bearer_auth(&w.world.admin_token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(w.invite().await.state, InviteState::Revoked);
    assert!(w.audit_actions().await.iter().any(|a| a == "invite.revoked"));
    let page = w.app().browser().get(w.app().url(&format!("/invites/{}", w.token))).send().await.unwrap();
    assert_eq!(page.status(), 410);
    assert!(page.text().await.unwrap().contains("invite_revoked"));
}

#[tokio::test]
async fn the_owners_page_shows_each_company_with_its_chain_icon_and_next_step() {
    let w = Invited::new().await;
    let browser = w.app().browser();
    assert_eq!(w.world.password_login(w.app(), &browser, "mario@esempio.it", None).await.status(), 303);
    let home = |b: &reqwest::Client| {
        let req = b.get(w.app().url("/")).header("accept-language", "it");
        async move { req.send().await.unwrap().text().await.unwrap() }
    };
    let html = home(&browser).await;
    let row = html.split(&format!("data-company=\"{}\"", w.company)).nth(1).expect("the company's row").to_owned();
    let row = row.split("</tr>").next().unwrap();
    assert!(row.contains("data-state=\"invite_pending\"") && row.contains("data-linked=\"false\""), "{row}");
    assert!(row.contains("non collegata") && row.contains(MASKED), "Italian next step naming the invite: {row}");

    let t = target(w.app(), w.account, w.company);
    let (done, _) = w.accept_as(&w.app().browser(), &w.token, INVITEE_UPSTREAM).await;
    assert_eq!(done.status(), 200);
    actions::activated(w.app().state.integrations.as_ref(), &t).await.unwrap().unwrap();
    let html = home(&browser).await;
    let row = html.split(&format!("data-company=\"{}\"", w.company)).nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(row.contains("data-linked=\"true\"") && row.contains("collegata"), "{row}");
    assert!(row.contains("integrazione è attiva"), "{row}");
}

#[tokio::test]
async fn the_link_and_the_offer_accept_on_postgres_and_redis_too() {
    let Some(db) = TestDb::postgres().await else { return };
    let Some(redis) = TestRedis::new() else { return };
    let w = Invited::on(World::on(db, Some(redis)).await).await;
    let (refused, _) = w.accept_as(&w.app().browser(), &w.token, "bruno@gruppo.it").await;
    assert_eq!(refused.status(), 403);
    // Through the offer (no token digest) on this engine.
    let browser = w.app().browser();
    let (html, _) = offer_after_login(&w, &browser).await;
    let done = browser.post(w.app().url("/invites/offer")).form(&offer_form(&html)).send().await.unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(w.integration().await.state, IntegrationState::Activating);
    let used = w.app().browser().get(w.app().url(&format!("/invites/{}", w.token))).send().await.unwrap();
    assert_eq!(used.status(), 410);
    // And the link path, after unlink and a fresh invite, on a second company.
    let url = format!("/api/v1/accounts/{}/users/{}/identities/up", w.account, w.owner.id);
    let r = w.app().browser().delete(w.app().url(&url)).bearer_auth(&w.world.admin_token).send().await.unwrap();
    assert_eq!(r.status(), 204);
    link(&w.world, &w.owner, INVITEE_UPSTREAM).await;
    let second = invite_for(&w.world, w.account, "Pizzeria Due", "07654321004").await;
    let token = newest_invite_token(w.app()).await;
    let (done, _) = w.accept_as(&w.app().browser(), &token, INVITEE_UPSTREAM).await;
    assert_eq!(done.status(), 200);
    let state = w.app().state.integrations.get(w.account, second, KIND).await.unwrap().unwrap().state;
    assert_eq!(state, IntegrationState::Activating);
}

#[tokio::test]
async fn an_invite_whose_provider_is_no_longer_configured_gets_a_clear_page() {
    let world = World::new().await;
    let account: AccountId = world.account["id"].as_str().unwrap().parse().unwrap();
    let owner_id: UserId = world.account["owner"]["id"].as_str().unwrap().parse().unwrap();
    let owner = world.ponte.state.users.get(account, owner_id).await.unwrap().unwrap();
    let gone = UpstreamIdentity {
        provider: "retired".into(),
        issuer: "https://retired.example".into(),
        ..upstream_identity(&world, INVITEE_UPSTREAM).await
    };
    world.ponte.state.links.link(&owner, &gone, &Actor::system(), world.ponte.clock.now_for_test()).await.unwrap();
    invite_for(&world, account, "Bar Sport S.r.l.", "12345670017").await;
    let token = newest_invite_token(&world.ponte).await;
    let browser = world.ponte.browser();
    let html = browser.get(world.ponte.url(&format!("/invites/{token}"))).send().await.unwrap().text().await.unwrap();
    let pressed = browser
        .post(world.ponte.url(&format!("/invites/{token}")))
        .form(&[("csrf_token", csrf_from(&html))])
        .send()
        .await
        .unwrap();
    assert_eq!(pressed.status(), 503);
    assert!(pressed.text().await.unwrap().contains("data-code=\"invite_provider_unavailable\""));
}
