//! Upstream federation: connect (link), create (register) and sign in with the external
//! company-wide ID, the confirmation and proof pages, unlink, and back-channel logout.
//!
//! Nothing here ever links silently. A link is written only after the person who started
//! the flow, in the browser that started it, saw the upstream identity and clicked
//! "Continue" (or proved they own the existing account). Flow state is one-time, bound to
//! the browser by a cookie, and expires in ten minutes.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_identity::password;
use ponte_identity::ratelimit::RateLimit;
use ponte_identity::secret::{constant_time_eq, digest, random_bytes, random_token};
use ponte_identity::session::Session;
use ponte_identity::signout::end_everywhere;
use ponte_identity::upstream::{Ask, FlowSecrets, Upstream, UpstreamError, UpstreamIdentity};
use ponte_linking::account::{User, may_sign_in};
use ponte_linking::audit::Actor;
use ponte_linking::ids::{AccountId, UserId};
use ponte_linking::links::Decision;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use time::Duration;

use crate::browser::{
    CSRF, cookie, csrf_failed_page, csrf_ok, csrf_token, current_session, error_page, page, see_other, start_session,
};
use crate::extract::client_ip;
use crate::html::{Lang, escape};
use crate::problem::Problem;
use crate::state::AppState;

/// Registers the federation routes and pages.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/federation/{provider}/start").get(start))
        .service(web::resource("/federation/{provider}/callback").get(callback))
        .service(web::resource("/federation/{provider}/backchannel-logout").post(backchannel_logout))
        .service(web::resource("/link/confirm").get(confirm_page).post(confirm))
        .service(web::resource("/link/unlink").post(unlink_page));
}

/// The cookie that binds a flow to the browser that started it.
const BINDING: &str = "ponte_fed";
/// How long a flow or a pending confirmation lives.
const FLOW_TTL_SECS: u64 = 600;
/// Password or code attempts on one proof page.
const MAX_PROOF_ATTEMPTS: u32 = 5;
/// Flows one client address may start per minute (each lives ten minutes).
const FLOWS_PER_IP: RateLimit = RateLimit { name: "fed-flow-ip", max: 120, window: Duration::minutes(1) };
/// Proof attempts per user, across flows.
const PROOF_PER_USER: RateLimit = RateLimit { name: "link-proof", max: 10, window: Duration::minutes(15) };

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Intent {
    Login,
    Link,
    Register,
}

#[derive(Debug, Serialize, Deserialize)]
struct Flow {
    provider: String,
    intent: Intent,
    secrets: FlowSecrets,
    account_id: Option<AccountId>,
    user_id: Option<UserId>,
    initiating_sid: Option<String>,
    binding: String,
    return_to: String,
    started_at: i64,
    /// The sign-in must be fresh upstream (an application asked for prompt=login or
    /// max_age), so a silent upstream session cannot stand in for it.
    #[serde(default)]
    fresh: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum PendingKind {
    /// An admin connects an identity to their own user: confirm with "Continue".
    Confirm,
    /// Someone signed in upstream with the verified email of an existing user: prove it.
    ProveExisting,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Pending {
    kind: PendingKind,
    identity: UpstreamIdentity,
    account_id: AccountId,
    user_id: UserId,
    initiating_sid: Option<String>,
    binding: String,
    return_to: String,
    code_digest: Option<String>,
    epoch: u64,
}

fn flow_key(state_param: &str) -> String {
    format!("fed:{}", digest(state_param))
}

fn pending_key(id: &str) -> String {
    format!("fedpending:{}", digest(id))
}

fn epoch_key(user_id: UserId) -> String {
    format!("linkepoch:{user_id}")
}

fn upstream_sid_key(provider: &str, sid: &str) -> String {
    format!("upsid:{provider}:{}", digest(sid))
}

fn redirect_uri(state: &AppState, provider: &str) -> String {
    format!("{}/federation/{provider}/callback", state.issuer)
}

/// `return_to` may only point back into Ponte: a path, never another origin.
fn check_return_to(value: Option<&str>) -> Option<String> {
    match value {
        None | Some("") => Some("/".into()),
        Some(v)
            if v.len() <= 512
                && v.starts_with('/')
                && !v.starts_with("//")
                && !v.starts_with("/\\")
                && !v.chars().any(|c| c.is_control() || c == '\\') =>
        {
            Some(v.to_owned())
        }
        Some(_) => None,
    }
}

fn refuse(req: &HttpRequest, status: StatusCode, code: &str) -> HttpResponse {
    let (it, en) = match code {
        "unknown_provider" => {
            ("Questo fornitore di identità non è configurato.", "This identity provider is not configured.")
        }
        "invalid_request" => ("La richiesta non è valida.", "The request is not valid."),
        "invalid_return_to" => ("L'indirizzo di ritorno non è ammesso.", "The return address is not allowed."),
        "sign_in_first" => ("Accedi a Ponte prima di collegare un ID.", "Sign in to Ponte before connecting an ID."),
        "link_not_allowed" => {
            ("Solo il titolare o un amministratore può collegare un ID.", "Only an owner or admin can connect an ID.")
        }
        "flow_expired" => (
            "Questa richiesta è scaduta o è già stata usata. Ricomincia dall'inizio.",
            "This request expired or was already used. Please start again.",
        ),
        "flow_other_browser" => (
            "Questa richiesta è stata avviata in un altro browser o da un'altra sessione. Ricomincia da qui.",
            "This request was started in another browser or session. Please start again here.",
        ),
        "provider_unreachable" => (
            "Il fornitore di identità non risponde. Riprova tra poco.",
            "The identity provider is not answering. Try again shortly.",
        ),
        "upstream_response_invalid" => (
            "La risposta del fornitore di identità non è valida; per sicurezza non proseguiamo.",
            "The identity provider's answer did not pass our checks; for safety we stop here.",
        ),
        "identity_linked_elsewhere" => (
            "Questo ID è già collegato a un altro utente di Ponte. Nessun collegamento è stato fatto.",
            "This ID is already linked to another Ponte user. Nothing was linked.",
        ),
        "provider_taken" => (
            "Questo utente ha già un ID collegato per questo fornitore. Scollegalo prima.",
            "This user already has an ID linked at this provider. Unlink it first.",
        ),
        "user_disabled" => ("Questo utente o account è disattivato.", "This user or account is disabled."),
        "not_linked" => (
            "Nessun utente di Ponte è collegato a questo ID. Chiedi al tuo amministratore di collegarlo.",
            "No Ponte user is linked to this ID. Ask your administrator to connect it.",
        ),
        "too_many_attempts" => ("Troppi tentativi. Ricomincia più tardi.", "Too many attempts. Start again later."),
        _ => ("Impossibile continuare.", "Cannot continue."),
    };
    error_page(req, status, code, it, en)
}

fn provider<'a>(state: &'a AppState, id: &str) -> Option<&'a Arc<Upstream>> {
    state.providers.get(id)
}

fn upstream_failure(req: &HttpRequest, e: &UpstreamError) -> HttpResponse {
    tracing::warn!(error = %e, "upstream flow failed");
    match e {
        UpstreamError::Unreachable(_) | UpstreamError::Config(_) => {
            refuse(req, StatusCode::BAD_GATEWAY, "provider_unreachable")
        }
        UpstreamError::Returned { error } => upstream_error_page(req, error),
        UpstreamError::Invalid(_) => refuse(req, StatusCode::BAD_REQUEST, "upstream_response_invalid"),
    }
}

fn upstream_error_page(req: &HttpRequest, error: &str) -> HttpResponse {
    let error: String = error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
    let (it, en) = match error.as_str() {
        "access_denied" => {
            ("Hai annullato l'accesso presso il fornitore di identità.", "You cancelled at the identity provider.")
        }
        _ => ("Il fornitore di identità ha rifiutato la richiesta.", "The identity provider refused the request."),
    };
    let mut response = error_page(req, StatusCode::BAD_REQUEST, "upstream_error", it, en);
    response.headers_mut().insert(
        header::HeaderName::from_static("x-upstream-error"),
        header::HeaderValue::from_str(&error).unwrap_or(header::HeaderValue::from_static("error")),
    );
    response
}

/// `?intent=login|link|register&return_to=/path`.
#[derive(Debug, Deserialize)]
pub struct StartQuery {
    intent: Option<String>,
    return_to: Option<String>,
}

/// Starts a flow at the provider.
pub async fn start(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<StartQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let Some(upstream) = provider(&state, &path) else {
        return Ok(refuse(&req, StatusCode::NOT_FOUND, "unknown_provider"));
    };
    let intent = match query.intent.as_deref() {
        None | Some("login") => Intent::Login,
        Some("link") => Intent::Link,
        Some("register") => Intent::Register,
        Some(_) => return Ok(refuse(&req, StatusCode::BAD_REQUEST, "invalid_request")),
    };
    let Some(return_to) = check_return_to(query.return_to.as_deref()) else {
        return Ok(refuse(&req, StatusCode::BAD_REQUEST, "invalid_return_to"));
    };
    let mut flow_user = (None, None, None);
    if intent != Intent::Login {
        let Some(session) = current_session(&req, &state).await? else {
            return Ok(refuse(&req, StatusCode::UNAUTHORIZED, "sign_in_first"));
        };
        match state.active_user(session.account_id, session.user_id).await? {
            Some(user) if user.role.is_admin() => {}
            Some(_) => return Ok(refuse(&req, StatusCode::FORBIDDEN, "link_not_allowed")),
            None => return Ok(refuse(&req, StatusCode::FORBIDDEN, "user_disabled")),
        }
        flow_user = (Some(session.account_id), Some(session.user_id), Some(session.id));
    }
    // Link and register force a fresh upstream sign-in: a stale upstream session in this
    // browser must never answer for someone else.
    let step_up = intent == Intent::Login && wants_fresh_login(&state, &return_to).await;
    let ask = match intent {
        Intent::Login if step_up => Ask::FreshLogin,
        Intent::Login => Ask::Login,
        Intent::Link => Ask::FreshLogin,
        Intent::Register => Ask::Create,
    };
    crate::routes::authorize::limit_parked_state(&req, &state, &FLOWS_PER_IP).await?;
    let started = match upstream.start(&redirect_uri(&state, &upstream.id), ask, None).await {
        Ok(s) => s,
        Err(e) => return Ok(upstream_failure(&req, &e)),
    };
    let binding = random_token();
    let flow = Flow {
        provider: upstream.id.clone(),
        intent,
        secrets: FlowSecrets { nonce: started.nonce, pkce_verifier: started.pkce_verifier },
        account_id: flow_user.0,
        user_id: flow_user.1,
        initiating_sid: flow_user.2,
        binding: digest(&binding),
        return_to,
        started_at: state.now().unix_timestamp(),
        fresh: step_up,
    };
    let json = serde_json::to_string(&flow).map_err(|e| Problem::internal(&e))?;
    state.sessions.store().put_once(&flow_key(&started.state), &json, FLOW_TTL_SECS).await?;
    let mut response = see_other(&started.url);
    let _ = response.add_cookie(&cookie(&state, BINDING, binding));
    Ok(response)
}

/// Whether `return_to` resumes an authorization request that demands a fresh sign-in.
async fn wants_fresh_login(state: &AppState, return_to: &str) -> bool {
    let Some(id) = return_to.strip_prefix("/oauth2/authorize/continue?authz=") else { return false };
    match crate::routes::authorize::pending_request(state, id).await {
        Some(request) => request.prompt.contains(&ponte_identity::oidc::Prompt::Login) || request.max_age.is_some(),
        None => false,
    }
}

fn binding_ok(req: &HttpRequest, state: &AppState, expected_digest: &str) -> bool {
    req.cookie(&crate::browser::cookie_name(state, BINDING))
        .is_some_and(|c| constant_time_eq(digest(c.value()).as_bytes(), expected_digest.as_bytes()))
}

/// The provider's answer.
#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

/// Finishes a flow: one-time state, same browser, full validation, then by intent.
pub async fn callback(
    req: HttpRequest,
    path: web::Path<String>,
    query: web::Query<CallbackQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let Some(upstream) = provider(&state, &path) else {
        return Ok(refuse(&req, StatusCode::NOT_FOUND, "unknown_provider"));
    };
    let Some(state_param) = query.state.as_deref().filter(|s| s.len() <= 128) else {
        return Ok(refuse(&req, StatusCode::BAD_REQUEST, "flow_expired"));
    };
    let Some(json) = state.sessions.store().take_once(&flow_key(state_param)).await? else {
        return Ok(refuse(&req, StatusCode::BAD_REQUEST, "flow_expired"));
    };
    let flow: Flow = serde_json::from_str(&json).map_err(|e| Problem::internal(&e))?;
    if flow.provider != upstream.id {
        return Ok(refuse(&req, StatusCode::BAD_REQUEST, "flow_expired"));
    }
    if !binding_ok(&req, &state, &flow.binding) {
        return Ok(refuse(&req, StatusCode::BAD_REQUEST, "flow_other_browser"));
    }
    if let Some(error) = &query.error {
        return Ok(upstream_error_page(&req, error));
    }
    let Some(code) = query.code.as_deref() else {
        return Ok(refuse(&req, StatusCode::BAD_REQUEST, "upstream_response_invalid"));
    };
    let fresh_after = (flow.intent != Intent::Login || flow.fresh).then_some(flow.started_at);
    let identity = match upstream
        .finish(
            &redirect_uri(&state, &upstream.id),
            code,
            query.iss.as_deref(),
            &flow.secrets,
            fresh_after,
            state.now(),
        )
        .await
    {
        Ok(identity) => identity,
        Err(e) => return Ok(upstream_failure(&req, &e)),
    };
    match flow.intent {
        Intent::Link | Intent::Register => {
            // The admin who started it, in the session that started it, confirms.
            let session = current_session(&req, &state).await?;
            if session.as_ref().map(|s| &s.id) != flow.initiating_sid.as_ref() {
                return Ok(refuse(&req, StatusCode::BAD_REQUEST, "flow_other_browser"));
            }
            let (Some(account_id), Some(user_id)) = (flow.account_id, flow.user_id) else {
                return Ok(refuse(&req, StatusCode::BAD_REQUEST, "flow_expired"));
            };
            let pending = Pending {
                kind: PendingKind::Confirm,
                epoch: link_epoch(&state, user_id).await?,
                identity,
                account_id,
                user_id,
                initiating_sid: flow.initiating_sid,
                binding: flow.binding,
                return_to: flow.return_to,
                code_digest: None,
            };
            let id = store_pending(&state, &pending).await?;
            Ok(see_other(&format!("/link/confirm?id={id}")))
        }
        Intent::Login => login_with(&req, &state, identity, flow.binding, flow.return_to).await,
    }
}

async fn link_epoch(state: &AppState, user_id: UserId) -> Result<u64, Problem> {
    Ok(state.sessions.store().peek(&epoch_key(user_id)).await?.and_then(|v| v.parse().ok()).unwrap_or(0))
}

async fn store_pending(state: &AppState, pending: &Pending) -> Result<String, Problem> {
    let id = random_token();
    save_pending(state, &id, pending).await?;
    Ok(id)
}

async fn save_pending(state: &AppState, id: &str, pending: &Pending) -> Result<(), Problem> {
    let json = serde_json::to_string(pending).map_err(|e| Problem::internal(&e))?;
    state.sessions.store().put_once(&pending_key(id), &json, FLOW_TTL_SECS).await?;
    Ok(())
}

async fn login_with(
    req: &HttpRequest,
    state: &AppState,
    identity: UpstreamIdentity,
    binding: String,
    return_to: String,
) -> Result<HttpResponse, Problem> {
    if let Some(link) = state.links.find(&identity.issuer, &identity.subject).await? {
        let Some(user) = state.active_user(link.account_id, link.user_id).await? else {
            return Ok(refuse(req, StatusCode::FORBIDDEN, "user_disabled"));
        };
        state.links.record_login(&link, &identity, &Actor::user(user.id, client_ip(req)), state.now()).await?;
        return sign_in(req, state, &user, &identity, &return_to).await;
    }
    // Not linked. A verified email that matches an existing user earns an offer to link,
    // with proof of that account; never a silent link.
    if identity.email_verified
        && let Some(email) = &identity.email
        && let Some(candidate) = state.directory.login_candidate(email).await?
        && may_sign_in(&candidate.user, candidate.account_status)
    {
        let user_id = candidate.user.id;
        let pending = Pending {
            kind: PendingKind::ProveExisting,
            epoch: link_epoch(state, user_id).await?,
            identity,
            account_id: candidate.user.account_id,
            user_id,
            initiating_sid: None,
            binding,
            return_to,
            code_digest: None,
        };
        let id = store_pending(state, &pending).await?;
        return Ok(see_other(&format!("/link/confirm?id={id}")));
    }
    Ok(refuse(req, StatusCode::FORBIDDEN, "not_linked"))
}

/// Starts a Ponte session for `user` signed in through `identity`.
async fn sign_in(
    req: &HttpRequest,
    state: &AppState,
    user: &User,
    identity: &UpstreamIdentity,
    return_to: &str,
) -> Result<HttpResponse, Problem> {
    let (response, session) =
        start_session(req, state, user, vec!["fed".into(), identity.provider.clone()], return_to).await?;
    if let Some(sid) = &identity.sid {
        remember_upstream_session(state, &identity.provider, sid, &session).await?;
    }
    Ok(response)
}

/// Indexes a Ponte session under the upstream `sid`, for back-channel logout.
async fn remember_upstream_session(
    state: &AppState,
    provider: &str,
    sid: &str,
    session: &Session,
) -> Result<(), Problem> {
    let key = upstream_sid_key(provider, sid);
    let store = state.sessions.store();
    let mut entries: Vec<(String, UserId)> =
        store.peek(&key).await?.and_then(|j| serde_json::from_str(&j).ok()).unwrap_or_default();
    entries.push((session.id.clone(), session.user_id));
    let ttl = (session.absolute_expires_at - state.now()).whole_seconds().max(1) as u64;
    store.put_once(&key, &serde_json::to_string(&entries).map_err(|e| Problem::internal(&e))?, ttl).await?;
    Ok(())
}

/// `?id=` of a pending confirmation.
#[derive(Debug, Deserialize)]
pub struct ConfirmQuery {
    id: String,
}

async fn load_pending(req: &HttpRequest, state: &AppState, id: &str) -> Result<Result<Pending, HttpResponse>, Problem> {
    if id.len() != 43 {
        return Ok(Err(refuse(req, StatusCode::BAD_REQUEST, "flow_expired")));
    }
    let Some(json) = state.sessions.store().peek(&pending_key(id)).await? else {
        return Ok(Err(refuse(req, StatusCode::BAD_REQUEST, "flow_expired")));
    };
    let pending: Pending = serde_json::from_str(&json).map_err(|e| Problem::internal(&e))?;
    if !binding_ok(req, state, &pending.binding) {
        return Ok(Err(refuse(req, StatusCode::BAD_REQUEST, "flow_other_browser")));
    }
    // An unlink since the flow started voids it.
    if link_epoch(state, pending.user_id).await? != pending.epoch {
        return Ok(Err(refuse(req, StatusCode::BAD_REQUEST, "flow_expired")));
    }
    Ok(Ok(pending))
}

/// Shows what will be linked to what, and asks for "Continue" (or proof).
pub async fn confirm_page(
    req: HttpRequest,
    query: web::Query<ConfirmQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let pending = match load_pending(&req, &state, &query.id).await? {
        Ok(p) => p,
        Err(page) => return Ok(page),
    };
    render_confirm(&req, &state, &query.id, &pending, StatusCode::OK, None).await
}

async fn render_confirm(
    req: &HttpRequest,
    state: &AppState,
    id: &str,
    pending: &Pending,
    status: StatusCode,
    error: Option<&str>,
) -> Result<HttpResponse, Problem> {
    let lang = Lang::from_request(req);
    let provider_name =
        provider(state, &pending.identity.provider).map(|p| p.config.display_name.clone()).unwrap_or_default();
    let user = state.active_user(pending.account_id, pending.user_id).await?;
    let Some(user) = user else { return Ok(refuse(req, StatusCode::FORBIDDEN, "user_disabled")) };
    let account = state.directory.account(user.account_id).await?.map(|a| a.name).unwrap_or_default();
    let (csrf, fresh) = csrf_token(req, state);
    let upstream_email = pending.identity.email.clone().unwrap_or_else(|| "—".into());
    let upstream_name = pending.identity.name.clone().unwrap_or_else(|| "—".into());
    let error = error.map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e))).unwrap_or_default();
    let identity = format!(
        r#"<dl>
<dt>{provider_l}</dt><dd id="upstream-provider">{provider}</dd>
<dt>Email</dt><dd id="upstream-email">{email}</dd>
<dt>{name_l}</dt><dd id="upstream-name">{name}</dd>
<dt>{account_l}</dt><dd id="ponte-account">{account}</dd>
<dt>{user_l}</dt><dd id="ponte-user">{user_email}</dd>
</dl>"#,
        provider_l = lang.pick("ID esterno", "External ID"),
        name_l = lang.pick("Nome", "Name"),
        account_l = lang.pick("Account Ponte", "Ponte account"),
        user_l = lang.pick("Utente Ponte", "Ponte user"),
        provider = escape(&provider_name),
        email = escape(&upstream_email),
        name = escape(&upstream_name),
        account = escape(&account),
        user_email = escape(&user.email),
    );
    let hidden = format!(
        r#"<input type="hidden" name="csrf_token" value="{}"><input type="hidden" name="id" value="{}">"#,
        escape(&csrf),
        escape(id)
    );
    let body = match pending.kind {
        PendingKind::Confirm => format!(
            r#"<h1>{heading}</h1>{error}<p>{intro}</p>{identity}
<form method="post" action="/link/confirm">{hidden}
<button type="submit" name="action" value="continue" id="link-continue">{cont}</button>
<button type="submit" name="action" value="cancel" id="link-cancel" style="background:#666">{cancel}</button>
</form>"#,
            heading = lang.pick("Collegare questo ID?", "Connect this ID?"),
            intro = lang.pick(
                "Controlla che sia l'ID giusto: dopo il collegamento chi accede con questo ID entra come questo utente.",
                "Check this is the right ID: once connected, whoever signs in with it signs in as this user."
            ),
            cont = lang.pick("Continua", "Continue"),
            cancel = lang.pick("Annulla", "Cancel"),
        ),
        PendingKind::ProveExisting => {
            let code_form = if pending.code_digest.is_some() {
                format!(
                    r#"<label for="code">{label}</label><input id="code" name="code" inputmode="numeric" autocomplete="one-time-code">
<button type="submit" name="action" value="code" id="link-code">{submit}</button>"#,
                    label = lang.pick("Codice ricevuto via email", "Code from the email"),
                    submit = lang.pick("Collega con il codice", "Connect with the code"),
                )
            } else {
                format!(
                    r#"<button type="submit" name="action" value="send_code" id="link-send-code" style="background:#666">{send}</button>"#,
                    send = lang.pick("Inviami un codice via email", "Email me a code instead"),
                )
            };
            format!(
                r#"<h1>{heading}</h1>{error}<p>{intro}</p>{identity}
<form method="post" action="/link/confirm">{hidden}
<label for="password">{password_l}</label><input id="password" name="password" type="password" autocomplete="current-password">
<button type="submit" name="action" value="password" id="link-password">{cont}</button>
{code_form}
<button type="submit" name="action" value="cancel" style="background:#666">{cancel}</button>
</form>"#,
                heading = lang.pick("Collegare al tuo account esistente?", "Link to your existing account?"),
                intro = lang.pick(
                    "Esiste già un utente di Ponte con questa email. Dimostra che è tuo per collegarlo a questo ID.",
                    "A Ponte user with this email already exists. Prove it is yours to link it to this ID."
                ),
                password_l = lang.pick("Password dell'account Ponte", "Your Ponte password"),
                cont = lang.pick("Continua", "Continue"),
                cancel = lang.pick("Annulla", "Cancel"),
            )
        }
    };
    let mut response = page(status, lang, lang.pick("Collega ID", "Connect ID"), &body);
    if fresh {
        let _ = response.add_cookie(&cookie(state, CSRF, csrf));
    }
    Ok(response)
}

/// What the confirmation form posts.
#[derive(Debug, Deserialize)]
pub struct ConfirmForm {
    id: String,
    action: String,
    csrf_token: Option<String>,
    password: Option<String>,
    code: Option<String>,
}

/// "Continue", "Cancel", a password, a request for a code, or the code.
pub async fn confirm(
    req: HttpRequest,
    form: web::Form<ConfirmForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if !csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        return Ok(csrf_failed_page(&req));
    }
    let mut pending = match load_pending(&req, &state, &form.id).await? {
        Ok(p) => p,
        Err(page) => return Ok(page),
    };
    let lang = Lang::from_request(&req);
    let store = state.sessions.store();
    if form.action == "cancel" {
        store.take_once(&pending_key(&form.id)).await?;
        return Ok(see_other(&pending.return_to));
    }
    let Some(user) = state.active_user(pending.account_id, pending.user_id).await? else {
        return Ok(refuse(&req, StatusCode::FORBIDDEN, "user_disabled"));
    };
    let actor = Actor::user(user.id, client_ip(&req));
    match (pending.kind, form.action.as_str()) {
        (PendingKind::Confirm, "continue") => {
            let session = current_session(&req, &state).await?;
            if session.as_ref().map(|s| &s.id) != pending.initiating_sid.as_ref() || !user.role.is_admin() {
                return Ok(refuse(&req, StatusCode::BAD_REQUEST, "flow_other_browser"));
            }
            if store.take_once(&pending_key(&form.id)).await?.is_none() {
                return Ok(refuse(&req, StatusCode::BAD_REQUEST, "flow_expired"));
            }
            match state.links.link(&user, &pending.identity, &actor, state.now()).await? {
                Decision::Link | Decision::AlreadyLinked => Ok(see_other(&pending.return_to)),
                Decision::LinkedElsewhere => Ok(refuse(&req, StatusCode::CONFLICT, "identity_linked_elsewhere")),
                Decision::ProviderTaken => Ok(refuse(&req, StatusCode::CONFLICT, "provider_taken")),
            }
        }
        (PendingKind::ProveExisting, action @ ("password" | "code" | "send_code")) => {
            let within = PROOF_PER_USER.allow(store.as_ref(), &pending.user_id.to_string(), state.now()).await?;
            // Counted atomically per confirmation, so parallel posts cannot exceed it.
            let attempts = store.incr(&format!("proof-attempts:{}", digest(&form.id)), FLOW_TTL_SECS).await?;
            if !within || attempts > u64::from(MAX_PROOF_ATTEMPTS) {
                store.take_once(&pending_key(&form.id)).await?;
                return Ok(refuse(&req, StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"));
            }
            if action == "send_code" {
                let code = format!("{:08}", u64::from_le_bytes(random_bytes::<8>()) % 100_000_000);
                pending.code_digest = Some(digest(&format!("{}:{code}", form.id)));
                save_pending(&state, &form.id, &pending).await?;
                let provider_name = provider(&state, &pending.identity.provider)
                    .map(|p| p.config.display_name.clone())
                    .unwrap_or_default();
                let mail = crate::mail::Mail {
                    to: user.email.clone(),
                    subject: "Ponte: codice per collegare il tuo ID / code to link your ID".into(),
                    body: format!(
                        "Codice / code: {code}\n\nQualcuno vuole collegare l'ID {provider_name} ({}) al tuo account Ponte. Se non sei tu, ignora questa email.\nSomeone wants to link the {provider_name} ID ({}) to your Ponte account. If it was not you, ignore this email.\n",
                        pending.identity.email.clone().unwrap_or_default(),
                        pending.identity.email.clone().unwrap_or_default(),
                    ),
                };
                if let Err(e) = state.mailer.send(mail).await {
                    tracing::error!(error = %e, "could not queue the link code email");
                    return Err(Problem::unavailable(
                        "mail_unavailable",
                        "The email could not be sent; try again shortly.",
                    ));
                }
                return render_confirm(
                    &req,
                    &state,
                    &form.id,
                    &pending,
                    StatusCode::OK,
                    Some(lang.pick("Ti abbiamo inviato un codice via email.", "We emailed you a code.")),
                )
                .await;
            }
            let proved = if action == "password" {
                let hash = state.directory.login_candidate(&user.email).await?.and_then(|c| c.password_hash);
                password::verify(form.password.clone().unwrap_or_default(), hash).await?
            } else {
                let presented = digest(&format!("{}:{}", form.id, form.code.as_deref().unwrap_or("").trim()));
                pending.code_digest.as_ref().is_some_and(|d| constant_time_eq(d.as_bytes(), presented.as_bytes()))
            };
            if !proved {
                let message = lang.pick("Password o codice non corretti.", "The password or code is not correct.");
                return render_confirm(&req, &state, &form.id, &pending, StatusCode::UNAUTHORIZED, Some(message)).await;
            }
            if store.take_once(&pending_key(&form.id)).await?.is_none() {
                return Ok(refuse(&req, StatusCode::BAD_REQUEST, "flow_expired"));
            }
            match state.links.link(&user, &pending.identity, &actor, state.now()).await? {
                Decision::Link | Decision::AlreadyLinked => {
                    sign_in(&req, &state, &user, &pending.identity, &pending.return_to).await
                }
                Decision::LinkedElsewhere => Ok(refuse(&req, StatusCode::CONFLICT, "identity_linked_elsewhere")),
                Decision::ProviderTaken => Ok(refuse(&req, StatusCode::CONFLICT, "provider_taken")),
            }
        }
        _ => Ok(refuse(&req, StatusCode::BAD_REQUEST, "invalid_request")),
    }
}

/// Voids pending proofs and confirmations of a user (after an unlink).
pub async fn void_pending_links(state: &AppState, user_id: UserId) -> Result<(), Problem> {
    let next = link_epoch(state, user_id).await? + 1;
    state.sessions.store().put_once(&epoch_key(user_id), &next.to_string(), 365 * 24 * 3600).await?;
    Ok(())
}

/// What the unlink form on the signed-in page posts.
#[derive(Debug, Deserialize)]
pub struct UnlinkForm {
    provider: String,
    csrf_token: Option<String>,
}

/// Unlinks one of the signed-in user's identities.
pub async fn unlink_page(
    req: HttpRequest,
    form: web::Form<UnlinkForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if !csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        return Ok(csrf_failed_page(&req));
    }
    let Some(session) = current_session(&req, &state).await? else { return Ok(see_other("/login")) };
    let actor = Actor::user(session.user_id, client_ip(&req));
    state.links.unlink(session.account_id, session.user_id, &form.provider, &actor, state.now()).await?;
    void_pending_links(&state, session.user_id).await?;
    Ok(see_other("/"))
}

/// Back-channel logout (OpenID Connect Back-Channel Logout 1.0): the provider says an
/// upstream session ended; the Ponte sessions it names end too.
pub async fn backchannel_logout(
    path: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let bad = || {
        HttpResponse::BadRequest().insert_header((header::CACHE_CONTROL, "no-store")).json(
            serde_json::json!({"error": "invalid_request", "error_description": "The logout token is not valid."}),
        )
    };
    let Some(upstream) = provider(&state, &path) else { return Ok(bad()) };
    let token = url::form_urlencoded::parse(&body).find(|(k, _)| k == "logout_token").map(|(_, v)| v.into_owned());
    let Some(token) = token else { return Ok(bad()) };
    let request = match upstream.validate_logout_token(&token, state.now()).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, provider = %upstream.id, "back-channel logout refused");
            return Ok(bad());
        }
    };
    let store = state.sessions.store();
    let jti_key = format!("bcl-jti:{}:{}", upstream.id, digest(&request.jti));
    if store.peek(&jti_key).await?.is_some() {
        return Ok(bad());
    }
    store.put_once(&jti_key, "1", 900).await?;
    let mut ended = 0usize;
    if let Some(sid) = &request.sid {
        let entries: Vec<(String, UserId)> = store
            .take_once(&upstream_sid_key(&upstream.id, sid))
            .await?
            .and_then(|j| serde_json::from_str(&j).ok())
            .unwrap_or_default();
        for (session_id, user_id) in entries {
            if state.sessions.revoke(user_id, &session_id).await? {
                ended += 1;
            }
            state.refresh.revoke_session(&session_id, state.now()).await?;
        }
    }
    if let Some(sub) = &request.sub
        && request.sid.is_none()
        && let Some(link) = state.links.find(&request.issuer, sub).await?
    {
        ended += end_everywhere(&state.sessions, state.refresh.as_ref(), link.user_id, state.now()).await?;
    }
    tracing::info!(provider = %upstream.id, ended, "back-channel logout");
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_inside_ponte() {
        assert_eq!(check_return_to(None).as_deref(), Some("/"));
        assert_eq!(
            check_return_to(Some("/oauth2/authorize/continue?authz=x")).as_deref(),
            Some("/oauth2/authorize/continue?authz=x")
        );
        for bad in
            ["https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)", "/a\nb", "evil"]
        {
            assert!(check_return_to(Some(bad)).is_none(), "{bad:?}");
        }
    }
}
