//! The browser side of Ponte as an OpenID Provider: `/oauth2/authorize`, the consent
//! page, and RP-initiated logout.

use std::collections::HashMap;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_identity::client::Client;
use ponte_identity::oidc::{
    AuthorizationRequest, CodeGrant, LoginNeed, Prompt, RequestError, SentToLogin, login_need, validate_request,
};
use ponte_identity::secret::{digest, random_token};
use ponte_identity::session::Session;
use serde::Deserialize;

use crate::browser::{
    CSRF, SESSION, cookie, csrf_failed_page, csrf_ok, csrf_token, current_session, end_session, error_page, page,
    removal, see_other,
};
use crate::html::{Lang, escape};
use crate::problem::Problem;
use crate::state::AppState;

/// Registers the authorization, consent and logout routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/oauth2/authorize").get(authorize))
        .service(web::resource("/oauth2/authorize/continue").get(resume))
        .service(web::resource("/oauth2/consent").post(consent))
        .service(web::resource("/oauth2/logout").get(logout).post(logout_confirmed));
}

/// How long a browser has to sign in or consent before the request is forgotten.
const PENDING_TTL_SECS: u64 = 600;
/// How long an authorization code can wait to be redeemed.
pub const CODE_TTL_SECS: u64 = 60;

fn pending_key(id: &str) -> String {
    format!("authz:{}", digest(id))
}

/// Every value of every query parameter, so repeated parameters can be refused.
fn query_params(query: &str) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        map.entry(k.into_owned()).or_default().push(v.into_owned());
    }
    map
}

/// Appends parameters to a registered redirect URI, keeping its own query.
fn redirect_to(uri: &str, params: &[(&str, &str)]) -> HttpResponse {
    let location = match url::Url::parse(uri) {
        Ok(mut url) => {
            {
                let mut pairs = url.query_pairs_mut();
                for (k, v) in params {
                    pairs.append_pair(k, v);
                }
            }
            url.to_string()
        }
        Err(_) => uri.to_owned(),
    };
    see_other(&location)
}

/// An RFC 6749 §4.1.2.1 error response, with `iss` (RFC 9207).
fn redirect_error(
    state: &AppState,
    redirect_uri: &str,
    client_state: Option<&str>,
    error: &str,
    description: &str,
) -> HttpResponse {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(s) = client_state {
        params.push(("state", s));
    }
    params.push(("iss", &state.issuer));
    redirect_to(redirect_uri, &params)
}

/// The authorization endpoint: validates the request, then signs in, asks for consent and
/// issues a code as needed.
pub async fn authorize(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let params = query_params(req.query_string());
    let client = match params.get("client_id").map(Vec::as_slice) {
        Some([id]) if id.len() <= 64 => state.clients.find(id).await?,
        _ => None,
    };
    match validate_request(&params, client.as_ref(), state.now()) {
        Err(RequestError::Untrusted(message)) => Ok(untrusted_page(&req, &message)),
        Err(RequestError::Redirect { redirect_uri, state: client_state, error, description }) => {
            Ok(redirect_error(&state, &redirect_uri, client_state.as_deref(), error, &description))
        }
        Ok(request) => match client {
            Some(client) => proceed(&req, &state, &client, request).await,
            None => Ok(untrusted_page(&req, "Unknown client.")),
        },
    }
}

fn untrusted_page(req: &HttpRequest, detail: &str) -> HttpResponse {
    tracing::info!(%detail, "authorization request refused without redirect");
    error_page(
        req,
        StatusCode::BAD_REQUEST,
        "invalid_authorization_request",
        "L'applicazione ha inviato una richiesta di accesso non valida (client o indirizzo di ritorno non registrati).",
        "The application sent an invalid sign-in request (unknown client or unregistered redirect URI).",
    )
}

/// After the login page: picks the waiting request up again.
#[derive(Debug, Deserialize)]
pub struct ResumeQuery {
    authz: String,
}

/// Continues a request that waited for sign-in.
pub async fn resume(
    req: HttpRequest,
    query: web::Query<ResumeQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let Some(request) = take_pending(&state, &query.authz).await? else { return Ok(expired_page(&req)) };
    match state.clients.find(&request.client_id).await? {
        Some(client) => proceed(&req, &state, &client, request).await,
        None => Ok(untrusted_page(&req, "The client was removed.")),
    }
}

fn expired_page(req: &HttpRequest) -> HttpResponse {
    error_page(
        req,
        StatusCode::BAD_REQUEST,
        "authorization_request_expired",
        "Questa richiesta di accesso è scaduta o è già stata usata. Torna all'applicazione e riprova.",
        "This sign-in request expired or was already used. Go back to the application and try again.",
    )
}

/// Refuses with 429 when one client address parks too much short-lived state (each
/// record lives ten minutes in the session store, so unbounded creation would fill it).
pub async fn limit_parked_state(
    req: &HttpRequest,
    state: &AppState,
    limit: &ponte_identity::ratelimit::RateLimit,
) -> Result<(), Problem> {
    let ip = crate::extract::client_ip(req).unwrap_or_else(|| "unknown".into());
    if limit.allow(state.sessions.store().as_ref(), &ip, state.now()).await? {
        Ok(())
    } else {
        Err(Problem::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "Too many requests")
            .detail("Slow down and try again in a minute."))
    }
}

/// Pending requests one client address may park per minute (each lives ten minutes).
pub const PENDING_PER_IP: ponte_identity::ratelimit::RateLimit =
    ponte_identity::ratelimit::RateLimit { name: "pending-ip", max: 120, window: time::Duration::minutes(1) };

async fn store_pending(req: &HttpRequest, state: &AppState, request: &AuthorizationRequest) -> Result<String, Problem> {
    limit_parked_state(req, state, &PENDING_PER_IP).await?;
    let id = random_token();
    let json = serde_json::to_string(request).map_err(|e| Problem::internal(&e))?;
    state.sessions.store().put_once(&pending_key(&id), &json, PENDING_TTL_SECS).await?;
    Ok(id)
}

async fn take_pending(state: &AppState, id: &str) -> Result<Option<AuthorizationRequest>, Problem> {
    if id.len() != 43 {
        return Ok(None);
    }
    let Some(json) = state.sessions.store().take_once(&pending_key(id)).await? else { return Ok(None) };
    Ok(serde_json::from_str(&json).ok())
}

/// A waiting request, read without consuming it.
pub async fn pending_request(state: &AppState, id: &str) -> Option<AuthorizationRequest> {
    let json = state.sessions.store().peek(&pending_key(id)).await.ok().flatten()?;
    serde_json::from_str(&json).ok()
}

/// The `login_hint` of a waiting request, to prefill the login page.
pub async fn login_hint(state: &AppState, id: &str) -> Option<String> {
    pending_request(state, id).await?.login_hint
}

async fn proceed(
    req: &HttpRequest,
    state: &AppState,
    client: &Client,
    request: AuthorizationRequest,
) -> Result<HttpResponse, Problem> {
    let now = state.now();
    let mut session = current_session(req, state).await?;
    // A session whose user or account was turned off does not count.
    if let Some(s) = &session
        && state.active_user(s.account_id, s.user_id).await?.is_none()
    {
        end_session(req, state).await?;
        session = None;
    }
    let current = session.as_ref().map(|s| (s.id.as_str(), s.created_at.unix_timestamp()));
    let need = login_need(&request, current, now);
    let session = match (need, session) {
        (LoginNeed::Satisfied, Some(s)) => s,
        _ if request.prompt.contains(&Prompt::None) => {
            return Ok(redirect_error(
                state,
                &request.redirect_uri,
                request.state.as_deref(),
                "login_required",
                "The user is not signed in.",
            ));
        }
        (_, stale) => {
            let mut request = request;
            request.sent_to_login = Some(SentToLogin { stale_sid: stale.map(|s| s.id) });
            let id = store_pending(req, state, &request).await?;
            return Ok(see_other(&format!("/login?authz={id}")));
        }
    };
    if !client.first_party {
        let granted = state.consents.granted(session.user_id, &client.id).await?;
        let covered = request.scope.iter().all(|s| granted.contains(s));
        if !covered || request.prompt.contains(&Prompt::Consent) {
            if request.prompt.contains(&Prompt::None) {
                return Ok(redirect_error(
                    state,
                    &request.redirect_uri,
                    request.state.as_deref(),
                    "consent_required",
                    "The user has not consented.",
                ));
            }
            let request = AuthorizationRequest { consent_sid: Some(session.id.clone()), ..request };
            return consent_page(req, state, client, &request).await;
        }
    }
    issue_code(state, &request, &session).await
}

async fn issue_code(
    state: &AppState,
    request: &AuthorizationRequest,
    session: &Session,
) -> Result<HttpResponse, Problem> {
    let code = random_token();
    let grant = CodeGrant {
        client_id: request.client_id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        user_id: session.user_id,
        account_id: session.account_id,
        scope: request.scope.clone(),
        nonce: request.nonce.clone(),
        code_challenge: request.code_challenge.clone(),
        auth_time: session.created_at.unix_timestamp(),
        amr: session.amr.clone(),
        sid: session.id.clone(),
    };
    let json = serde_json::to_string(&grant).map_err(|e| Problem::internal(&e))?;
    state.sessions.store().put_once(&code_key(&code), &json, CODE_TTL_SECS).await?;
    metrics::counter!("oauth_codes_issued_total").increment(1);
    let mut params = vec![("code", code.as_str())];
    if let Some(s) = &request.state {
        params.push(("state", s));
    }
    params.push(("iss", &state.issuer));
    Ok(redirect_to(&request.redirect_uri, &params))
}

/// Where a code's grant waits in the session store.
pub fn code_key(code: &str) -> String {
    format!("code:{}", digest(code))
}

async fn consent_page(
    req: &HttpRequest,
    state: &AppState,
    client: &Client,
    request: &AuthorizationRequest,
) -> Result<HttpResponse, Problem> {
    let lang = Lang::from_request(req);
    let id = store_pending(req, state, request).await?;
    let (csrf, fresh) = csrf_token(req, state);
    let scopes: String = request.scope.iter().map(|s| format!("<li><code>{}</code></li>", escape(s))).collect();
    let body = format!(
        r#"<h1>{heading}</h1>
<p>{intro}</p>
<ul>{scopes}</ul>
<form method="post" action="/oauth2/consent">
<input type="hidden" name="csrf_token" value="{csrf}">
<input type="hidden" name="authz" value="{id}">
<button type="submit" name="decision" value="allow">{allow}</button>
<button type="submit" name="decision" value="deny" style="background:#666">{deny}</button>
</form>"#,
        heading = lang.pick("Autorizzare l'applicazione?", "Allow this application?"),
        intro = escape(&format!("{} {}", client.name, lang.pick("chiede di accedere a:", "asks for access to:"))),
        allow = lang.pick("Consenti", "Allow"),
        deny = lang.pick("Nega", "Deny"),
        csrf = escape(&csrf),
    );
    let mut response = page(StatusCode::OK, lang, lang.pick("Consenso", "Consent"), &body);
    if fresh {
        let _ = response.add_cookie(&cookie(state, CSRF, csrf));
    }
    Ok(response)
}

/// What the consent form posts.
#[derive(Debug, Deserialize)]
pub struct ConsentForm {
    authz: String,
    decision: String,
    csrf_token: Option<String>,
}

/// Records the user's decision and continues.
pub async fn consent(
    req: HttpRequest,
    form: web::Form<ConsentForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if !csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        return Ok(csrf_failed_page(&req));
    }
    let Some(request) = take_pending(&state, &form.authz).await? else { return Ok(expired_page(&req)) };
    if form.decision != "allow" {
        return Ok(redirect_error(
            &state,
            &request.redirect_uri,
            request.state.as_deref(),
            "access_denied",
            "The user denied the request.",
        ));
    }
    let Some(session) = current_session(&req, &state).await? else { return Ok(expired_page(&req)) };
    // The decision must come from the session the page was shown to.
    if request.consent_sid.as_deref() != Some(session.id.as_str()) {
        return Ok(expired_page(&req));
    }
    state.consents.grant(session.user_id, &request.client_id, &request.scope, state.now()).await?;
    issue_code(&state, &request, &session).await
}

/// RP-initiated logout parameters (OpenID Connect RP-Initiated Logout 1.0).
#[derive(Debug, Deserialize)]
pub struct LogoutParams {
    id_token_hint: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
    client_id: Option<String>,
    csrf_token: Option<String>,
}

/// Where to send the browser after logout, if the request names a registered URI.
async fn logout_target(
    state: &AppState,
    params: &LogoutParams,
    hint_aud: Option<&str>,
) -> Result<Result<Option<String>, &'static str>, Problem> {
    let client_id = match (hint_aud, params.client_id.as_deref()) {
        (Some(a), Some(c)) if a != c => return Ok(Err("client_id does not match the id_token_hint")),
        (a, c) => a.or(c),
    };
    let Some(uri) = params.post_logout_redirect_uri.as_deref() else { return Ok(Ok(None)) };
    let Some(client_id) = client_id else {
        return Ok(Err("post_logout_redirect_uri needs id_token_hint or client_id"));
    };
    match state.clients.find(client_id).await? {
        Some(client) if client.has_post_logout_redirect_uri(uri) => Ok(Ok(Some(uri.to_owned()))),
        _ => Ok(Err("post_logout_redirect_uri is not registered for this client")),
    }
}

fn after_logout(
    req: &HttpRequest,
    state: &AppState,
    target: Option<String>,
    client_state: Option<&str>,
) -> HttpResponse {
    let mut response = match target {
        Some(uri) => {
            let params: Vec<(&str, &str)> = client_state.map(|s| vec![("state", s)]).unwrap_or_default();
            redirect_to(&uri, &params)
        }
        None => {
            let lang = Lang::from_request(req);
            let title = lang.pick("Sei uscito", "You are signed out");
            page(StatusCode::OK, lang, title, &format!("<h1>{title}</h1>"))
        }
    };
    let _ = response.add_cookie(&removal(state, SESSION));
    response
}

/// Logout requested by an application. With a valid `id_token_hint` for this browser's
/// session it ends at once; otherwise the user confirms on a page (so a link cannot sign
/// people out).
pub async fn logout(
    req: HttpRequest,
    params: web::Query<LogoutParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let hint = match params.id_token_hint.as_deref() {
        Some(token) => match state.keys.ring().verify_id_token_hint(token, &state.issuer) {
            Ok(claims) => Some(claims),
            Err(_) => {
                return Ok(error_page(
                    &req,
                    StatusCode::BAD_REQUEST,
                    "invalid_id_token_hint",
                    "Il token indicato non è valido.",
                    "The id_token_hint is not valid.",
                ));
            }
        },
        None => None,
    };
    let target = match logout_target(&state, &params, hint.as_ref().map(|h| h.aud.as_str())).await? {
        Ok(t) => t,
        Err(why) => return Ok(error_page(&req, StatusCode::BAD_REQUEST, "invalid_logout_request", why, why)),
    };
    let session = current_session(&req, &state).await?;
    let confirmed = match (&session, &hint) {
        (None, _) => true,
        (Some(s), Some(h)) => h.sid.as_deref() == Some(s.id.as_str()) && h.sub == s.user_id.to_string(),
        (Some(_), None) => false,
    };
    if confirmed {
        end_session(&req, &state).await?;
        return Ok(after_logout(&req, &state, target, params.state.as_deref()));
    }
    let lang = Lang::from_request(&req);
    let (csrf, fresh) = csrf_token(&req, &state);
    let hidden = |name: &str, value: Option<&str>| {
        value.map(|v| format!(r#"<input type="hidden" name="{name}" value="{}">"#, escape(v))).unwrap_or_default()
    };
    let body = format!(
        r#"<h1>{heading}</h1>
<form method="post" action="/oauth2/logout">
<input type="hidden" name="csrf_token" value="{csrf}">
{target}{client_state}{client_id}
<button type="submit" id="confirm-logout">{confirm}</button>
</form>"#,
        heading = lang.pick("Vuoi uscire da Ponte?", "Sign out of Ponte?"),
        confirm = lang.pick("Esci", "Sign out"),
        csrf = escape(&csrf),
        target = hidden("post_logout_redirect_uri", params.post_logout_redirect_uri.as_deref()),
        client_state = hidden("state", params.state.as_deref()),
        client_id = hidden("client_id", hint.as_ref().map(|h| h.aud.as_str()).or(params.client_id.as_deref())),
    );
    let mut response = page(StatusCode::OK, lang, lang.pick("Esci", "Sign out"), &body);
    if fresh {
        let _ = response.add_cookie(&cookie(&state, CSRF, csrf));
    }
    Ok(response)
}

/// The confirmation form of [`logout`].
pub async fn logout_confirmed(
    req: HttpRequest,
    form: web::Form<LogoutParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if !csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        return Ok(csrf_failed_page(&req));
    }
    let target = match logout_target(&state, &form, None).await? {
        Ok(t) => t,
        Err(why) => return Ok(error_page(&req, StatusCode::BAD_REQUEST, "invalid_logout_request", why, why)),
    };
    end_session(&req, &state).await?;
    Ok(after_logout(&req, &state, target, form.state.as_deref()))
}
