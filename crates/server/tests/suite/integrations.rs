//! Companies and their e-invoicing integrations: the stores and use cases on every
//! backend, and the REST face (validation, tenant isolation, illegal transitions).

use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::clock::{Clock, ManualClock};
use ponte_identity::db::Database;
use ponte_identity::jobs::{Job, JobStore, SqlJobs};
use ponte_identity::outbox::{Message, OutgoingMail};
use ponte_identity::seal::MasterKeys;
use ponte_identity::token::AccessTokenClaims;
use ponte_identity::upstream::UpstreamIdentity;
use ponte_linking::account::sql::{SqlAccounts, SqlUsers};
use ponte_linking::account::{AccountStore, Lang, NewUser, Role, User};
use ponte_linking::audit::Actor;
use ponte_linking::company::sql::SqlCompanies;
use ponte_linking::company::{CompanyData, CompanyDraft, CompanyStore};
use ponte_linking::email::Email;
use ponte_linking::ids::{AccountId, CompanyId};
use ponte_linking::integration::actions::{self, PlatformLookup, Stores, Target};
use ponte_linking::integration::sql::SqlIntegrations;
use ponte_linking::integration::store::Refused;
use ponte_linking::integration::{IntegrationKind, IntegrationState, Integrations, PlatformAccount};
use ponte_linking::invite::{self, Accepted, InviteRefusal};
use ponte_linking::links::{Links, SqlLinks};
use serde_json::{Value, json};
use time::Duration;

use crate::harness::{TestApp, TestDb};

const KIND: IntegrationKind = IntegrationKind::DigitalInvoice;

/// A platform that answers from a fixed list, or is away.
#[derive(Debug)]
struct FixedPlatform(Result<Option<PlatformAccount>, String>);

#[async_trait]
impl PlatformLookup for FixedPlatform {
    async fn find_account(&self, _vat: &str) -> Result<Option<PlatformAccount>, String> {
        self.0.clone()
    }
}

fn existing() -> FixedPlatform {
    FixedPlatform(Ok(Some(PlatformAccount {
        id: "pa_42".into(),
        legal_name: "Bar Sport S.r.l.".into(),
        owner_email: Some("m***o@gruppo.it".into()),
    })))
}

pub fn company_json(vat: &str) -> Value {
    json!({
        "legal_name": "Bar Sport S.r.l.",
        "vat_number": vat,
        "address": {"street": "Via Roma 1", "city": "Milano", "postal_code": "20121", "province": "MI"},
        "sdi_code": "M5UXCR1"
    })
}

fn company_data(vat: &str) -> CompanyData {
    let draft: CompanyDraft = serde_json::from_value(company_json(vat)).unwrap();
    CompanyData::parse(&draft).unwrap()
}

fn upstream(subject: &str, email: &str, verified: bool) -> UpstreamIdentity {
    UpstreamIdentity {
        provider: "tsid".into(),
        issuer: "https://id.gruppo.example".into(),
        subject: subject.into(),
        email: Some(email.into()),
        email_verified: verified,
        name: Some("Mario Rossi".into()),
        auth_time: None,
        sid: None,
    }
}

/// Every store of the flow on one database, and a clock.
struct World {
    jobs: Arc<SqlJobs>,
    master: MasterKeys,
    links: SqlLinks,
    users: SqlUsers,
    companies: SqlCompanies,
    integrations: SqlIntegrations,
    clock: ManualClock,
    owner: User,
    company: CompanyId,
}

impl World {
    async fn new(db: Database) -> Self {
        let jobs = Arc::new(SqlJobs::new(db.clone(), 5));
        let master = MasterKeys::generate();
        let clock = ManualClock::new(crate::harness::now());
        let now = clock.now();
        let accounts = SqlAccounts::new(db.clone());
        let owner = NewUser {
            email: Email::parse("mario@barsport.it").unwrap(),
            name: "Mario Rossi".into(),
            role: Role::Owner,
            password_hash: None,
            lang: Lang::It,
            grants: Vec::new(),
        };
        let (_, owner) = accounts.create("Bar Sport".into(), owner, &Actor::system(), now).await.unwrap();
        let links = SqlLinks::new(db.clone());
        links.link(&owner, &upstream("mario-sub", "mario.rossi@gruppo.it", true), &Actor::system(), now).await.unwrap();
        let companies = SqlCompanies::new(db.clone());
        let company =
            companies.create(owner.account_id, company_data("00743110157"), &Actor::system(), now).await.unwrap();
        let integrations =
            SqlIntegrations::new(db.clone(), jobs.clone(), master.clone(), "https://ponte.example/", Duration::days(7));
        Self {
            jobs,
            master,
            links,
            users: SqlUsers::new(db),
            companies,
            integrations,
            clock,
            owner,
            company: company.id,
        }
    }

    fn target(&self) -> Target {
        Target {
            account: self.owner.account_id,
            company: self.company,
            kind: KIND,
            actor: Actor::user(self.owner.id, None),
            now: self.clock.now(),
        }
    }

    fn stores(&self) -> Stores<'_> {
        Stores { integrations: &self.integrations, users: &self.users, links: &self.links }
    }

    async fn state(&self) -> IntegrationState {
        self.integrations.get(self.owner.account_id, self.company, KIND).await.unwrap().unwrap().state
    }

    async fn jobs_of(&self, kind: &str) -> Vec<Job> {
        let all = self.jobs.list(None, None, 500).await.unwrap();
        all.into_iter().filter(|j| j.kind == kind).collect()
    }

    /// The invite links mailed so far, oldest first.
    async fn invite_links(&self) -> Vec<String> {
        let mut links: Vec<(i64, String)> = Vec::new();
        for job in self.jobs_of("mail.send").await {
            let mail = OutgoingMail::from_payload(&job.payload, &self.master).unwrap();
            if let Message::CollaborationInvite { link, .. } = mail.message {
                assert_eq!(mail.to, "mario.rossi@gruppo.it", "the invite goes to the linked external ID's email");
                links.push((job.created_at.unix_timestamp_nanos() as i64, link));
            }
        }
        links.sort();
        links.into_iter().map(|(_, l)| l).collect()
    }

    async fn to_invite_pending(&self) -> String {
        actions::reactivate(self.stores(), &existing(), &self.target(), company_data("00743110157"), None)
            .await
            .unwrap()
            .unwrap();
        actions::confirm(self.stores(), &self.target(), None).await.unwrap().unwrap();
        let link = self.invite_links().await.pop().expect("an invite was mailed");
        link.rsplit('/').next().unwrap().to_owned()
    }
}

#[tokio::test]
async fn the_seed_flow_runs_from_disabled_to_active_on_every_backend() {
    for db in TestDb::all().await {
        let w = World::new(db.open_migrated().await).await;
        assert_eq!(w.state().await, IntegrationState::Disabled, "a new company's integration starts disabled");

        let applied = actions::reactivate(w.stores(), &existing(), &w.target(), company_data("00743110157"), None)
            .await
            .unwrap()
            .unwrap();
        let i = applied.integration();
        assert_eq!(i.state, IntegrationState::AwaitingConfirmation);
        assert_eq!(i.platform_account.as_ref().unwrap().id, "pa_42");
        assert_eq!(i.platform_data.as_ref().unwrap().vat_number().as_str(), "00743110157");
        assert!(w.invite_links().await.is_empty(), "no invite before Continue");

        actions::confirm(w.stores(), &w.target(), None).await.unwrap().unwrap();
        assert_eq!(w.state().await, IntegrationState::InvitePending);
        assert_eq!(w.jobs_of("platform.link_account").await.len(), 1);
        let token = w.invite_links().await.pop().unwrap().rsplit('/').next().unwrap().to_owned();

        let again = actions::confirm(w.stores(), &w.target(), None).await.unwrap().unwrap();
        assert!(matches!(again, ponte_linking::integration::Applied::Unchanged(_)), "Continue twice is a no-op");
        assert_eq!(w.invite_links().await.len(), 1, "and sends no second invite");

        let me = upstream("mario-sub", "Mario.Rossi@gruppo.it", true);
        let accepted =
            invite::accept(&w.integrations, &w.links, &token, &me, &Actor::system(), w.clock.now()).await.unwrap();
        assert!(matches!(accepted, Accepted::Done { .. }), "{accepted:?}");
        assert_eq!(w.state().await, IntegrationState::Activating);
        assert_eq!(w.jobs_of("platform.activate").await.len(), 1);
        let reused =
            invite::accept(&w.integrations, &w.links, &token, &me, &Actor::system(), w.clock.now()).await.unwrap();
        assert_eq!(reused, Accepted::Refused(InviteRefusal::Used));

        actions::activated(&w.integrations, &w.target()).await.unwrap().unwrap();
        assert_eq!(w.state().await, IntegrationState::Active);
        let events: Vec<String> = w
            .jobs_of("webhook.fanout")
            .await
            .iter()
            .map(|j| j.payload["event"]["data"]["state"].as_str().unwrap().to_owned())
            .collect();
        let mut events = events;
        events.sort();
        assert_eq!(events, ["activating", "active", "awaiting_confirmation", "invite_pending"], "one event per move");
        drop(w);
        drop(db);
    }
}

#[tokio::test]
async fn only_the_invited_external_id_accepts_and_a_refusal_changes_nothing() {
    for db in TestDb::all().await {
        let w = World::new(db.open_migrated().await).await;
        let token = w.to_invite_pending().await;
        let now = w.clock.now();
        let stranger = upstream("luigi-sub", "mario.rossi@gruppo.it", true);
        let refused =
            invite::accept(&w.integrations, &w.links, &token, &stranger, &Actor::system(), now).await.unwrap();
        assert_eq!(refused, Accepted::Refused(InviteRefusal::WrongPerson), "same email, other upstream person");
        let unverified = upstream("mario-sub", "mario.rossi@gruppo.it", false);
        let refused =
            invite::accept(&w.integrations, &w.links, &token, &unverified, &Actor::system(), now).await.unwrap();
        assert_eq!(refused, Accepted::Refused(InviteRefusal::EmailMismatch));
        let forged = invite::accept(
            &w.integrations,
            &w.links,
            "not-a-token",
            &upstream("mario-sub", "mario.rossi@gruppo.it", true),
            &Actor::system(),
            now,
        )
        .await
        .unwrap();
        assert_eq!(forged, Accepted::Refused(InviteRefusal::Unknown));
        assert_eq!(w.state().await, IntegrationState::InvitePending);
        assert!(w.jobs_of("platform.activate").await.is_empty());
        drop(w);
        drop(db);
    }
}

#[tokio::test]
async fn an_expired_invite_fails_closed_and_a_resend_revives_it_with_a_new_link() {
    for db in TestDb::all().await {
        let w = World::new(db.open_migrated().await).await;
        let old = w.to_invite_pending().await;
        let me = upstream("mario-sub", "mario.rossi@gruppo.it", true);
        w.clock.advance(Duration::days(8));
        let late = invite::accept(&w.integrations, &w.links, &old, &me, &Actor::system(), w.clock.now()).await.unwrap();
        assert_eq!(late, Accepted::Refused(InviteRefusal::Expired));

        let invites = w.integrations.invites(w.owner.account_id, w.company, KIND).await.unwrap();
        let renewed = w
            .integrations
            .resend(w.owner.account_id, w.company, KIND, invites[0].id, &Actor::system(), w.clock.now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(renewed.sent_count, 2);
        assert!(renewed.expires_at > w.clock.now() + Duration::days(6));
        let links = w.invite_links().await;
        assert_eq!(links.len(), 2);
        let new = links[1].rsplit('/').next().unwrap().to_owned();
        assert_ne!(new, old);
        let dead = invite::accept(&w.integrations, &w.links, &old, &me, &Actor::system(), w.clock.now()).await.unwrap();
        assert_eq!(dead, Accepted::Refused(InviteRefusal::Unknown), "the old link stops working");
        let ok = invite::accept(&w.integrations, &w.links, &new, &me, &Actor::system(), w.clock.now()).await.unwrap();
        assert!(matches!(ok, Accepted::Done { .. }), "{ok:?}");
        drop(w);
        drop(db);
    }
}

#[tokio::test]
async fn disable_revokes_the_invite_and_illegal_actions_name_the_state() {
    for db in TestDb::all().await {
        let w = World::new(db.open_migrated().await).await;
        let refused = actions::confirm(w.stores(), &w.target(), None).await.unwrap().unwrap_err();
        assert!(matches!(&refused, Refused::Illegal(i) if i.code() == "integration_is_disabled"), "{refused:?}");
        let token = w.to_invite_pending().await;
        actions::disable(&w.integrations, &w.target()).await.unwrap().unwrap();
        let me = upstream("mario-sub", "mario.rossi@gruppo.it", true);
        let after =
            invite::accept(&w.integrations, &w.links, &token, &me, &Actor::system(), w.clock.now()).await.unwrap();
        assert_eq!(after, Accepted::Refused(InviteRefusal::Revoked));
        assert_eq!(w.state().await, IntegrationState::Disabled);
        let busy = w.companies.delete(w.owner.account_id, w.company, &Actor::system(), w.clock.now()).await;
        assert!(busy.is_ok(), "a disabled company can be removed: {busy:?}");
        drop(w);
        drop(db);
    }
}

#[tokio::test]
async fn racing_continues_send_exactly_one_invite() {
    for db in TestDb::all().await {
        let w = World::new(db.open_migrated().await).await;
        actions::reactivate(w.stores(), &existing(), &w.target(), company_data("00743110157"), None)
            .await
            .unwrap()
            .unwrap();
        let target = w.target();
        let (a, b, c) = tokio::join!(
            actions::confirm(w.stores(), &target, None),
            actions::confirm(w.stores(), &target, None),
            actions::confirm(w.stores(), &target, None),
        );
        for outcome in [a, b, c] {
            assert!(outcome.unwrap().is_ok(), "every Continue answers the current state");
        }
        assert_eq!(w.invite_links().await.len(), 1);
        assert_eq!(w.jobs_of("platform.link_account").await.len(), 1);
        drop(w);
        drop(db);
    }
}

#[tokio::test]
async fn without_a_linked_external_id_or_platform_nothing_moves() {
    for db in TestDb::all().await {
        let w = World::new(db.open_migrated().await).await;
        let identities = w.links.for_user(w.owner.account_id, w.owner.id).await.unwrap();
        w.links
            .unlink(w.owner.account_id, w.owner.id, &identities[0].provider, &Actor::system(), w.clock.now())
            .await
            .unwrap();
        let refused = actions::reactivate(w.stores(), &existing(), &w.target(), company_data("00743110157"), None)
            .await
            .unwrap()
            .unwrap_err();
        assert_eq!(refused, Refused::InviteeWithoutExternalId);
        let db2 = w
            .links
            .link(&w.owner, &upstream("mario-sub", "mario.rossi@gruppo.it", true), &Actor::system(), w.clock.now())
            .await;
        assert!(db2.is_ok());
        let away = FixedPlatform(Err("connection refused".into()));
        let refused = actions::reactivate(w.stores(), &away, &w.target(), company_data("00743110157"), None)
            .await
            .unwrap()
            .unwrap_err();
        assert!(matches!(refused, Refused::PlatformUnavailable(_)));
        assert_eq!(w.state().await, IntegrationState::Disabled);
        assert!(w.jobs_of("webhook.fanout").await.is_empty(), "no event without a move");
        let dup =
            w.companies.create(w.owner.account_id, company_data("00743110157"), &Actor::system(), w.clock.now()).await;
        assert!(matches!(dup, Err(ponte_linking::Error::Conflict { code: "vat_number_taken", .. })), "{dup:?}");
        drop(w);
        drop(db);
    }
}

/// A user's API token for `user` of `account`, as a first-party app would hold.
fn user_token(app: &TestApp, account: AccountId, user: &str, role: &str) -> String {
    let now = app.state.now();
    let mut claims =
        AccessTokenClaims::for_client(app.state.issuer(), "pos-app", "openid ponte.api", now, Duration::minutes(5));
    claims.sub = user.to_owned();
    claims.account_id = Some(account.to_string());
    claims.role = Some(role.to_owned());
    app.state.keys.ring().sign_access_token(&claims).unwrap()
}

#[tokio::test]
async fn companies_are_validated_field_by_field_and_kept_to_their_account() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token().await;
    let http = app.browser();
    let a = app.create_account(&admin, "mario@barsport.it", "correct horse battery").await;
    let b = app.create_account(&admin, "luigi@pizzeria.it", "correct horse battery").await;
    let (a_id, b_id) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    let companies = |acc: &str| app.url(&format!("/api/v1/accounts/{acc}/companies"));

    let mut bad = company_json("00743110158");
    bad["sdi_code"] = json!("0000000");
    let r = http.post(companies(a_id)).bearer_auth(&admin).json(&bad).send().await.unwrap();
    assert_eq!(r.status(), 422);
    let problem: Value = r.json().await.unwrap();
    let fields: Vec<&str> =
        problem["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert!(fields.contains(&"vat_number") && fields.contains(&"pec"), "{problem}");

    let r = http.post(companies(a_id)).bearer_auth(&admin).json(&company_json("IT00743110157")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    assert_eq!(created["vat_number"], "00743110157", "the IT prefix is dropped");
    assert_eq!(created["tax_code"], "00743110157");
    assert_eq!(created["address"]["country"], "IT");
    let company = created["id"].as_str().unwrap();
    let r = http.post(companies(a_id)).bearer_auth(&admin).json(&company_json("00743110157")).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "vat_number_taken");

    let one = app.url(&format!("/api/v1/accounts/{a_id}/companies/{company}"));
    let r = http.patch(&one).bearer_auth(&admin).json(&json!({"pec": "not an address"})).send().await.unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(r.json::<Value>().await.unwrap()["errors"][0]["field"], "pec");
    let r = http.patch(&one).bearer_auth(&admin).json(&json!({"pec": "fatture@pec.barsport.it"})).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["pec"], "fatture@pec.barsport.it");

    // The owner of account B sees none of account A's companies or integrations.
    let b_owner = b["owner"]["id"].as_str().unwrap();
    let b_token = user_token(&app, b_id.parse().unwrap(), b_owner, "owner");
    let integration = format!("{one}/integrations/digital_invoice");
    for url in
        [companies(a_id), one.clone(), integration.clone(), app.url(&format!("/api/v1/accounts/{a_id}/integrations"))]
    {
        let r = http.get(&url).bearer_auth(&b_token).send().await.unwrap();
        assert_eq!(r.status(), 404, "{url}");
    }
    for action in ["disable", "reactivate", "confirm", "retry"] {
        let r = http.post(format!("{integration}/{action}")).bearer_auth(&b_token).send().await.unwrap();
        assert_eq!(r.status(), 404, "{action}");
    }
    let r = http.delete(&one).bearer_auth(&b_token).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let r = http.get(companies(b_id)).bearer_auth(&b_token).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["companies"].as_array().unwrap().len(), 0);

    // A's owner may read A's integration: disabled, with the next step in both languages.
    let a_owner = a["owner"]["id"].as_str().unwrap();
    let a_token = user_token(&app, a_id.parse().unwrap(), a_owner, "owner");
    let view: Value = http.get(&integration).bearer_auth(&a_token).send().await.unwrap().json().await.unwrap();
    assert_eq!(view["state"], "disabled");
    assert_eq!(view["linked"], false);
    assert!(view["next_step"]["it"].as_str().unwrap().contains("riattiva"), "{view}");
    assert!(view["next_step"]["en"].as_str().unwrap().contains("reactivate"), "{view}");

    // An illegal action names the state; with no platform configured, reactivate is a clear 503.
    let r = http.post(format!("{integration}/confirm")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "integration_is_disabled");
    let r = http.post(format!("{integration}/retry")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "integration_is_disabled");
    let r = http.post(format!("{integration}/reactivate")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 409, "the owner has no external ID linked yet");
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "external_id_missing");
    let r = http.post(format!("{integration}/disable")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200, "disable when disabled answers the current state");
    let r = http.post(format!("{integration}/reactivate")).bearer_auth(&admin).body("{").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http.get(format!("{one}/integrations/fax")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "integration_kind_unknown");

    let list: Value = http
        .get(app.url(&format!("/api/v1/accounts/{a_id}/integrations")))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["companies"][0]["vat_number"], "00743110157");
    assert_eq!(list["companies"][0]["integrations"][0]["state"], "disabled");

    let r = http.delete(&one).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 204);
    let r = http.get(&one).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "company_not_found");
}

pub mod through_the_worker {
    //! The platform jobs run by the app's own worker against a scripted platform.

    use super::*;
    use crate::harness::NowForTest;
    use wiremock::matchers::{method, path, path_regex};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    /// The platform account every scripted platform has for the test company.
    pub fn platform_account() -> Value {
        json!({"id": "pa_42", "legal_name": "Bar Sport S.r.l.", "vat_number": "00743110157"})
    }

    /// A scripted platform that issues tokens and has [`platform_account`] for the VAT
    /// number; tests mount the rest of what they need.
    pub async fn platform_with_an_account() -> MockServer {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/oauth/token"))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"access_token": "tok", "token_type": "bearer", "expires_in": 3600})),
            )
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/accounts"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"accounts": [platform_account()]})))
            .mount(&server)
            .await;
        server
    }

    async fn platform() -> MockServer {
        let server = platform_with_an_account().await;
        let account = platform_account();
        Mock::given(method("POST"))
            .and(path("/v1/accounts/pa_42/companies"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({"account": account})))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/accounts/pa_42/collaborators"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"collaborator": {"email": "mario.rossi@gruppo.it", "status": "invited", "platform_sent_invite": false}}),
            ))
            .mount(&server)
            .await;
        server
    }

    fn activation_ok() -> Mock {
        Mock::given(method("POST"))
            .and(path_regex("^/v1/accounts/pa_42/integrations/digital_invoice/activations$"))
            .respond_with(ResponseTemplate::new(200).set_body_json(
                json!({"activation": {"id": "act_1", "status": "active", "activated_at": "2026-12-01T10:00:00Z"}}),
            ))
    }

    fn activation_down() -> Mock {
        Mock::given(method("POST"))
            .and(path_regex("/activations$"))
            .respond_with(ResponseTemplate::new(503).set_body_json(json!({"error": "maintenance"})))
    }

    async fn app_on(server: &MockServer, max_attempts: u32) -> TestApp {
        TestApp::spawn_with(TestDb::sqlite(), None, |c| {
            c.platform.base_url = Some(server.uri().parse().unwrap());
            c.platform.client_id = Some("ponte".into());
            c.platform.client_secret = Some("platform-secret".into());
            c.platform.timeout_secs = 2;
            c.worker.poll_interval_ms = 20;
            c.worker.backoff_base_secs = 5;
            c.worker.backoff_max_secs = 5;
            c.worker.max_attempts = max_attempts;
        })
        .await
    }

    /// Account, owner with a linked external ID, and a company whose invite is out; the
    /// invite is then accepted. Returns the integration's URL and an admin token.
    async fn accepted(app: &TestApp) -> (String, String) {
        let admin = app.admin_token().await;
        let http = app.browser();
        let account = app.create_account(&admin, "mario@barsport.it", "correct horse battery").await;
        let (account_id, owner_id) = (account["id"].as_str().unwrap(), account["owner"]["id"].as_str().unwrap());
        let owner = app.state.users.get(account_id.parse().unwrap(), owner_id.parse().unwrap()).await.unwrap().unwrap();
        let me = upstream("mario-sub", "mario.rossi@gruppo.it", true);
        app.state.links.link(&owner, &me, &Actor::system(), app.clock.now_for_test()).await.unwrap();
        let company: Value = http
            .post(app.url(&format!("/api/v1/accounts/{account_id}/companies")))
            .bearer_auth(&admin)
            .json(&company_json("00743110157"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let url = app.url(&format!(
            "/api/v1/accounts/{account_id}/companies/{}/integrations/digital_invoice",
            company["id"].as_str().unwrap()
        ));
        let r: Value =
            http.post(format!("{url}/reactivate")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        assert_eq!(r["state"], "awaiting_confirmation", "{r}");
        assert_eq!(r["platform_account"]["id"], "pa_42");
        assert_eq!(r["company_data"]["vat_number"], "00743110157");
        let r: Value =
            http.post(format!("{url}/confirm")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        assert_eq!(r["state"], "invite_pending", "{r}");
        assert_eq!(r["invite"]["email"], "m***i@gruppo.it");
        let token = wait_for_invite_token(app).await;
        let accepted = invite::accept(
            app.state.integrations.as_ref(),
            app.state.links.as_ref(),
            &token,
            &me,
            &Actor::system(),
            app.clock.now_for_test(),
        )
        .await
        .unwrap();
        assert!(matches!(accepted, Accepted::Done { .. }), "{accepted:?}");
        (url, admin)
    }

    async fn wait_for_invite_token(app: &TestApp) -> String {
        for _ in 0..200 {
            for job in app.state.jobs.list(None, None, 100).await.unwrap() {
                if job.kind != "mail.send" {
                    continue;
                }
                let mail = OutgoingMail::from_payload(&job.payload, &app.state.master).unwrap();
                if let Message::CollaborationInvite { link, .. } = mail.message {
                    return link.rsplit('/').next().unwrap().to_owned();
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("no invite mail was queued");
    }

    async fn wait_for(app: &TestApp, url: &str, admin: &str, want: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..250 {
            last = app.browser().get(url).bearer_auth(admin).send().await.unwrap().json().await.unwrap();
            if want(&last) {
                return last;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("integration never got there: {last}");
    }

    /// The Idempotency-Key of every activation request the platform received.
    async fn activation_keys(server: &MockServer) -> Vec<String> {
        let requests = server.received_requests().await.unwrap_or_default();
        requests
            .iter()
            .filter(|r| r.url.path().ends_with("/activations"))
            .map(|r| r.headers.get("idempotency-key").unwrap().to_str().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn a_platform_away_during_activation_keeps_it_activating_until_it_returns() {
        let server = platform().await;
        activation_down().up_to_n_times(1).with_priority(1).mount(&server).await;
        activation_ok().mount(&server).await;
        let app = app_on(&server, 5).await;
        let (url, admin) = accepted(&app).await;

        let waiting = wait_for(&app, &url, &admin, |v| v["last_error"].is_string()).await;
        assert_eq!(waiting["state"], "activating", "{waiting}");
        assert!(waiting["next_retry_at"].is_string(), "{waiting}");
        assert!(waiting["next_step"]["en"].as_str().unwrap().contains("activating"), "{waiting}");

        app.clock.advance(Duration::seconds(10));
        let active = wait_for(&app, &url, &admin, |v| v["state"] == "active").await;
        assert_eq!(active["linked"], true);
        assert_eq!(active["last_error"], Value::Null);
        let keys = activation_keys(&server).await;
        assert_eq!(keys.len(), 2, "one failed attempt, one that worked");
        assert_eq!(keys[0], keys[1], "a retry carries the same idempotency key");
    }

    #[tokio::test]
    async fn activation_fails_after_its_attempts_and_retry_brings_it_back() {
        let server = platform().await;
        activation_down().up_to_n_times(2).with_priority(1).mount(&server).await;
        activation_ok().mount(&server).await;
        let app = app_on(&server, 2).await;
        let (url, admin) = accepted(&app).await;

        wait_for(&app, &url, &admin, |v| v["last_error"].is_string()).await;
        app.clock.advance(Duration::seconds(10));
        let failed = wait_for(&app, &url, &admin, |v| v["state"] == "failed").await;
        assert!(failed["last_error"].as_str().unwrap().contains("503"), "{failed}");
        assert_eq!(failed["next_retry_at"], Value::Null);

        let r: Value =
            app.browser().post(format!("{url}/retry")).bearer_auth(&admin).send().await.unwrap().json().await.unwrap();
        assert!(r["state"] == "activating" || r["state"] == "active", "{r}");
        wait_for(&app, &url, &admin, |v| v["state"] == "active").await;
        let keys = activation_keys(&server).await;
        assert_eq!(keys.len(), 3);
        assert_ne!(keys[1], keys[2], "a retry by an admin is a new job");
    }
}

#[tokio::test]
async fn an_invite_revoked_by_unlink_is_revived_by_a_resend_once_an_id_is_linked_again() {
    for db in TestDb::all().await {
        let w = World::new(db.open_migrated().await).await;
        let old = w.to_invite_pending().await;
        let (account, owner) = (w.owner.account_id, w.owner.id);
        w.integrations.revoke_invites_of(owner, &Actor::system(), w.clock.now()).await.unwrap();
        let provider = w.links.for_user(account, owner).await.unwrap()[0].provider.clone();
        w.links.unlink(account, owner, &provider, &Actor::system(), w.clock.now()).await.unwrap();
        let invite = w.integrations.invites(account, w.company, KIND).await.unwrap()[0].clone();
        let refused =
            w.integrations.resend(account, w.company, KIND, invite.id, &Actor::system(), w.clock.now()).await.unwrap();
        assert_eq!(refused.unwrap_err(), Refused::InviteeWithoutExternalId);

        let relinked = upstream("mario-new", "mario@gruppo.it", true);
        w.links.link(&w.owner, &relinked, &Actor::system(), w.clock.now()).await.unwrap();
        let revived = w
            .integrations
            .resend(account, w.company, KIND, invite.id, &Actor::system(), w.clock.now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(revived.email, "mario@gruppo.it", "the address of the external ID linked now");
        let mut mailed = Vec::new();
        for job in w.jobs_of("mail.send").await {
            let mail = OutgoingMail::from_payload(&job.payload, &w.master).unwrap();
            if let Message::CollaborationInvite { link, .. } = mail.message {
                mailed.push((mail.to, link));
            }
        }
        let (to, link) = mailed.iter().find(|(to, _)| to == "mario@gruppo.it").expect("the revived invite was mailed");
        assert_eq!(to, "mario@gruppo.it");
        let token = link.rsplit('/').next().unwrap();
        let now = w.clock.now();
        let dead = invite::accept(&w.integrations, &w.links, &old, &relinked, &Actor::system(), now).await.unwrap();
        assert_eq!(dead, Accepted::Refused(InviteRefusal::Unknown));
        let ok = invite::accept(&w.integrations, &w.links, token, &relinked, &Actor::system(), now).await.unwrap();
        assert!(matches!(ok, Accepted::Done { .. }), "{ok:?}");
        drop(w);
        drop(db);
    }
}
