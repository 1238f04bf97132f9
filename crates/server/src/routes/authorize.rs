//! The browser side of Ponte as an OpenID Provider: `/oauth2/authorize`, the consent
//! page, and RP-initiated logout. The flows are [`ponte_identity::op`]'s; these handlers
//! read the request, call one use case and turn its decision into a redirect or a page.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_identity::oidc::AuthorizationRequest;
use ponte_identity::op::authorize::{AuthorizeDecision, AuthorizePageError, Browser, query_params};
use ponte_identity::op::logout::{LogoutDecision, LogoutRequest};
use ponte_identity::ratelimit::RateLimit;
use serde::Deserialize;

use crate::browser::{
    CSRF, SESSION, cookie, csrf_failed_page, csrf_ok, csrf_token, current_session, error_page, page, removal, see_other,
};
use crate::html::{Lang, escape};
use crate::op::provider;
use crate::problem::Problem;
use crate::state::AppState;

pub use ponte_identity::op::authorize::PENDING_PER_IP;

/// Registers the authorization, consent and logout routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/oauth2/authorize").get(authorize))
        .service(web::resource("/oauth2/authorize/continue").get(resume))
        .service(web::resource("/oauth2/consent").post(consent))
        .service(web::resource("/oauth2/logout").get(logout).post(logout_confirmed));
}

/// Appends parameters to a registered redirect URI, keeping its own query. Registered URIs
/// are absolute and have no fragment (checked at registration), and the request's matched
/// one exactly, so the parameters go after the URI as it was registered.
fn redirect_to(uri: &str, params: &[(&str, &str)]) -> HttpResponse {
    see_other(&with_query(uri, params))
}

fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    if uri.contains('#') {
        // Not registrable; kept correct all the same (the query goes before the fragment).
        return match url::Url::parse(uri) {
            Ok(mut url) => {
                url.query_pairs_mut().extend_pairs(params);
                url.to_string()
            }
            Err(_) => uri.to_owned(),
        };
    }
    let separator = match uri.find('?') {
        None => "?",
        Some(at) if at + 1 == uri.len() || uri.ends_with('&') => "",
        Some(_) => "&",
    };
    let mut location = format!("{uri}{separator}");
    url::form_urlencoded::Serializer::for_suffix(&mut location, uri.len() + separator.len()).extend_pairs(params);
    location
}

fn client_ip(req: &HttpRequest) -> String {
    crate::extract::client_ip(req).unwrap_or_else(|| "unknown".into())
}

fn too_many_requests() -> Problem {
    Problem::new(StatusCode::TOO_MANY_REQUESTS, "too_many_requests", "Too many requests")
        .detail("Slow down and try again in a minute.")
}

/// Turns an authorization step's decision into what the browser gets.
async fn respond(req: &HttpRequest, state: &AppState, decision: AuthorizeDecision) -> Result<HttpResponse, Problem> {
    let iss = state.issuer();
    Ok(match decision {
        AuthorizeDecision::RedirectWithCode { redirect_uri, code, state: client_state } => {
            metrics::counter!("oauth_codes_issued_total").increment(1);
            let mut params = vec![("code", code.as_str())];
            params.extend(client_state.as_deref().map(|s| ("state", s)));
            params.push(("iss", iss));
            redirect_to(&redirect_uri, &params)
        }
        // RFC 6749 §4.1.2.1, with `iss` (RFC 9207).
        AuthorizeDecision::ErrorToClient { redirect_uri, state: client_state, error, description } => {
            let mut params = vec![("error", error), ("error_description", description.as_str())];
            params.extend(client_state.as_deref().map(|s| ("state", s)));
            params.push(("iss", iss));
            redirect_to(&redirect_uri, &params)
        }
        AuthorizeDecision::ErrorPage(AuthorizePageError::Untrusted(detail)) => untrusted_page(req, &detail),
        AuthorizeDecision::ErrorPage(AuthorizePageError::Expired) => expired_page(req),
        AuthorizeDecision::NeedLogin { authz } => see_other(&format!("/login?authz={authz}")),
        AuthorizeDecision::NeedConsent { authz, client_name, scopes } => {
            consent_page(req, state, &authz, &client_name, &scopes)
        }
        AuthorizeDecision::TooManyRequests => return Err(too_many_requests()),
    })
}

/// The authorization endpoint: validates the request, then signs in, asks for consent and
/// issues a code as needed.
pub async fn authorize(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let params = query_params(req.query_string());
    let session = current_session(&req, &state).await?;
    let browser = Browser { session: session.as_ref(), ip: &client_ip(&req) };
    let decision = provider(&state).authorize(&params, browser, state.now()).await?;
    respond(&req, &state, decision).await
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
    let session = current_session(&req, &state).await?;
    let browser = Browser { session: session.as_ref(), ip: &client_ip(&req) };
    let decision = provider(&state).resume(&query.authz, browser, state.now()).await?;
    respond(&req, &state, decision).await
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
pub async fn limit_parked_state(req: &HttpRequest, state: &AppState, limit: &RateLimit) -> Result<(), Problem> {
    if limit.allow_address(state.sessions.store().as_ref(), &client_ip(req), state.now()).await? {
        Ok(())
    } else {
        Err(too_many_requests())
    }
}

/// A waiting request, read without consuming it.
pub async fn pending_request(state: &AppState, id: &str) -> Option<AuthorizationRequest> {
    provider(state).pending_request(id).await.ok().flatten()
}

/// The `login_hint` of a waiting request, to prefill the login page.
pub async fn login_hint(state: &AppState, id: &str) -> Option<String> {
    pending_request(state, id).await?.login_hint
}

fn consent_page(
    req: &HttpRequest,
    state: &AppState,
    authz: &str,
    client_name: &str,
    scopes: &[String],
) -> HttpResponse {
    let lang = Lang::from_request(req);
    let (csrf, fresh) = csrf_token(req, state);
    let scopes: String = scopes.iter().map(|s| format!("<li><code>{}</code></li>", escape(s))).collect();
    let body = format!(
        r#"<h1>{heading}</h1>
<p>{intro}</p>
<ul>{scopes}</ul>
<form method="post" action="/oauth2/consent">
<input type="hidden" name="csrf_token" value="{csrf}">
<input type="hidden" name="authz" value="{id}">
<button type="submit" name="decision" value="allow">{allow}</button>
<button type="submit" name="decision" value="deny" class="secondary">{deny}</button>
</form>"#,
        heading = lang.pick("Autorizzare l'applicazione?", "Allow this application?"),
        intro = escape(&format!("{client_name} {}", lang.pick("chiede di accedere a:", "asks for access to:"))),
        allow = lang.pick("Consenti", "Allow"),
        deny = lang.pick("Nega", "Deny"),
        csrf = escape(&csrf),
        id = escape(authz),
    );
    let mut response = page(StatusCode::OK, lang, lang.pick("Consenso", "Consent"), &body);
    if fresh {
        let _ = response.add_cookie(&cookie(state, CSRF, csrf));
    }
    response
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
    let session = current_session(&req, &state).await?;
    let allow = form.decision == "allow";
    let decision = provider(&state).consent(&form.authz, allow, session.as_ref(), state.now()).await?;
    respond(&req, &state, decision).await
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

impl LogoutParams {
    fn request(&self) -> LogoutRequest<'_> {
        LogoutRequest {
            id_token_hint: self.id_token_hint.as_deref(),
            post_logout_redirect_uri: self.post_logout_redirect_uri.as_deref(),
            client_id: self.client_id.as_deref(),
        }
    }
}

/// Turns a logout decision into what the browser gets.
fn logout_response(
    req: &HttpRequest,
    state: &AppState,
    params: &LogoutParams,
    decision: LogoutDecision,
) -> HttpResponse {
    let lang = Lang::from_request(req);
    match decision {
        LogoutDecision::InvalidHint => error_page(
            req,
            StatusCode::BAD_REQUEST,
            "invalid_id_token_hint",
            "Il token indicato non è valido.",
            "The id_token_hint is not valid.",
        ),
        LogoutDecision::Invalid(why) => error_page(req, StatusCode::BAD_REQUEST, "invalid_logout_request", why, why),
        LogoutDecision::SignedOut { target } => {
            let mut response = match target {
                Some(uri) => {
                    redirect_to(&uri, &params.state.as_deref().map(|s| ("state", s)).into_iter().collect::<Vec<_>>())
                }
                None => {
                    let title = lang.pick("Sei uscito", "You are signed out");
                    page(StatusCode::OK, lang, title, &format!("<h1>{title}</h1>"))
                }
            };
            let _ = response.add_cookie(&removal(state, SESSION));
            response
        }
        LogoutDecision::Confirm { client_id } => logout_confirmation_page(req, state, params, client_id.as_deref()),
    }
}

fn logout_confirmation_page(
    req: &HttpRequest,
    state: &AppState,
    params: &LogoutParams,
    client_id: Option<&str>,
) -> HttpResponse {
    let lang = Lang::from_request(req);
    let (csrf, fresh) = csrf_token(req, state);
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
        client_id = hidden("client_id", client_id),
    );
    let mut response = page(StatusCode::OK, lang, lang.pick("Esci", "Sign out"), &body);
    if fresh {
        let _ = response.add_cookie(&cookie(state, CSRF, csrf));
    }
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
    let session = current_session(&req, &state).await?;
    let decision = provider(&state).logout(params.request(), session.as_ref(), state.now()).await?;
    Ok(logout_response(&req, &state, &params, decision))
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
    let session = current_session(&req, &state).await?;
    let decision = provider(&state).logout_confirmed(form.request(), session.as_ref(), state.now()).await?;
    Ok(logout_response(&req, &state, &form, decision))
}

#[cfg(test)]
mod tests {
    use super::with_query;

    #[test]
    fn parameters_follow_the_registered_uri_and_its_own_query() {
        let params = [("code", "a b&c"), ("state", "x/y"), ("iss", "https://id.example")];
        let encoded = "code=a+b%26c&state=x%2Fy&iss=https%3A%2F%2Fid.example";
        assert_eq!(with_query("https://app.example/cb", &params), format!("https://app.example/cb?{encoded}"));
        assert_eq!(with_query("https://app.example/cb?x=1", &params), format!("https://app.example/cb?x=1&{encoded}"));
        assert_eq!(with_query("https://app.example/cb?", &params), format!("https://app.example/cb?{encoded}"));
        assert_eq!(with_query("http://127.0.0.1:9/callback", &[("code", "c")]), "http://127.0.0.1:9/callback?code=c");
        assert_eq!(with_query("https://app.example/cb#frag", &[("code", "c")]), "https://app.example/cb?code=c#frag");
    }
}
