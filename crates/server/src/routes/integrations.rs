//! REST for companies' integrations: the status a POS shows, the admin's actions
//! (`disable`, `reactivate`, `confirm`, `retry`), the invites, and every company's status
//! at a glance. Each action is idempotent: repeating it answers the current state.

use actix_web::{HttpRequest, HttpResponse, web};
use ponte_linking::access::{Permission, Target as On};
use ponte_linking::company::{Company, CompanyData};
use ponte_linking::ids::{AccountId, CompanyId, InviteId, UserId};
use ponte_linking::integration::actions::{self, Stores, Target};
use ponte_linking::integration::credentials::{
    self as creds, CredentialFields, CredentialsRefused, CredentialsStatus, CredentialsTarget, PlatformCredentials,
    PlatformFailure,
};
use ponte_linking::integration::status::{Words, next_step};
use ponte_linking::integration::{Integration, IntegrationKind, PlatformAccount};
use ponte_linking::invite::{Invite, InviteState};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Need};
use crate::problem::{Problem, ProblemBody};
use crate::routes::api::{AccountPath, require_account};
use crate::routes::companies::{CompanyDataView, CompanyFields, require_company};
use crate::state::AppState;

const PROBLEM: &str = crate::problem::PROBLEM_JSON;

/// Registers the integration routes inside the `/api/v1/accounts` scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    const ONE: &str = "/{account}/companies/{company}/integrations/{kind}";
    cfg.service(web::resource("/{account}/integrations").get(list_integrations))
        .service(web::resource(ONE).get(get_integration))
        .service(web::resource(format!("{ONE}/disable")).post(disable))
        .service(web::resource(format!("{ONE}/reactivate")).post(reactivate))
        .service(web::resource(format!("{ONE}/confirm")).post(confirm))
        .service(web::resource(format!("{ONE}/retry")).post(retry))
        .service(web::resource(format!("{ONE}/invites")).get(list_invites))
        .service(web::resource(format!("{ONE}/credentials")).put(put_credentials))
        .service(web::resource(format!("{ONE}/credentials/check")).post(check_credentials))
        .service(web::resource(format!("{ONE}/credentials/api-key")).post(issue_api_key))
        .service(web::resource(format!("{ONE}/invites/{{invite}}/resend")).post(resend_invite));
}

// ---- wire types ----

/// The next step in both languages.
#[derive(Debug, Serialize, ToSchema)]
pub struct NextStep {
    /// Italiano.
    pub it: String,
    /// English.
    pub en: String,
}

impl From<Words> for NextStep {
    fn from(w: Words) -> Self {
        Self { it: w.it, en: w.en }
    }
}

/// A collaboration invite as the API shows it (never its link).
#[derive(Debug, Serialize, ToSchema)]
pub struct InviteView {
    /// Invite id (UUID), for `resend`.
    pub id: String,
    /// The invited address, masked.
    pub email: String,
    /// `pending`, `accepted` or `revoked`.
    pub state: String,
    /// Whether a pending invite's link has expired (a resend revives it).
    pub expired: bool,
    /// When the link stops working (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    /// How many times it was sent.
    pub sent_count: u32,
    /// When it was first issued (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// When it was accepted (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    pub accepted_at: Option<OffsetDateTime>,
}

impl InviteView {
    fn of(i: &Invite, now: OffsetDateTime) -> Self {
        Self {
            id: i.id.to_string(),
            email: i.masked_email(),
            state: i.state.as_str().to_owned(),
            expired: i.state == InviteState::Pending && now >= i.expires_at,
            expires_at: i.expires_at,
            sent_count: i.sent_count,
            created_at: i.created_at,
            accepted_at: i.accepted_at,
        }
    }
}

/// The platform account a company is tied to.
#[derive(Debug, Serialize, ToSchema)]
pub struct PlatformAccountView {
    /// The platform's id.
    pub id: String,
    /// Its name at the platform.
    pub legal_name: String,
    /// Its owner's email, masked.
    pub owner_email: Option<String>,
}

impl From<PlatformAccount> for PlatformAccountView {
    fn from(p: PlatformAccount) -> Self {
        Self { id: p.id, legal_name: p.legal_name, owner_email: p.owner_email }
    }
}

/// One company's integration: what the POS shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct IntegrationView {
    /// The company (UUID).
    pub company_id: String,
    /// `digital_invoice`.
    pub kind: String,
    /// `active`, `disabled`, `awaiting_confirmation`, `invite_pending`, `activating` or `failed`.
    pub state: String,
    /// The chain icon: green (true) only when `active`.
    pub linked: bool,
    /// Since when it is in this state (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    /// What to do next, in Italian and English.
    pub next_step: NextStep,
    /// The last error, while it matters.
    pub last_error: Option<String>,
    /// When the next activation attempt runs, while one is scheduled (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_retry_at: Option<OffsetDateTime>,
    /// The pending invite, if one is out.
    pub invite: Option<InviteView>,
    /// The platform account found or linked.
    pub platform_account: Option<PlatformAccountView>,
    /// The company data last used for the platform (review it before reactivating).
    pub company_data: Option<CompanyDataView>,
    /// The company's platform credentials, if set: their kind and latest check, never
    /// the secret.
    pub credentials: Option<CredentialsView>,
}

/// The latest credentials check.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckView {
    /// `ok`, `invalid_credentials`, `delegation_missing` or `platform_unavailable`.
    pub outcome: String,
    /// When it ran (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// Stored platform credentials as the API shows them: never the secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct CredentialsView {
    /// `username_password`, `api_key` or `technical_key`.
    #[serde(rename = "type")]
    pub credential_type: String,
    /// When they were last set (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
    /// The latest check, if any.
    pub last_check: Option<CheckView>,
    /// When the scheduled check runs, while one is (the platform was unavailable).
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_check_at: Option<OffsetDateTime>,
}

impl From<CredentialsStatus> for CredentialsView {
    fn from(s: CredentialsStatus) -> Self {
        Self {
            credential_type: s.credential_type.as_str().to_owned(),
            updated_at: s.updated_at,
            last_check: s.last_check.map(|(o, at)| CheckView { outcome: o.as_str().to_owned(), at }),
            next_check_at: s.next_check_at,
        }
    }
}

/// `PUT …/credentials`: `{"type": "username_password", "username", "password"}`,
/// `{"type": "api_key", "api_key"}` or `{"type": "technical_key", "key"}`. Its schema is
/// [`crate::contract::credentials`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsBody {
    /// `username_password`, `api_key` or `technical_key`.
    #[serde(rename = "type", default)]
    pub credential_type: String,
    /// For `username_password`.
    pub username: Option<String>,
    /// For `username_password`.
    pub password: Option<String>,
    /// For `api_key`.
    pub api_key: Option<String>,
    /// For `technical_key`.
    pub key: Option<String>,
}

impl utoipa::PartialSchema for CredentialsBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        crate::contract::credentials()
    }
}

impl ToSchema for CredentialsBody {}

impl std::fmt::Debug for CredentialsBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsBody").field("type", &self.credential_type).finish_non_exhaustive()
    }
}

/// The API key the platform issued: shown this once.
#[derive(Serialize, ToSchema)]
pub struct IssuedApiKey {
    /// The key (stored sealed as the company's credentials; never shown again).
    pub api_key: String,
    /// The credentials now stored.
    pub credentials: CredentialsView,
}

impl std::fmt::Debug for IssuedApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedApiKey").field("credentials", &self.credentials).finish_non_exhaustive()
    }
}

impl IntegrationView {
    fn of(
        i: Integration,
        pending: Option<&Invite>,
        credentials: Option<CredentialsStatus>,
        now: OffsetDateTime,
    ) -> Result<Self, Problem> {
        let usable = pending.filter(|p| p.usable(now).is_ok());
        let masked = usable.map(Invite::masked_email);
        Ok(Self {
            company_id: i.company_id.to_string(),
            kind: i.kind.as_str().to_owned(),
            state: i.state.as_str().to_owned(),
            linked: i.state.is_linked(),
            since: i.since,
            next_step: next_step(i.state, masked.as_deref()).into(),
            last_error: i.last_error,
            next_retry_at: i.next_retry_at,
            invite: pending.map(|p| InviteView::of(p, now)),
            platform_account: i.platform_account.map(Into::into),
            company_data: i.platform_data.as_ref().map(CompanyDataView::of).transpose()?,
            credentials: credentials.map(Into::into),
        })
    }
}

/// One company's line in the account's list.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompanyIntegrations {
    /// The company (UUID).
    pub company_id: String,
    /// Its legal name.
    pub legal_name: String,
    /// Its VAT number.
    pub vat_number: String,
    /// Its integrations.
    pub integrations: Vec<IntegrationView>,
}

/// Every company's integrations at a glance (the seed's list with the chain icons).
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountIntegrations {
    /// Oldest company first.
    pub companies: Vec<CompanyIntegrations>,
}

/// The integration's invites.
#[derive(Debug, Serialize, ToSchema)]
pub struct InviteList {
    /// Newest first.
    pub invites: Vec<InviteView>,
}

/// `reactivate`'s body: the reviewed company data, and who receives the invite.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReactivateBody {
    /// The company data to use at the platform, reviewed; absent: the company's current data.
    pub company: Option<CompanyFields>,
    /// The owner or admin the invite goes to (user id); absent: the account's owner.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub invitee: Option<UserId>,
}

/// `confirm`'s body (optional).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmBody {
    /// The owner or admin the invite goes to; absent: whoever `reactivate` named.
    #[schema(value_type = Option<String>, format = Uuid)]
    pub invitee: Option<UserId>,
}

/// `{account}/companies/{company}/integrations/{kind}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct IntegrationPath {
    /// Account id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub account: AccountId,
    /// Company id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub company: CompanyId,
    /// `digital_invoice`.
    #[param(schema_with = crate::contract::integration_kind, required = true)]
    pub kind: String,
}

/// `…/invites/{invite}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct InvitePath {
    /// Account id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub account: AccountId,
    /// Company id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub company: CompanyId,
    /// `digital_invoice`.
    #[param(schema_with = crate::contract::integration_kind, required = true)]
    pub kind: String,
    /// Invite id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub invite: InviteId,
}

// ---- helpers ----

type ApiResult = Result<HttpResponse, Problem>;

fn parse_kind(kind: &str) -> Result<IntegrationKind, Problem> {
    IntegrationKind::parse(kind)
        .ok_or_else(|| Problem::not_found("integration_kind_unknown", "No such integration kind (digital_invoice)."))
}

/// An optional JSON body: empty, or `null` as the contract allows, means the defaults.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &web::Bytes) -> Result<T, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice::<Option<T>>(body)
        .map(Option::unwrap_or_default)
        .map_err(|e| Problem::bad_request("invalid_json", format!("The body is not valid: {e}")))
}

/// What a handler does with a company's integration, and so what it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Read its status: any permission on the company.
    Read,
    /// Act on it, its invites or its credentials: `integrations:manage` on the company.
    Drive,
}

async fn target(
    state: &AppState,
    caller: &Caller,
    req: &HttpRequest,
    path: &IntegrationPath,
    use_: Use,
) -> Result<Target, Problem> {
    Ok(target_company(state, caller, req, path, use_).await?.0)
}

/// [`target`] with the company it names, for a handler that needs its data too.
async fn target_company(
    state: &AppState,
    caller: &Caller,
    req: &HttpRequest,
    path: &IntegrationPath,
    use_: Use,
) -> Result<(Target, Company), Problem> {
    let need = match use_ {
        Use::Read => Need::AnyOn(path.company),
        Use::Drive => Need::Permission(Permission::IntegrationsManage, On::Company(path.company)),
    };
    caller.check(Some(path.account), need)?;
    let kind = parse_kind(&path.kind)?;
    let company = require_company(state, path.account, path.company).await?;
    let target =
        Target { account: path.account, company: path.company, kind, actor: caller.actor(req), now: state.now() };
    Ok((target, company))
}

async fn view(state: &AppState, t: &Target) -> Result<IntegrationView, Problem> {
    let integration = state
        .integrations
        .get(t.account, t.company, t.kind)
        .await?
        .ok_or_else(|| Problem::not_found("company_not_found", "No such company in this account."))?;
    let invites = state.integrations.invites(t.account, t.company, t.kind).await?;
    let pending = invites.iter().find(|i| i.state == InviteState::Pending);
    let credentials = state.credentials.status(t.account, t.company, t.kind).await?;
    IntegrationView::of(integration, pending, credentials, state.now())
}

fn stores(state: &AppState) -> Stores<'_> {
    Stores { integrations: state.integrations.as_ref(), users: state.users.as_ref(), links: state.links.as_ref() }
}

async fn answer(state: &AppState, t: &Target, outcome: actions::Outcome) -> ApiResult {
    outcome?;
    Ok(HttpResponse::Ok().json(view(state, t).await?))
}

// ---- handlers ----

/// Every company's integrations: state, chain icon, next step.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/integrations", tag = "integrations", params(AccountPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = AccountIntegrations), (status = 404, body = ProblemBody, content_type = PROBLEM)))]
pub async fn list_integrations(caller: Caller, path: web::Path<AccountPath>, state: web::Data<AppState>) -> ApiResult {
    caller.check(Some(path.account), Need::Member)?;
    require_account(&state, path.account).await?;
    let now = state.now();
    let mut integrations = state.integrations.for_account(path.account).await?;
    let mut companies = Vec::new();
    for company in state.companies.list(path.account).await?.into_iter().filter(|c| caller.sees(c.id)) {
        let mut views = Vec::new();
        for i in integrations.extract_if(.., |i| i.company_id == company.id) {
            let invites = state.integrations.invites(path.account, company.id, i.kind).await?;
            let credentials = state.credentials.status(path.account, company.id, i.kind).await?;
            let pending = invites.iter().find(|v| v.state == InviteState::Pending);
            views.push(IntegrationView::of(i, pending, credentials, now)?);
        }
        companies.push(CompanyIntegrations {
            company_id: company.id.to_string(),
            legal_name: company.data.legal_name().as_str().to_owned(),
            vat_number: company.data.vat_number().as_str().to_owned(),
            integrations: views,
        });
    }
    Ok(HttpResponse::Ok().json(AccountIntegrations { companies }))
}

/// One company's integration: the status a POS shows.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}", tag = "integrations",
    params(IntegrationPath), security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = IntegrationView), (status = 404, body = ProblemBody, content_type = PROBLEM)))]
pub async fn get_integration(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IntegrationPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    let t = target(&state, &caller, &req, &path, Use::Read).await?;
    Ok(HttpResponse::Ok().json(view(&state, &t).await?))
}

/// Switches the integration off and revokes its invites.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/disable",
    tag = "integrations", params(IntegrationPath), security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = IntegrationView), (status = 404, body = ProblemBody, content_type = PROBLEM)))]
pub async fn disable(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IntegrationPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    let t = target(&state, &caller, &req, &path, Use::Drive).await?;
    answer(&state, &t, actions::disable(state.integrations.as_ref(), &t).await?).await
}

/// Switches a disabled integration back on with the reviewed company data. When the
/// platform already has an account for the VAT number the state becomes
/// `awaiting_confirmation` (see `platform_account`); otherwise the account is created and
/// the invite sent (`invite_pending`).
#[utoipa::path(post, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/reactivate",
    tag = "integrations", params(IntegrationPath), request_body(content = Option<ReactivateBody>), security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = IntegrationView),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "integration_is_<state>, external_id_missing, invitee_not_allowed", body = ProblemBody, content_type = PROBLEM),
        (status = 422, body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = "platform_unavailable", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn reactivate(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IntegrationPath>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> ApiResult {
    let body: ReactivateBody = optional_body(&body)?;
    let (t, company) = target_company(&state, &caller, &req, &path, Use::Drive).await?;
    let data = match body.company {
        Some(fields) => CompanyData::parse(&fields.into()).map_err(ponte_linking::Error::from)?,
        None => company.data,
    };
    let outcome = actions::reactivate(stores(&state), state.platform_lookup.as_ref(), &t, data, body.invitee).await?;
    answer(&state, &t, outcome).await
}

/// The seed's "Continue": link the company to the platform's existing account and send the invite.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/confirm",
    tag = "integrations", params(IntegrationPath), request_body(content = Option<ConfirmBody>), security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = IntegrationView),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "integration_is_<state>, external_id_missing, invitee_not_allowed", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn confirm(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IntegrationPath>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> ApiResult {
    let body: ConfirmBody = optional_body(&body)?;
    let t = target(&state, &caller, &req, &path, Use::Drive).await?;
    answer(&state, &t, actions::confirm(stores(&state), &t, body.invitee).await?).await
}

/// Starts a failed activation again.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/retry",
    tag = "integrations", params(IntegrationPath), security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = IntegrationView),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "integration_is_<state>", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn retry(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IntegrationPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    let t = target(&state, &caller, &req, &path, Use::Drive).await?;
    answer(&state, &t, actions::retry(state.integrations.as_ref(), &t).await?).await
}

/// The integration's invites, newest first.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/invites",
    tag = "integrations", params(IntegrationPath), security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = InviteList), (status = 404, body = ProblemBody, content_type = PROBLEM)))]
pub async fn list_invites(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IntegrationPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    let t = target(&state, &caller, &req, &path, Use::Drive).await?;
    let invites = state.integrations.invites(t.account, t.company, t.kind).await?;
    Ok(HttpResponse::Ok().json(InviteList { invites: invites.iter().map(|i| InviteView::of(i, t.now)).collect() }))
}

/// Sends the invite again with a new link and a new expiry (also when it has expired);
/// the old link stops working.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/invites/{invite}/resend",
    tag = "integrations", params(InvitePath), security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = InviteView),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "integration_is_<state>, invite_used, invite_revoked", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn resend_invite(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<InvitePath>,
    state: web::Data<AppState>,
) -> ApiResult {
    let path = path.into_inner();
    let one = IntegrationPath { account: path.account, company: path.company, kind: path.kind };
    let t = target(&state, &caller, &req, &one, Use::Drive).await?;
    let invite = state.integrations.resend(t.account, t.company, t.kind, path.invite, &t.actor, t.now).await??;
    Ok(HttpResponse::Ok().json(InviteView::of(&invite, t.now)))
}

fn refused(r: CredentialsRefused) -> Problem {
    match r {
        CredentialsRefused::Missing => Problem::new(
            actix_web::http::StatusCode::CONFLICT,
            "credentials_missing",
            "No credentials are stored for this integration",
        )
        .detail("Set them first (PUT …/credentials)."),
        CredentialsRefused::NoPlatformAccount => Problem::new(
            actix_web::http::StatusCode::CONFLICT,
            "platform_account_missing",
            "The integration has no platform account yet",
        )
        .detail("Reactivate the integration first, so the company has a platform account."),
        CredentialsRefused::NoCompany => Problem::not_found("company_not_found", "No such company in this account."),
        CredentialsRefused::Platform(PlatformFailure::Unavailable(why)) => {
            Problem::unavailable("platform_unavailable", why)
        }
        CredentialsRefused::Platform(PlatformFailure::Rejected(why)) => {
            Problem::new(actix_web::http::StatusCode::BAD_GATEWAY, "platform_refused", "The invoicing platform refused")
                .detail(why)
        }
    }
}

async fn credentials_target(
    state: &AppState,
    caller: &Caller,
    req: &HttpRequest,
    path: &IntegrationPath,
) -> Result<CredentialsTarget, Problem> {
    let t = target(state, caller, req, path, Use::Drive).await?;
    let company = require_company(state, t.account, t.company).await?;
    Ok(CredentialsTarget {
        account: t.account,
        company: t.company,
        vat_number: company.data.vat_number().as_str().to_owned(),
        kind: t.kind,
        actor: t.actor,
        now: t.now,
    })
}

/// Sets the company's platform credentials (sealed at rest, never shown back).
#[utoipa::path(put, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/credentials",
    tag = "integrations", params(IntegrationPath), request_body = CredentialsBody, security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 204, description = "stored"),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = "names the field", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn put_credentials(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IntegrationPath>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> ApiResult {
    let t = target(&state, &caller, &req, &path, Use::Drive).await?;
    // Parsed by hand: serde's message could quote a value, and values are secrets here.
    let body: CredentialsBody = serde_json::from_slice(&body).map_err(|e| {
        Problem::bad_request(
            "invalid_json",
            format!("The body is not valid credentials (line {}, column {}).", e.line(), e.column()),
        )
    })?;
    let credentials = PlatformCredentials::parse(&CredentialFields {
        credential_type: &body.credential_type,
        username: body.username.as_deref(),
        password: body.password.as_deref(),
        api_key: body.api_key.as_deref(),
        key: body.key.as_deref(),
    })?;
    state.credentials.put(t.account, t.company, t.kind, &credentials, &t.actor, "credentials.updated", t.now).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// Asks the platform whether the stored credentials work and records the outcome; when the
/// platform is unavailable the outcome says so and `next_check_at` when it is asked again.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/credentials/check",
    tag = "integrations", params(IntegrationPath), security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = CredentialsView),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "credentials_missing", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn check_credentials(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IntegrationPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    let t = credentials_target(&state, &caller, &req, &path).await?;
    let key = uuid::Uuid::now_v7().to_string();
    let status = creds::check(state.credentials.as_ref(), state.credentials_platform.as_ref(), &t, 0, &key)
        .await?
        .map_err(refused)?;
    Ok(HttpResponse::Ok().json(CredentialsView::from(status)))
}

/// Obtains an API key from the platform for the company's platform account, stores it
/// sealed as the company's credentials and returns it, this once.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/companies/{company}/integrations/{kind}/credentials/api-key",
    tag = "integrations", params(IntegrationPath), security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = IssuedApiKey),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "platform_account_missing", body = ProblemBody, content_type = PROBLEM),
        (status = 502, description = "platform_refused", body = ProblemBody, content_type = PROBLEM),
        (status = 503, description = "platform_unavailable", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn issue_api_key(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IntegrationPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    let t = credentials_target(&state, &caller, &req, &path).await?;
    let key = uuid::Uuid::now_v7().to_string();
    let (api_key, status) = creds::issue_api_key(
        state.credentials.as_ref(),
        state.integrations.as_ref(),
        state.credentials_platform.as_ref(),
        &t,
        &key,
    )
    .await?
    .map_err(refused)?;
    Ok(HttpResponse::Ok()
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .json(IssuedApiKey { api_key, credentials: status.into() }))
}
