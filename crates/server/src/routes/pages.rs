//! Browser pages: sign in, the signed-in page (with, for owners and admins, the
//! companies' integrations), sign out.

use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_identity::op::pending::is_pending_id;
use ponte_linking::account::{Account, User};
use ponte_linking::integration::IntegrationState;
use ponte_linking::integration::status::next_step;
use ponte_linking::login::{PasswordAttempt, PasswordLogin, password_login, signed_in};
use serde::Deserialize;

use crate::browser::{
    BUSY, CSRF, SESSION, busy_status, cookie, csrf_ok, csrf_token, end_session, is_busy, page, removal, session_token,
    start_session,
};
use crate::extract::client_ip;
use crate::html::{Lang, STYLE, STYLE_PATH, escape};
use crate::problem::Problem;
use crate::state::AppState;

/// Registers the pages.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource(STYLE_PATH).get(style_sheet))
        .service(web::resource("/").get(home))
        .service(web::resource("/login").get(login_page).post(login))
        .service(web::resource("/logout").post(logout));
}

/// The pages' style sheet. Pages link it with a version in the URL (see
/// [`crate::html`]), so a browser may keep it for a year.
async fn style_sheet() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "public, max-age=31536000, immutable"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .body(STYLE)
}

/// "Sign in with …" links for every configured provider, returning to `return_to`.
fn provider_buttons(state: &AppState, lang: Lang, return_to: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
    state
        .providers
        .values()
        .map(|p| {
            format!(
                r#"<p><a class="provider" id="login-with-{id}" href="/federation/{id}/start?intent=login&amp;return_to={encoded}">{label} {name}</a></p>"#,
                id = escape(&p.id),
                label = lang.pick("Accedi con", "Sign in with"),
                name = escape(&p.config.display_name),
            )
        })
        .collect()
}

fn login_form(
    lang: Lang,
    csrf: &str,
    authz: Option<&str>,
    email: &str,
    error: Option<&str>,
    providers: &str,
) -> String {
    let authz =
        authz.map(|a| format!(r#"<input type="hidden" name="authz" value="{}">"#, escape(a))).unwrap_or_default();
    let error = error.map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e))).unwrap_or_default();
    format!(
        r#"<h1>{heading}</h1>
{error}
<form method="post" action="/login">
<input type="hidden" name="csrf_token" value="{csrf}">
{authz}
<label for="email">{email_label}</label>
<input id="email" name="email" type="email" autocomplete="username" required value="{email}">
<label for="password">{password_label}</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">{submit}</button>
</form>
<p><a id="forgot-password" href="/password/forgot">{forgot}</a></p>
{providers}"#,
        heading = lang.pick("Accedi a Ponte", "Sign in to Ponte"),
        email_label = lang.pick("Email", "Email"),
        password_label = lang.pick("Password", "Password"),
        submit = lang.pick("Accedi", "Sign in"),
        forgot = lang.pick("Password dimenticata?", "Forgot your password?"),
        csrf = escape(csrf),
        email = escape(email),
    )
}

/// The signed-in user's linked identities, with unlink buttons, and for owners and admins
/// the "connect" links.
async fn identities_section(state: &AppState, lang: Lang, csrf: &str, user: &User) -> Result<String, Problem> {
    if state.providers.is_empty() {
        return Ok(String::new());
    }
    let links = state.links.for_user(user.account_id, user.id).await?;
    let mut html = format!("<h2>{}</h2><ul id=\"identities\">", lang.pick("ID collegati", "Linked IDs"));
    for link in &links {
        let name = state
            .providers
            .get(&link.provider)
            .map(|p| p.config.display_name.clone())
            .unwrap_or_else(|| link.provider.clone());
        html.push_str(&format!(
            r#"<li data-provider="{id}">{name}: {email} <form method="post" action="/link/unlink" class="inline"><input type="hidden" name="csrf_token" value="{csrf}"><input type="hidden" name="provider" value="{id}"><button type="submit" id="unlink-{id}" class="compact beside">{unlink}</button></form></li>"#,
            id = escape(&link.provider),
            name = escape(&name),
            email = escape(link.email.as_deref().unwrap_or("")),
            csrf = escape(csrf),
            unlink = lang.pick("Scollega", "Unlink"),
        ));
    }
    html.push_str("</ul>");
    if user.role.is_admin() {
        for p in state.providers.values().filter(|p| !links.iter().any(|l| l.provider == p.id)) {
            html.push_str(&format!(
                r#"<p><a id="connect-{id}" href="/federation/{id}/start?intent=link">{connect} {name}</a> · <a id="register-{id}" href="/federation/{id}/start?intent=register">{create}</a></p>"#,
                id = escape(&p.id),
                name = escape(&p.config.display_name),
                connect = lang.pick("Collega", "Connect"),
                create = lang.pick("Non ho ancora un ID", "I don't have one yet"),
            ));
        }
    }
    Ok(html)
}

/// The account's companies the user may see (every one for owners and admins, those a
/// member holds some permission on) with their integration's chain icon (green "linked"
/// only when active) and the next step in the page's language.
async fn companies_section(state: &AppState, lang: Lang, user: &User) -> Result<String, Problem> {
    let mut companies = state.companies.list(user.account_id).await?;
    companies.retain(|c| ponte_linking::access::may_see(user.principal(), c.id));
    if companies.is_empty() {
        return Ok(String::new());
    }
    let integrations = state.integrations.for_account(user.account_id).await?;
    let now = state.now();
    let mut rows = String::new();
    for i in &integrations {
        let Some(company) = companies.iter().find(|c| c.id == i.company_id) else { continue };
        let invited = if i.state == IntegrationState::InvitePending {
            state
                .integrations
                .invites(i.account_id, i.company_id, i.kind)
                .await?
                .into_iter()
                .find(|x| x.usable(now).is_ok())
                .map(|x| x.masked_email())
        } else {
            None
        };
        let words = next_step(i.state, invited.as_deref());
        let (linked, label) = if i.state.is_linked() {
            ("true", lang.pick("collegata", "linked"))
        } else {
            ("false", lang.pick("non collegata", "not linked"))
        };
        rows.push_str(&format!(
            r#"<tr data-company="{id}" data-state="{state}"><td>{name}<br><small>{vat}</small></td><td><span class="chain" data-linked="{linked}" title="{label}">&#x1F517; {label}</span></td><td>{step}</td></tr>"#,
            id = company.id,
            state = i.state.as_str(),
            name = escape(company.data.legal_name().as_str()),
            vat = escape(company.data.vat_number().as_str()),
            step = escape(match lang {
                Lang::It => &words.it,
                Lang::En => &words.en,
            }),
        ));
    }
    Ok(format!(
        r#"<h2>{heading}</h2><table id="companies"><thead><tr><th>{company_l}</th><th>{state_l}</th><th>{next_l}</th></tr></thead><tbody>{rows}</tbody></table>"#,
        heading = lang.pick("Aziende e fatturazione elettronica", "Companies and electronic invoicing"),
        company_l = lang.pick("Azienda", "Company"),
        state_l = lang.pick("Integrazione", "Integration"),
        next_l = lang.pick("Prossimo passo", "Next step"),
    ))
}

fn login_response(
    req: &HttpRequest,
    state: &AppState,
    authz: Option<&str>,
    status: StatusCode,
    email: &str,
    error: Option<&str>,
) -> HttpResponse {
    let lang = Lang::from_request(req);
    let (csrf, fresh) = csrf_token(req, state);
    let authz = authz.filter(|a| is_pending_id(a));
    let return_to = after_sign_in(authz);
    let mut response = page(
        status,
        lang,
        lang.pick("Accedi", "Sign in"),
        &login_form(lang, &csrf, authz, email, error, &provider_buttons(state, lang, &return_to)),
    );
    if fresh {
        let _ = response.add_cookie(&cookie(state, CSRF, csrf));
    }
    response
}

/// The sign-in form.
pub async fn login_page(req: HttpRequest, query: web::Query<LoginQuery>, state: web::Data<AppState>) -> HttpResponse {
    let authz = query.authz.as_deref().filter(|a| is_pending_id(a));
    // Prefill the email an application suggested with login_hint.
    let hint = match authz {
        Some(id) => crate::routes::authorize::login_hint(&state, id).await,
        None => None,
    };
    login_response(&req, &state, authz, StatusCode::OK, hint.as_deref().unwrap_or(""), None)
}

/// `/login?authz=…`: the authorization request waiting for this sign-in.
#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    authz: Option<String>,
}

/// What the sign-in form posts.
#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    email: String,
    #[serde(default)]
    password: String,
    csrf_token: Option<String>,
    authz: Option<String>,
}

/// The sign-in form's refusals, in Italian and English.
const FORM_EXPIRED: (&str, &str) = (
    "La pagina è scaduta o non è stata aperta da Ponte. Riprova.",
    "This form expired or did not come from Ponte. Please try again.",
);
const TOO_MANY_ATTEMPTS: (&str, &str) =
    ("Troppi tentativi. Riprova tra qualche minuto.", "Too many attempts. Try again in a few minutes.");
const WRONG_CREDENTIALS: (&str, &str) = ("Email o password non corretti.", "Email or password is incorrect.");

/// Checks the password and starts a session with a new id.
pub async fn login(
    req: HttpRequest,
    form: web::Form<LoginForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let form = form.into_inner();
    let authz = form.authz.as_deref();
    let (status, (it, en)) = if csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        let ip = client_ip(&req);
        let attempt = PasswordAttempt { email: &form.email, password: &form.password, ip: ip.as_deref() };
        match password_login(state.sessions.store().as_ref(), state.users.as_ref(), attempt, state.now()).await {
            Ok(PasswordLogin::SignedIn(user)) => {
                let next = after_sign_in(authz.filter(|a| is_pending_id(a)));
                return Ok(start_session(&req, &state, &user, vec!["pwd".into()], &next).await?.0);
            }
            Ok(PasswordLogin::Limited) => (StatusCode::TOO_MANY_REQUESTS, TOO_MANY_ATTEMPTS),
            Ok(PasswordLogin::Refused) => {
                metrics::counter!("login_failures_total").increment(1);
                (StatusCode::UNAUTHORIZED, WRONG_CREDENTIALS)
            }
            Err(e) if is_busy(&e) => {
                let message = Lang::from_request(&req).pick(BUSY.0, BUSY.1);
                let form = login_response(&req, &state, authz, StatusCode::OK, &form.email, Some(message));
                return Ok(busy_status(form));
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        (StatusCode::FORBIDDEN, FORM_EXPIRED)
    };
    let message = Lang::from_request(&req).pick(it, en);
    Ok(login_response(&req, &state, authz, status, &form.email, Some(message)))
}

/// Where a sign-in goes next: back to the waiting authorization request, or home.
fn after_sign_in(authz: Option<&str>) -> String {
    authz.map_or_else(|| "/".to_owned(), |a| format!("/oauth2/authorize/continue?authz={a}"))
}

/// Who is signed in, with a sign-out button.
pub async fn home(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, Problem> {
    let token = session_token(&req, &state);
    let signed_in =
        signed_in(&state.sessions, state.accounts.as_ref(), state.users.as_ref(), token.as_deref(), state.now())
            .await?;
    let Some((user, account)) = signed_in else {
        return Ok(HttpResponse::SeeOther().insert_header((header::LOCATION, "/login")).finish());
    };
    let lang = Lang::from_request(&req);
    let (csrf, fresh) = csrf_token(&req, &state);
    let mut identities = identities_section(&state, lang, &csrf, &user).await?;
    identities.push_str(&companies_section(&state, lang, &user).await?);
    let body = home_body(lang, &csrf, &user, &account, &identities);
    let mut response = page(StatusCode::OK, lang, lang.pick("Il tuo account", "Your account"), &body);
    if fresh {
        let _ = response.add_cookie(&cookie(&state, CSRF, csrf));
    }
    Ok(response)
}

/// The signed-in page's body: who, in which account, the linked IDs and sign-out.
fn home_body(lang: Lang, csrf: &str, user: &User, account: &Account, identities: &str) -> String {
    format!(
        r#"<h1>{heading}</h1>
<dl>
<dt>{name_l}</dt><dd id="user-name">{name}</dd>
<dt>Email</dt><dd id="user-email">{email}</dd>
<dt>{role_l}</dt><dd id="user-role">{role}</dd>
<dt>{account_l}</dt><dd id="account-name">{account}</dd>{permissions}
</dl>
{identities}
<form method="post" action="/logout">
<input type="hidden" name="csrf_token" value="{csrf}">
<button type="submit">{logout}</button>
</form>"#,
        heading = lang.pick("Hai effettuato l'accesso", "You are signed in"),
        name_l = lang.pick("Nome", "Name"),
        role_l = lang.pick("Ruolo", "Role"),
        account_l = lang.pick("Account", "Account"),
        logout = lang.pick("Esci", "Sign out"),
        name = escape(&user.name),
        email = escape(&user.email),
        role = user.role.as_str(),
        account = escape(&account.name),
        csrf = escape(csrf),
        permissions = permissions_item(lang, user),
    )
}

/// A member's grants, one per line (owners and admins may do everything and have none).
fn permissions_item(lang: Lang, user: &User) -> String {
    if user.role.is_admin() {
        return String::new();
    }
    let items: String = user
        .grants
        .iter()
        .map(|g| {
            let where_ = match &g.companies {
                ponte_linking::access::Companies::All => lang.pick("tutte le aziende", "every company").to_owned(),
                ponte_linking::access::Companies::Only(ids) => {
                    let noun = if ids.len() == 1 {
                        lang.pick("azienda", "company")
                    } else {
                        lang.pick("aziende", "companies")
                    };
                    format!("{} {noun}", ids.len())
                }
            };
            let (it, en) = g.permission.describe();
            format!(
                r#"<li data-permission="{p}">{what} ({where_})</li>"#,
                p = g.permission.as_str(),
                what = escape(lang.pick(it, en)),
            )
        })
        .collect();
    format!(
        r#"
<dt>{label}</dt><dd><ul id="user-permissions">{items}</ul></dd>"#,
        label = lang.pick("Permessi", "Permissions")
    )
}

/// What the sign-out form posts.
#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    csrf_token: Option<String>,
}

/// Ends this browser's session.
pub async fn logout(
    req: HttpRequest,
    form: web::Form<LogoutForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if !csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        return Err(
            Problem::new(StatusCode::FORBIDDEN, "csrf_failed", "Forbidden").detail("The form did not come from Ponte.")
        );
    }
    end_session(&req, &state).await?;
    let mut response = HttpResponse::SeeOther().insert_header((header::LOCATION, "/login")).finish();
    let _ = response.add_cookie(&removal(&state, SESSION));
    Ok(response)
}
