//! Password recovery: the `/password/forgot` and `/password/reset` pages and their REST
//! twins `POST /api/v1/password/forgot|reset`. No bearer token: whoever forgot the
//! password has none. The rules are `ponte_linking::recovery`; here only the parsing and
//! the answers.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_linking::email::Email;
use ponte_linking::recovery::{Forgot, ForgotRequest, Reset};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::browser::{BUSY, CSRF, busy_status, cookie, csrf_ok, csrf_token, is_busy, page};
use crate::extract::client_ip;
use crate::html::{Lang, escape};
use crate::problem::Problem;
use crate::state::AppState;

const PROBLEM: &str = "application/problem+json";

/// Registers the pages and the REST routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/password/forgot").get(forgot_page).post(forgot_form))
        .service(web::resource("/password/reset").get(reset_page).post(reset_form))
        .service(web::resource("/api/v1/password/forgot").post(forgot))
        .service(web::resource("/api/v1/password/reset").post(reset));
}

/// `POST /api/v1/password/forgot`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ForgotBody {
    /// The address of the account whose password was forgotten.
    #[schema(schema_with = crate::contract::email)]
    pub email: String,
}

/// The one answer to a reset request, whatever the address.
#[derive(Debug, Serialize, ToSchema)]
pub struct ForgotAccepted {
    /// Always `accepted`.
    pub status: &'static str,
    /// What happens next.
    pub detail: &'static str,
}

const ACCEPTED: ForgotAccepted = ForgotAccepted {
    status: "accepted",
    detail: "If the address belongs to a user who may sign in, a link to choose a new password is on its way; it works once, for 30 minutes.",
};

/// `POST /api/v1/password/reset`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetBody {
    /// The token from the mailed link.
    pub token: String,
    /// The new password.
    pub password: String,
}

fn rate_limited(retry_after_secs: u32) -> Problem {
    Problem::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "Too many requests")
        .detail("Too many password reset requests for this address or from this client; try again later.")
        .retry_after(retry_after_secs)
}

fn token_invalid() -> Problem {
    Problem::bad_request(
        "reset_token_invalid",
        "This reset link is not valid: it is unknown, was already used, was replaced by a newer one or expired. Ask for a new one.",
    )
}

/// Asks for a reset link: `202` with the same body for every well-formed address.
#[utoipa::path(post, path = "/api/v1/password/forgot", tag = "password", request_body = ForgotBody,
    responses(
        (status = 202, body = ForgotAccepted, description = "The same answer whether or not the address is known"),
        (status = 400, description = "invalid_json", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 422, description = "validation_failed: `email` is not an email address", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 429, description = "rate_limited, with Retry-After", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn forgot(
    req: HttpRequest,
    body: web::Json<ForgotBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    Email::parse(&body.email)?;
    let ip = client_ip(&req);
    match state.recovery().forgot(ForgotRequest { email: &body.email, ip: ip.as_deref() }, state.now()).await? {
        Forgot::Accepted => {
            Ok(HttpResponse::Accepted().insert_header((header::CACHE_CONTROL, "no-store")).json(ACCEPTED))
        }
        Forgot::RateLimited { retry_after_secs } => Err(rate_limited(retry_after_secs)),
    }
}

/// Sets a new password with a mailed token; every session and refresh token of the user ends.
#[utoipa::path(post, path = "/api/v1/password/reset", tag = "password", request_body = ResetBody,
    responses(
        (status = 204, description = "The password is set; the user's sessions and refresh tokens ended"),
        (status = 400, description = "reset_token_invalid (unknown, used, superseded or expired), or invalid_json", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 422, description = "validation_failed naming `password` (length, common, contains the email)", body = crate::problem::ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = crate::problem::ProblemBody, content_type = PROBLEM),
    ))]
pub async fn reset(
    req: HttpRequest,
    body: web::Json<ResetBody>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let ip = client_ip(&req);
    match state.recovery().reset(&body.token, &body.password, ip.as_deref(), state.now()).await? {
        Reset::Done { .. } => Ok(HttpResponse::NoContent().finish()),
        Reset::TokenInvalid => Err(token_invalid()),
    }
}

// ---- pages ----

/// A page with the CSRF cookie set if the browser had none.
fn with_csrf(
    req: &HttpRequest,
    state: &AppState,
    status: StatusCode,
    title: (&'static str, &'static str),
    body: impl FnOnce(Lang, &str) -> String,
) -> HttpResponse {
    let lang = Lang::from_request(req);
    let (csrf, fresh) = csrf_token(req, state);
    let mut response = page(status, lang, lang.pick(title.0, title.1), &body(lang, &csrf));
    if fresh {
        let _ = response.add_cookie(&cookie(state, CSRF, csrf));
    }
    response
}

fn error_html(error: Option<&str>) -> String {
    error.map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e))).unwrap_or_default()
}

const FORGOT_TITLE: (&str, &str) = ("Password dimenticata", "Forgot your password");
const FORM_EXPIRED: (&str, &str) = (
    "La pagina è scaduta o non è stata aperta da Ponte. Riprova.",
    "This form expired or did not come from Ponte. Please try again.",
);

fn forgot_response(
    req: &HttpRequest,
    state: &AppState,
    status: StatusCode,
    email: &str,
    error: Option<&str>,
) -> HttpResponse {
    with_csrf(req, state, status, FORGOT_TITLE, |lang, csrf| {
        format!(
            r#"<h1>{heading}</h1>
{error}
<p>{intro}</p>
<form method="post" action="/password/forgot">
<input type="hidden" name="csrf_token" value="{csrf}">
<label for="email">Email</label>
<input id="email" name="email" type="email" autocomplete="username" required value="{email}">
<button type="submit">{submit}</button>
</form>
<p><a href="/login">{back}</a></p>"#,
            heading = lang.pick(FORGOT_TITLE.0, FORGOT_TITLE.1),
            error = error_html(error),
            intro = lang.pick(
                "Scrivi l'email del tuo account: ti mandiamo un link per sceglierne una nuova.",
                "Type your account's email: we send you a link to choose a new one."
            ),
            csrf = escape(csrf),
            email = escape(email),
            submit = lang.pick("Invia il link", "Send the link"),
            back = lang.pick("Torna all'accesso", "Back to sign in"),
        )
    })
}

/// The forgot-password form.
pub async fn forgot_page(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    forgot_response(&req, &state, StatusCode::OK, "", None)
}

/// What the forgot-password form posts.
#[derive(Debug, Deserialize)]
pub struct ForgotForm {
    #[serde(default)]
    email: String,
    csrf_token: Option<String>,
}

/// Takes the request and answers with the one "if the address is known" page.
pub async fn forgot_form(
    req: HttpRequest,
    form: web::Form<ForgotForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let lang = Lang::from_request(&req);
    if !csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        return Ok(forgot_response(
            &req,
            &state,
            StatusCode::FORBIDDEN,
            &form.email,
            Some(lang.pick(FORM_EXPIRED.0, FORM_EXPIRED.1)),
        ));
    }
    if Email::parse(&form.email).is_err() {
        let message = lang.pick("Scrivi un indirizzo email valido.", "Type a valid email address.");
        return Ok(forgot_response(&req, &state, StatusCode::UNPROCESSABLE_ENTITY, &form.email, Some(message)));
    }
    let ip = client_ip(&req);
    match state.recovery().forgot(ForgotRequest { email: &form.email, ip: ip.as_deref() }, state.now()).await? {
        Forgot::Accepted => Ok(with_csrf(&req, &state, StatusCode::OK, FORGOT_TITLE, |lang, _| {
            format!(
                r#"<h1>{heading}</h1><p id="sent">{sent}</p><p><a href="/login">{back}</a></p>"#,
                heading = lang.pick("Controlla la posta", "Check your mail"),
                sent = lang.pick(
                    "Se l'indirizzo appartiene a un account, ti stiamo mandando un link per scegliere una nuova password. Vale una sola volta, per 30 minuti.",
                    "If the address belongs to an account, a link to choose a new password is on its way. It works once, for 30 minutes."
                ),
                back = lang.pick("Torna all'accesso", "Back to sign in"),
            )
        })),
        Forgot::RateLimited { retry_after_secs } => {
            let message = lang.pick(
                "Troppe richieste. Riprova tra qualche minuto.",
                "Too many requests. Try again in a few minutes.",
            );
            let mut response = forgot_response(&req, &state, StatusCode::TOO_MANY_REQUESTS, &form.email, Some(message));
            response.headers_mut().insert(header::RETRY_AFTER, retry_after_secs.into());
            Ok(response)
        }
    }
}

const RESET_TITLE: (&str, &str) = ("Nuova password", "New password");

fn reset_response(
    req: &HttpRequest,
    state: &AppState,
    status: StatusCode,
    token: &str,
    error: Option<&str>,
) -> HttpResponse {
    with_csrf(req, state, status, RESET_TITLE, |lang, csrf| {
        format!(
            r#"<h1>{heading}</h1>
{error}
<form method="post" action="/password/reset">
<input type="hidden" name="csrf_token" value="{csrf}">
<input type="hidden" name="token" value="{token}">
<label for="password">{new_l}</label>
<input id="password" name="password" type="password" autocomplete="new-password" required minlength="10">
<label for="password_confirm">{again_l}</label>
<input id="password_confirm" name="password_confirm" type="password" autocomplete="new-password" required>
<p><small>{rules}</small></p>
<button type="submit">{submit}</button>
</form>"#,
            heading = lang.pick("Scegli una nuova password", "Choose a new password"),
            error = error_html(error),
            csrf = escape(csrf),
            token = escape(token),
            new_l = lang.pick("Nuova password", "New password"),
            again_l = lang.pick("Ripeti la password", "Repeat the password"),
            rules = lang.pick(
                "Almeno 10 caratteri; non la tua email né una password comune.",
                "At least 10 characters; not your email nor a common password."
            ),
            submit = lang.pick("Salva la password", "Save the password"),
        )
    })
}

fn invalid_link_page(req: &HttpRequest, state: &AppState) -> HttpResponse {
    with_csrf(req, state, StatusCode::BAD_REQUEST, RESET_TITLE, |lang, _| {
        format!(
            r#"<h1>{heading}</h1><p class="error" role="alert" data-code="reset_token_invalid">{message}</p><p><a id="forgot-again" href="/password/forgot">{again}</a></p>"#,
            heading = lang.pick("Link non valido", "Link not valid"),
            message = lang.pick(
                "Questo link non è valido: è già stato usato, è stato sostituito da uno più recente o è scaduto.",
                "This link is not valid: it was already used, was replaced by a newer one or expired."
            ),
            again = lang.pick("Chiedi un nuovo link", "Ask for a new link"),
        )
    })
}

/// `/password/reset?token=…`.
#[derive(Debug, Deserialize)]
pub struct ResetQuery {
    token: Option<String>,
}

/// The new-password form, or the "link not valid" page for a token that cannot work.
pub async fn reset_page(
    req: HttpRequest,
    query: web::Query<ResetQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let token = query.token.as_deref().unwrap_or("");
    if token.is_empty() || !state.recovery().token_usable(token, state.now()).await? {
        return Ok(invalid_link_page(&req, &state));
    }
    Ok(reset_response(&req, &state, StatusCode::OK, token, None))
}

/// What the new-password form posts.
#[derive(Debug, Deserialize)]
pub struct ResetForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    password_confirm: String,
    csrf_token: Option<String>,
}

/// Sets the password, or shows the form again with what is wrong.
pub async fn reset_form(
    req: HttpRequest,
    form: web::Form<ResetForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let lang = Lang::from_request(&req);
    if !csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        return Ok(reset_response(
            &req,
            &state,
            StatusCode::FORBIDDEN,
            &form.token,
            Some(lang.pick(FORM_EXPIRED.0, FORM_EXPIRED.1)),
        ));
    }
    if form.password != form.password_confirm {
        let message = lang.pick("Le due password non coincidono.", "The two passwords differ.");
        return Ok(reset_response(&req, &state, StatusCode::UNPROCESSABLE_ENTITY, &form.token, Some(message)));
    }
    let ip = client_ip(&req);
    match state.recovery().reset(&form.token, &form.password, ip.as_deref(), state.now()).await {
        Ok(Reset::Done { .. }) => Ok(with_csrf(&req, &state, StatusCode::OK, RESET_TITLE, |lang, _| {
            format!(
                r#"<h1>{heading}</h1><p id="reset-done">{done}</p><p><a id="to-login" href="/login">{login}</a></p>"#,
                heading = lang.pick("Password cambiata", "Password changed"),
                done = lang.pick(
                    "La nuova password è salvata. Tutte le sessioni aperte sono state chiuse.",
                    "Your new password is saved. Every open session was ended."
                ),
                login = lang.pick("Accedi", "Sign in"),
            )
        })),
        Ok(Reset::TokenInvalid) => Ok(invalid_link_page(&req, &state)),
        // The policy's message names the rule; it is English, like every API message.
        Err(ponte_linking::Error::Invalid { message, .. }) => {
            Ok(reset_response(&req, &state, StatusCode::UNPROCESSABLE_ENTITY, &form.token, Some(&message)))
        }
        Err(e) if is_busy(&e) => {
            let message = lang.pick(BUSY.0, BUSY.1);
            Ok(busy_status(reset_response(&req, &state, StatusCode::OK, &form.token, Some(message))))
        }
        Err(other) => Err(other.into()),
    }
}
