//! What every browser-facing route shares: cookies, CSRF, the current session, pages.

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse};
use ponte_identity::secret::{constant_time_eq, random_token};
use ponte_identity::session::{NewSession, Session};
use ponte_linking::account::User;
use ponte_linking::audit::{Actor, AuditEntry};

use crate::extract::page_headers;
use crate::html::{Lang, escape, layout};
use crate::problem::Problem;
use crate::state::AppState;

/// Name of the session cookie.
pub const SESSION: &str = "ponte_session";
/// Name of the CSRF cookie.
pub const CSRF: &str = "ponte_csrf";

/// What a cookie's name starts with on https, where browsers then keep it host-only.
const HTTPS_PREFIX: &str = "__Host-";

/// The prefix of cookie names: [`HTTPS_PREFIX`] on https, none on http.
fn cookie_prefix(state: &AppState) -> &'static str {
    if state.config.is_https() { HTTPS_PREFIX } else { "" }
}

/// A cookie's name as sent: `__Host-` prefixed on https.
pub fn cookie_name(state: &AppState, base: &'static str) -> String {
    format!("{}{base}", cookie_prefix(state))
}

/// A host-only, HttpOnly, SameSite=Lax cookie (Secure on https).
pub fn cookie<'a>(state: &AppState, base: &'static str, value: String) -> Cookie<'a> {
    Cookie::build(cookie_name(state, base), value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.config.is_https())
        .finish()
}

/// A cookie that deletes `base`.
pub fn removal<'a>(state: &AppState, base: &'static str) -> Cookie<'a> {
    let mut c = cookie(state, base, String::new());
    c.make_removal();
    c
}

/// The value of the cookie `base` (by its name as sent, [`cookie_name`]), if the browser
/// sent one: the first of that name, as a browser sends the most specific first. Read
/// straight from the `Cookie` headers without parsing every cookie; Ponte's values are
/// base64url and never percent-encoded, so nothing is decoded.
pub fn cookie_value(req: &HttpRequest, state: &AppState, base: &'static str) -> Option<String> {
    let headers = req.headers().get_all(actix_web::http::header::COOKIE).filter_map(|h| h.to_str().ok());
    find_cookie(headers, cookie_prefix(state), base).map(str::to_owned)
}

/// The value of the first cookie called `prefix` + `base` in `Cookie` header values
/// (compared in two parts, so the name is never built).
fn find_cookie<'a>(headers: impl Iterator<Item = &'a str>, prefix: &str, base: &str) -> Option<&'a str> {
    for header in headers {
        for pair in header.split(';') {
            let Some((key, value)) = pair.split_once('=') else { continue };
            if key.trim_ascii().strip_prefix(prefix) == Some(base) {
                return Some(value.trim_ascii().trim_matches('"'));
            }
        }
    }
    None
}

/// The browser's CSRF token, or a fresh one that the response must set (`true`).
pub fn csrf_token(req: &HttpRequest, state: &AppState) -> (String, bool) {
    match cookie_value(req, state, CSRF) {
        Some(value) if value.len() == 43 => (value, false),
        _ => (random_token(), true),
    }
}

/// Double-submit check: the form must carry the value of the browser's CSRF cookie.
pub fn csrf_ok(req: &HttpRequest, state: &AppState, submitted: Option<&str>) -> bool {
    match (cookie_value(req, state, CSRF), submitted) {
        (Some(cookie), Some(form)) => !form.is_empty() && constant_time_eq(cookie.as_bytes(), form.as_bytes()),
        _ => false,
    }
}

/// The session cookie's value, if any.
pub fn session_token(req: &HttpRequest, state: &AppState) -> Option<String> {
    cookie_value(req, state, SESSION)
}

/// The live session of this browser, if any.
pub async fn current_session(req: &HttpRequest, state: &AppState) -> Result<Option<Session>, Problem> {
    match session_token(req, state) {
        Some(token) => Ok(state.sessions.get(&token, state.now()).await?),
        None => Ok(None),
    }
}

/// Ends this browser's session and every refresh token that came from it.
pub async fn end_session(req: &HttpRequest, state: &AppState) -> Result<(), Problem> {
    if let Some(token) = session_token(req, state) {
        if let Some(session) = state.sessions.get(&token, state.now()).await? {
            state.refresh.revoke_session(&session.id, state.now()).await?;
        }
        state.sessions.revoke_token(&token).await?;
    }
    Ok(())
}

/// A server-rendered page with the security headers.
pub fn page(status: StatusCode, lang: Lang, title: &str, body: &str) -> HttpResponse {
    let mut response =
        HttpResponse::build(status).content_type("text/html; charset=utf-8").body(layout(lang, title, body));
    page_headers(&mut response);
    response
}

/// A page that explains a refusal, in the browser's language.
pub fn error_page(req: &HttpRequest, status: StatusCode, code: &str, it: &str, en: &str) -> HttpResponse {
    let lang = Lang::from_request(req);
    let title = lang.pick("Impossibile continuare", "Cannot continue");
    let body = format!(
        r#"<h1>{title}</h1><p class="error" role="alert" data-code="{code}">{message}</p>"#,
        code = escape(code),
        message = escape(match lang {
            Lang::It => it,
            Lang::En => en,
        }),
    );
    page(status, lang, title, &body)
}

/// What a form page says when the password hashing queue is full ([`is_busy`]).
pub const BUSY: (&str, &str) = (
    "Troppe richieste in questo momento: riprova tra qualche secondo.",
    "Too many sign-ins right now: please try again in a few seconds.",
);

/// Whether `e` is the hashing pool's "queue full": a form page answers it with
/// [`busy_status`] and its own form again, not with a JSON problem.
pub fn is_busy(e: &ponte_linking::Error) -> bool {
    matches!(e, ponte_linking::Error::Identity(ponte_identity::Error::Busy))
}

/// Marks a page as the answer to a full hashing queue: 503 with `Retry-After`, as the
/// REST problem `busy` has.
pub fn busy_status(mut response: HttpResponse) -> HttpResponse {
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    response.headers_mut().insert(actix_web::http::header::RETRY_AFTER, crate::problem::BUSY_RETRY_AFTER_SECS.into());
    response
}

/// A 303 to `location` that no cache keeps (redirects in sign-in flows carry one-time ids).
pub fn see_other(location: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, location.to_owned()))
        .insert_header((actix_web::http::header::CACHE_CONTROL, "no-store"))
        .finish()
}

/// The page for a form whose CSRF token did not match.
pub fn csrf_failed_page(req: &HttpRequest) -> HttpResponse {
    error_page(
        req,
        StatusCode::FORBIDDEN,
        "csrf_failed",
        "Il modulo non proviene da Ponte.",
        "The form did not come from Ponte.",
    )
}

/// Signs `user` in: ends whatever session this browser had (a new id at every sign-in),
/// starts a session with `amr`, counts and audits it, and redirects to `next` with the
/// cookie set.
pub async fn start_session(
    req: &HttpRequest,
    state: &AppState,
    user: &User,
    amr: Vec<String>,
    next: &str,
) -> Result<(HttpResponse, Session), Problem> {
    let now = state.now();
    if let Some(old) = session_token(req, state) {
        state.sessions.revoke_token(&old).await?;
    }
    let ip = crate::extract::client_ip(req);
    let user_agent =
        req.headers().get(actix_web::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let new =
        NewSession { user_id: user.id, account_id: user.account_id, amr: amr.clone(), user_agent, ip: ip.clone() };
    let (token, session) = state.sessions.create(new, now).await?;
    metrics::counter!("sessions_created_total").increment(1);
    let entry = AuditEntry::for_user(user.account_id, user.id, &Actor::user(user.id, ip), "login.succeeded", now)
        .with_detail(serde_json::json!({ "amr": amr }).to_string());
    state.audit.append(&entry).await?;
    let mut response = see_other(next);
    page_headers(&mut response);
    let _ = response.add_cookie(&cookie(state, SESSION, token.expose().to_owned()));
    Ok((response, session))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cookie_is_found_by_its_whole_name_in_any_cookie_header() {
        let one = ["other=1; xponte_session=wrong; ponte_session=abc=; ponte_csrf=\"q\""];
        assert_eq!(find_cookie(one.into_iter(), "", "ponte_session"), Some("abc="));
        assert_eq!(find_cookie(one.into_iter(), "", "ponte_csrf"), Some("q"));
        assert_eq!(find_cookie(one.into_iter(), "", "session"), None);
        let two = ["a=1", " ponte_session = first ;ponte_session=second"];
        assert_eq!(find_cookie(two.into_iter(), "", "ponte_session"), Some("first"));
        assert_eq!(find_cookie(["ponte_session"].into_iter(), "", "ponte_session"), None, "no value, no cookie");
    }

    #[test]
    fn on_https_only_the_prefixed_name_counts() {
        let sent = ["ponte_session=plain; __Host-ponte_session=host; __Host-xponte_session=other"];
        assert_eq!(find_cookie(sent.into_iter(), HTTPS_PREFIX, "ponte_session"), Some("host"));
        assert_eq!(find_cookie(["ponte_session=plain"].into_iter(), HTTPS_PREFIX, "ponte_session"), None);
    }

    #[test]
    fn a_full_hashing_queue_is_a_page_with_503_and_retry_after_as_in_rest() {
        let busy = ponte_linking::Error::Identity(ponte_identity::Error::Busy);
        assert!(is_busy(&busy));
        assert!(!is_busy(&ponte_linking::Error::EmailTaken));
        let response = busy_status(page(StatusCode::OK, Lang::En, "Sign in", "<form></form>"));
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry = response.headers().get(actix_web::http::header::RETRY_AFTER).unwrap();
        assert_eq!(retry.to_str().unwrap(), crate::problem::BUSY_RETRY_AFTER_SECS.to_string());
        let type_ = response.headers().get(actix_web::http::header::CONTENT_TYPE).unwrap();
        assert!(type_.to_str().unwrap().starts_with("text/html"), "a page, not problem+json");
    }
}
