//! REST for the POS backend: accounts, users, sessions, audit.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_identity::password;
use ponte_identity::session::Session;
use ponte_linking::access::{self, Grant, GrantJson};
use ponte_linking::account::manage::{self, UserStores};
use ponte_linking::account::{
    Account, Lang, NewUser, Role, User, UserPatch, UserStatus, check_new_user_role, parse_name,
};
use ponte_linking::audit::AuditEntry;
use ponte_linking::email::Email;
use ponte_linking::federation;
use ponte_linking::ids::{AccountId, UserId};
use ponte_linking::seats::SeatUsage;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Need};
use crate::problem::Problem;
use crate::state::AppState;

/// Registers the account and user routes inside the `/api/v1/accounts` scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("").post(create_account))
        .service(web::resource("/{account}").get(get_account))
        .service(web::resource("/{account}/users").get(list_users).post(create_user))
        .service(web::resource("/{account}/users/{user}").get(get_user).patch(update_user).delete(delete_user))
        .service(web::resource("/{account}/users/{user}/permissions").put(put_permissions))
        .service(web::resource("/{account}/users/{user}/password-link").post(send_password_link))
        .service(web::resource("/{account}/users/{user}/sessions").get(list_sessions))
        .service(web::resource("/{account}/users/{user}/sessions/{session}").delete(revoke_session))
        .service(web::resource("/{account}/users/{user}/identities").get(list_identities))
        .service(web::resource("/{account}/users/{user}/identities/{provider}").delete(unlink_identity))
        .service(web::resource("/{account}/audit").get(list_audit));
}

// ---- wire types ----

/// An account as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct AccountView {
    /// Account id (UUID).
    pub id: String,
    /// Display name.
    pub name: String,
    /// `active` or `disabled`.
    pub status: String,
    /// Additional-user seats now.
    pub seats: SeatsView,
    /// Creation time (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// An account's seats at this moment.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeatsView {
    /// Seats of the paid grants that count now.
    pub valid: u32,
    /// Active members (owners and admins take no seat).
    pub used: u32,
    /// Seats nobody takes.
    pub free: u32,
}

impl From<SeatUsage> for SeatsView {
    fn from(u: SeatUsage) -> Self {
        Self { valid: u.valid, used: u.used, free: u.free() }
    }
}

impl AccountView {
    /// The account with its seats.
    pub fn of(a: Account, seats: SeatUsage) -> Self {
        Self {
            id: a.id.to_string(),
            name: a.name,
            status: a.status.as_str().into(),
            seats: seats.into(),
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// A user as the API shows it (never a password or its hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    /// User id (UUID).
    pub id: String,
    /// The account it belongs to.
    pub account_id: String,
    /// Email.
    pub email: String,
    /// Display name.
    pub name: String,
    /// `owner`, `admin` or `member`.
    pub role: String,
    /// `active`, `disabled` or `suspended`.
    pub status: String,
    /// Why the system set the status (`seats_lapsed`); absent when a person set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// A member's grants (owners and admins may do everything and list none).
    #[schema(value_type = Vec<GrantView>)]
    pub permissions: Vec<GrantJson>,
    /// Whether a password is set.
    pub has_password: bool,
    /// The language its mail is written in: `it` or `en`.
    pub language: String,
    /// Creation time (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            id: u.id.to_string(),
            account_id: u.account_id.to_string(),
            email: u.email,
            name: u.name,
            role: u.role.as_str().into(),
            status: u.status.as_str().into(),
            status_reason: u.status_reason,
            permissions: u.grants.iter().map(Grant::to_json).collect(),
            has_password: u.has_password,
            language: u.lang.as_str().into(),
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// The owner of a new account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewOwner {
    /// Email (unique across Ponte, case-insensitively).
    #[schema(schema_with = crate::contract::email)]
    pub email: String,
    /// Display name.
    #[schema(schema_with = crate::contract::name)]
    pub name: String,
    /// Optional password (10 to 256 characters); without one the owner signs in upstream only.
    #[schema(schema_with = crate::contract::password_or_null)]
    pub password: Option<String>,
    /// `it` (the default) or `en`: the language of the owner's mail.
    #[schema(schema_with = crate::contract::language_or_null)]
    pub language: Option<String>,
}

/// `POST /api/v1/accounts`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAccount {
    /// Display name (usually the business name).
    #[schema(schema_with = crate::contract::name)]
    pub name: String,
    /// The account's owner.
    pub owner: NewOwner,
}

/// The created account and its owner.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAccount {
    /// Account id.
    pub id: String,
    /// The account.
    pub account: AccountView,
    /// Its owner.
    pub owner: UserView,
}

/// `POST /api/v1/accounts/{account}/users`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Email (unique across Ponte, case-insensitively).
    #[schema(schema_with = crate::contract::email)]
    pub email: String,
    /// Display name.
    #[schema(schema_with = crate::contract::name)]
    pub name: String,
    /// `admin` or `member`.
    #[schema(schema_with = crate::contract::role)]
    pub role: String,
    /// Optional password (10 to 256 characters).
    #[schema(schema_with = crate::contract::password_or_null)]
    pub password: Option<String>,
    /// Instead of a password: mail the user a single-use link to choose one (7 days).
    pub send_password_link: Option<bool>,
    /// `it` (the default) or `en`: the language of the user's mail.
    #[schema(schema_with = crate::contract::language_or_null)]
    pub language: Option<String>,
    /// A member's grants; owners and admins may do everything and take none.
    #[schema(schema_with = crate::contract::grants_or_null)]
    pub permissions: Option<Vec<GrantJson>>,
}

/// One grant: a permission on every company (`"all"`) or on a list of company ids. Its
/// schema is [`crate::contract::grant`], which knows the catalogue.
#[derive(Debug, Serialize, Deserialize)]
pub struct GrantView {
    /// From the catalogue (`GET /api/v1/permissions`), e.g. `invoices:read`.
    pub permission: String,
    /// `"all"`, or a non-empty list of the account's company ids.
    pub companies: serde_json::Value,
}

impl utoipa::PartialSchema for GrantView {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        crate::contract::grant()
    }
}

impl ToSchema for GrantView {}

/// `PUT /api/v1/accounts/{account}/users/{user}/permissions`: the member's whole grant list.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPermissions {
    /// Replaces every grant the member had.
    #[schema(schema_with = crate::contract::grants)]
    pub permissions: Vec<GrantJson>,
}

/// `PATCH /api/v1/accounts/{account}/users/{user}`: only the fields given change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// New email.
    #[schema(schema_with = crate::contract::email_or_null)]
    pub email: Option<String>,
    /// New display name.
    #[schema(schema_with = crate::contract::name_or_null)]
    pub name: Option<String>,
    /// `admin` or `member` (the owner's role is fixed).
    #[schema(schema_with = crate::contract::role_or_null)]
    pub role: Option<String>,
    /// `active` or `disabled`; disabling ends the user's sessions.
    #[schema(schema_with = crate::contract::user_status_or_null)]
    pub status: Option<String>,
    /// New password; setting one ends the user's sessions.
    #[schema(schema_with = crate::contract::password_or_null)]
    pub password: Option<String>,
    /// `it` or `en`: the language of the user's mail.
    #[schema(schema_with = crate::contract::language_or_null)]
    pub language: Option<String>,
}

/// An upstream identity linked to a user.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityView {
    /// The configured provider id.
    pub provider: String,
    /// The upstream issuer.
    pub issuer: String,
    /// The upstream subject.
    pub subject: String,
    /// Upstream email, as of the last sign-in.
    pub email: Option<String>,
    /// Upstream name, as of the last sign-in.
    pub name: Option<String>,
    /// When it was linked (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub linked_at: OffsetDateTime,
    /// Last sign-in through it (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_login_at: Option<OffsetDateTime>,
}

/// A user's linked identities.
#[derive(Debug, Serialize, ToSchema)]
pub struct IdentityList {
    /// Oldest first.
    pub identities: Vec<IdentityView>,
}

/// `{account}/users/{user}/identities/{provider}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct IdentityPath {
    /// Account id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub account: AccountId,
    /// User id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub user: UserId,
    /// The configured provider id.
    #[param(max_length = 64)]
    pub provider: String,
}

/// A list of users.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    /// Oldest first.
    pub users: Vec<UserView>,
}

/// A browser session as the API shows it (its id is not the cookie value).
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// Session id, for revocation.
    pub id: String,
    /// Authentication methods used.
    pub amr: Vec<String>,
    /// Sign-in time.
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last seen (to the minute).
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    /// Ends if unused until then.
    #[serde(with = "time::serde::rfc3339")]
    pub idle_expires_at: OffsetDateTime,
    /// Ends then regardless.
    #[serde(with = "time::serde::rfc3339")]
    pub absolute_expires_at: OffsetDateTime,
    /// Browser at sign-in.
    pub user_agent: Option<String>,
    /// Address at sign-in.
    pub ip: Option<String>,
}

impl From<Session> for SessionView {
    fn from(s: Session) -> Self {
        Self {
            id: s.id,
            amr: s.amr,
            created_at: s.created_at,
            last_seen_at: s.last_seen_at,
            idle_expires_at: s.idle_expires_at,
            absolute_expires_at: s.absolute_expires_at,
            user_agent: s.user_agent,
            ip: s.ip,
        }
    }
}

/// A user's live sessions.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionList {
    /// Newest first.
    pub sessions: Vec<SessionView>,
}

/// One line of the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditView {
    /// `client:<id>`, `user:<id>` or `system`.
    pub actor: String,
    /// What happened.
    pub action: String,
    /// What it happened to.
    pub target: Option<String>,
    /// Extra facts (JSON text).
    pub detail: Option<String>,
    /// Client address.
    pub ip: Option<String>,
    /// When (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

impl From<AuditEntry> for AuditView {
    fn from(e: AuditEntry) -> Self {
        Self { actor: e.actor.who, action: e.action, target: e.target, detail: e.detail, ip: e.actor.ip, at: e.at }
    }
}

/// The account's audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditList {
    /// Newest first.
    pub entries: Vec<AuditView>,
}

/// Paging of the audit trail.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// How many entries, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// `{account}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct AccountPath {
    /// Account id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub account: AccountId,
}

/// `{account}/users/{user}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct UserPath {
    /// Account id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub account: AccountId,
    /// User id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub user: UserId,
}

/// `{account}/users/{user}/sessions/{session}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct SessionPath {
    /// Account id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub account: AccountId,
    /// User id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub user: UserId,
    /// Session id.
    #[param(max_length = 64)]
    pub session: String,
}

// ---- helpers ----

/// Re-labels a domain validation error with the field name the request used.
fn refield(field: &'static str, e: ponte_linking::Error) -> Problem {
    match e {
        ponte_linking::Error::Invalid { message, .. } => Problem::validation(field, message),
        other => other.into(),
    }
}

fn parse_lang(field: &'static str, input: Option<&str>) -> Result<Option<Lang>, Problem> {
    input.map(|l| Lang::parse(l).ok_or_else(|| Problem::validation(field, "language must be it or en"))).transpose()
}

fn parse_role(input: &str) -> Result<Role, Problem> {
    let role = Role::parse(input).ok_or_else(|| Problem::validation("role", "role must be admin or member"))?;
    check_new_user_role(role)?;
    Ok(role)
}

async fn hash_optional_password(password: Option<String>, field: &'static str) -> Result<Option<String>, Problem> {
    match password {
        None => Ok(None),
        Some(p) => {
            if let Err(ponte_identity::Error::Invalid(message)) = password::check_policy(&p) {
                return Err(Problem::validation(field, message));
            }
            Ok(Some(password::hash(p).await?))
        }
    }
}

/// The grants of a request, each parsed; the error names the entry at fault.
fn parse_grants(input: &[GrantJson]) -> Result<Vec<Grant>, Problem> {
    if input.len() > 64 {
        return Err(Problem::validation("permissions", "at most 64 grants"));
    }
    input
        .iter()
        .enumerate()
        .map(|(i, g)| Grant::parse(g).map_err(|m| Problem::validation(format!("permissions[{i}]"), m)))
        .collect()
}

fn forbidden(detail: &str) -> Problem {
    Problem::new(actix_web::http::StatusCode::FORBIDDEN, "forbidden", "Forbidden").detail(detail)
}

/// A member with `users:manage` manages members only, and grants only what they hold.
fn check_delegation(caller: &Caller, target_role: Role, grants: &[Grant]) -> Result<(), Problem> {
    let Some(who) = caller.principal() else { return Ok(()) };
    if !access::may_manage(who, target_role) {
        return Err(forbidden("Members who manage users manage members only."));
    }
    if !access::may_grant(who, grants) {
        return Err(forbidden("You can grant only permissions you hold, on the companies you hold them on."));
    }
    Ok(())
}

/// Seats of `account` now, for its JSON.
async fn seats_now(state: &AppState, account: AccountId) -> Result<SeatUsage, Problem> {
    Ok(state.seats.usage(account, state.now()).await?)
}

/// Only the owner (or the POS backend) may change or remove the owner: an admin must not
/// be able to take the account over by resetting the owner's email or password.
fn guard_owner(caller: &Caller, target: &User) -> Result<(), Problem> {
    match caller {
        Caller::User { role, .. } if target.role == Role::Owner && *role != Role::Owner => {
            Err(Problem::new(actix_web::http::StatusCode::FORBIDDEN, "forbidden", "Forbidden")
                .detail("Only the owner may change the owner."))
        }
        _ => Ok(()),
    }
}

pub async fn require_account(state: &AppState, account: AccountId) -> Result<Account, Problem> {
    state.accounts.get(account).await?.ok_or_else(|| Problem::not_found("account_not_found", "No such account."))
}

async fn require_user(state: &AppState, account: AccountId, user: UserId) -> Result<User, Problem> {
    require_account(state, account).await?;
    state
        .users
        .get(account, user)
        .await?
        .ok_or_else(|| Problem::not_found("user_not_found", "No such user in this account."))
}

type ApiResult = Result<HttpResponse, Problem>;

/// What managing users takes: owners and admins, or a member granted `users:manage`.
const USERS_MANAGE: Need = Need::Permission(access::Permission::UsersManage, access::Target::Account);

const PROBLEM: &str = "application/problem+json";

// ---- handlers ----

/// Creates an account and its owner.
#[utoipa::path(post, path = "/api/v1/accounts", tag = "accounts", request_body = CreateAccount,
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 201, body = CreatedAccount, headers(("Location" = String, description = "The new account"))),
        (status = 400, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 401, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 403, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 409, description = "email_taken", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 422, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn create_account(
    caller: Caller,
    req: HttpRequest,
    body: web::Json<CreateAccount>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(None, Need::Backend)?;
    let body = body.into_inner();
    let name = parse_name("name", &body.name)?;
    let owner_name = parse_name("owner.name", &body.owner.name)?;
    let email = Email::parse(&body.owner.email).map_err(|e| refield("owner.email", e))?;
    let password_hash = hash_optional_password(body.owner.password, "owner.password").await?;
    let lang = parse_lang("owner.language", body.owner.language.as_deref())?.unwrap_or(Lang::It);
    let owner = NewUser { email, name: owner_name, role: Role::Owner, password_hash, lang, grants: Vec::new() };
    let (account, owner) = state.accounts.create(name, owner, &caller.actor(&req), state.now()).await?;
    let id = account.id.to_string();
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/accounts/{id}")))
        .json(CreatedAccount { id, account: AccountView::of(account, SeatUsage::default()), owner: owner.into() }))
}

/// One account.
#[utoipa::path(get, path = "/api/v1/accounts/{account}", tag = "accounts", params(AccountPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = AccountView), (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM)))]
pub async fn get_account(caller: Caller, path: web::Path<AccountPath>, state: web::Data<AppState>) -> ApiResult {
    caller.check(Some(path.account), Need::Member)?;
    let account = require_account(&state, path.account).await?;
    Ok(HttpResponse::Ok().json(AccountView::of(account, seats_now(&state, path.account).await?)))
}

/// The account's users.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/users", tag = "users", params(AccountPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = UserList), (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM)))]
pub async fn list_users(caller: Caller, path: web::Path<AccountPath>, state: web::Data<AppState>) -> ApiResult {
    caller.check(Some(path.account), USERS_MANAGE)?;
    require_account(&state, path.account).await?;
    let users = state.users.list(path.account).await?;
    Ok(HttpResponse::Ok().json(UserList { users: users.into_iter().map(Into::into).collect() }))
}

/// Adds an admin or a member to the account.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/users", tag = "users", params(AccountPath), request_body = CreateUser,
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 201, body = UserView),
        (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 409, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 422, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn create_user(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<AccountPath>,
    body: web::Json<CreateUser>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), USERS_MANAGE)?;
    let body = body.into_inner();
    let email = Email::parse(&body.email)?;
    let name = parse_name("name", &body.name)?;
    let role = parse_role(&body.role)?;
    let lang = parse_lang("language", body.language.as_deref())?.unwrap_or(Lang::It);
    let grants = parse_grants(body.permissions.as_deref().unwrap_or_default())?;
    if role != Role::Member && !grants.is_empty() {
        return Err(Problem::validation(
            "permissions",
            "owners and admins may do everything: grant permissions to members",
        ));
    }
    let send_link = body.send_password_link.unwrap_or(false);
    if send_link && body.password.is_some() {
        return Err(Problem::validation("send_password_link", "give a password or send a link, not both"));
    }
    check_delegation(&caller, role, &grants)?;
    let account = require_account(&state, path.account).await?;
    let password_hash = hash_optional_password(body.password, "password").await?;
    let actor = caller.actor(&req);
    let new = NewUser { email, name, role, password_hash, lang, grants };
    let user = state.users.create(path.account, new, &actor, state.now()).await?;
    if send_link {
        // The user exists already: a mail queue that is away must not make the POS
        // backend retry the creation (it would get email_taken). The link can be resent.
        if let Err(e) = state.recovery().send_setup_link(&user, &account.name, &actor, state.now()).await {
            tracing::warn!(user = %user.id, error = %e, "the set-password link was not queued; resend it");
        }
    }
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/accounts/{}/users/{}", path.account, user.id)))
        .json(UserView::from(user)))
}

/// One user.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/users/{user}", tag = "users", params(UserPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = UserView), (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM)))]
pub async fn get_user(caller: Caller, path: web::Path<UserPath>, state: web::Data<AppState>) -> ApiResult {
    caller.check(Some(path.account), Need::ManageOrSelf(path.user))?;
    Ok(HttpResponse::Ok().json(UserView::from(require_user(&state, path.account, path.user).await?)))
}

/// Changes a user. Disabling a user or setting a password ends its sessions.
#[utoipa::path(patch, path = "/api/v1/accounts/{account}/users/{user}", tag = "users", params(UserPath), request_body = UpdateUser,
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = UserView),
        (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 409, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 422, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn update_user(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<UserPath>,
    body: web::Json<UpdateUser>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), USERS_MANAGE)?;
    let body = body.into_inner();
    let patch = UserPatch {
        lang: parse_lang("language", body.language.as_deref())?,
        email: body.email.as_deref().map(Email::parse).transpose()?,
        name: body.name.as_deref().map(|n| parse_name("name", n)).transpose()?,
        role: body
            .role
            .as_deref()
            .map(|r| Role::parse(r).ok_or_else(|| Problem::validation("role", "role must be admin or member")))
            .transpose()?,
        status: body
            .status
            .as_deref()
            .map(|s| {
                UserStatus::parse(s).ok_or_else(|| Problem::validation("status", "status must be active or disabled"))
            })
            .transpose()?,
        password_hash: hash_optional_password(body.password, "password").await?,
    };
    let target = require_user(&state, path.account, path.user).await?;
    guard_owner(&caller, &target)?;
    check_delegation(&caller, target.role, &[])?;
    check_delegation(&caller, patch.role.unwrap_or(target.role), &[])?;
    let user =
        manage::update_user(user_stores(&state), path.account, path.user, patch, &caller.actor(&req), state.now())
            .await?;
    Ok(HttpResponse::Ok().json(UserView::from(user)))
}

/// The stores a user change touches.
fn user_stores(state: &AppState) -> UserStores<'_> {
    UserStores { users: state.users.as_ref(), sessions: &state.sessions, refresh: state.refresh.as_ref() }
}

/// Deletes a user (never the owner) and ends its sessions.
#[utoipa::path(delete, path = "/api/v1/accounts/{account}/users/{user}", tag = "users", params(UserPath),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 409, description = "owner_cannot_be_deleted", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn delete_user(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<UserPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), USERS_MANAGE)?;
    let target = require_user(&state, path.account, path.user).await?;
    guard_owner(&caller, &target)?;
    check_delegation(&caller, target.role, &[])?;
    manage::delete_user(user_stores(&state), path.account, path.user, &caller.actor(&req), state.now()).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The user's live browser sessions.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/users/{user}/sessions", tag = "sessions", params(UserPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = SessionList), (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM)))]
pub async fn list_sessions(caller: Caller, path: web::Path<UserPath>, state: web::Data<AppState>) -> ApiResult {
    caller.check(Some(path.account), Need::ManageOrSelf(path.user))?;
    let user = require_user(&state, path.account, path.user).await?;
    let sessions = state.sessions.list_for_user(user.id, state.now()).await?;
    Ok(HttpResponse::Ok().json(SessionList { sessions: sessions.into_iter().map(Into::into).collect() }))
}

/// Ends one session of the user.
#[utoipa::path(delete, path = "/api/v1/accounts/{account}/users/{user}/sessions/{session}", tag = "sessions", params(SessionPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 204, description = "Ended"), (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM)))]
pub async fn revoke_session(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<SessionPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), Need::ManageOrSelf(path.user))?;
    let user = require_user(&state, path.account, path.user).await?;
    if caller.user_id() != Some(user.id) {
        guard_owner(&caller, &user)?;
        check_delegation(&caller, user.role, &[])?;
    }
    if path.session.len() > 64 || !state.sessions.revoke(user.id, &path.session).await? {
        return Err(Problem::not_found("session_not_found", "No such live session for this user."));
    }
    let entry = AuditEntry::for_user(path.account, user.id, &caller.actor(&req), "session.revoked", state.now());
    state.audit.append(&entry).await?;
    Ok(HttpResponse::NoContent().finish())
}

/// The account's audit trail, newest first.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/audit", tag = "audit", params(AccountPath, AuditQuery),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = AuditList),
        (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 422, description = "validation_failed: limit out of range", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn list_audit(
    caller: Caller,
    path: web::Path<AccountPath>,
    query: web::Query<AuditQuery>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), Need::Manage)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Problem::validation("limit", "limit must be between 1 and 500"));
    }
    require_account(&state, path.account).await?;
    let entries = state.audit.list(path.account, limit).await?;
    Ok(HttpResponse::Ok().json(AuditList { entries: entries.into_iter().map(Into::into).collect() }))
}

/// The user's linked upstream identities.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/users/{user}/identities", tag = "identities", params(UserPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = IdentityList), (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM)))]
pub async fn list_identities(caller: Caller, path: web::Path<UserPath>, state: web::Data<AppState>) -> ApiResult {
    caller.check(Some(path.account), Need::ManageOrSelf(path.user))?;
    require_user(&state, path.account, path.user).await?;
    let links = state.links.for_user(path.account, path.user).await?;
    let identities = links
        .into_iter()
        .map(|l| IdentityView {
            provider: l.provider,
            issuer: l.issuer,
            subject: l.subject,
            email: l.email,
            name: l.name,
            linked_at: l.linked_at,
            last_login_at: l.last_login_at,
        })
        .collect();
    Ok(HttpResponse::Ok().json(IdentityList { identities }))
}

/// Unlinks the user's identity at a provider; pending link proofs and collaboration
/// invites for the user are voided.
#[utoipa::path(delete, path = "/api/v1/accounts/{account}/users/{user}/identities/{provider}", tag = "identities", params(IdentityPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 204, description = "Unlinked"), (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM)))]
pub async fn unlink_identity(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<IdentityPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), USERS_MANAGE)?;
    check_delegation(&caller, require_user(&state, path.account, path.user).await?.role, &[])?;
    let (store, links, actor) = (state.sessions.store().as_ref(), state.links.as_ref(), caller.actor(&req));
    let integrations = state.integrations.as_ref();
    if path.provider.len() > 64
        || !federation::unlink(store, links, integrations, path.account, path.user, &path.provider, &actor, state.now())
            .await?
    {
        return Err(Problem::not_found("identity_not_found", "This user has no identity linked at that provider."));
    }
    Ok(HttpResponse::NoContent().finish())
}

/// Replaces a member's grants. Tokens issued before keep the old ones until their next
/// refresh; the REST API and introspection use the new ones at once.
#[utoipa::path(put, path = "/api/v1/accounts/{account}/users/{user}/permissions", tag = "users", params(UserPath),
    request_body = PutPermissions, security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = UserView),
        (status = 403, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 409, description = "not_a_member", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 422, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn put_permissions(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<UserPath>,
    body: web::Json<PutPermissions>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), USERS_MANAGE)?;
    let grants = parse_grants(&body.permissions)?;
    let target = require_user(&state, path.account, path.user).await?;
    check_delegation(&caller, target.role, &grants)?;
    if caller.user_id() == Some(path.user) {
        return Err(forbidden("Nobody changes their own permissions."));
    }
    let user = state.users.set_grants(path.account, path.user, grants, &caller.actor(&req), state.now()).await?;
    Ok(HttpResponse::Ok().json(UserView::from(user)))
}

/// Mails the user a new single-use link to choose a password (7 days); the link sent
/// before stops working.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/users/{user}/password-link", tag = "users", params(UserPath),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 202, description = "The link is queued for delivery"),
        (status = 403, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 404, body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 409, description = "user_not_active", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn send_password_link(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<UserPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), USERS_MANAGE)?;
    let account = require_account(&state, path.account).await?;
    let target = require_user(&state, path.account, path.user).await?;
    guard_owner(&caller, &target)?;
    check_delegation(&caller, target.role, &[])?;
    state.recovery().send_setup_link(&target, &account.name, &caller.actor(&req), state.now()).await?;
    Ok(HttpResponse::Accepted().finish())
}
