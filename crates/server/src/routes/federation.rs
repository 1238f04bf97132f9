//! Upstream federation routes: start and callback of a flow with the external
//! company-wide ID, the confirmation and proof page, unlink, and back-channel logout.
//!
//! The flows themselves are use cases of the domain crates (`ponte_identity::federation`,
//! `ponte_linking::federation`); these handlers parse the request, call them, and map the
//! outcome to a redirect or a page ([`pages`]).

pub(crate) mod binding;
pub(crate) mod pages;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_identity::federation::{self as flow, CallbackParams, FLOWS_PER_IP, Intent, Refusal, StartOutcome};
use ponte_identity::upstream::{Upstream, UpstreamIdentity};
use ponte_linking::account::User;
use ponte_linking::audit::Actor;
use ponte_linking::federation::{self as linking, Browser, CallbackOutcome, ConfirmAction, ConfirmOutcome, Stores};
use serde::Deserialize;
use std::sync::Arc;

use crate::adapters::{OutboxLinkCode, StoreUsers};
use crate::browser::{
    BUSY, busy_status, cookie, csrf_failed_page, csrf_ok, current_session, error_page, is_busy, see_other,
    start_session,
};
use crate::extract::client_ip;
use crate::problem::Problem;
use crate::state::AppState;
use binding::{BINDING, redirect_uri};
use pages::{confirm_page, refusal_page};

/// Registers the federation routes and pages.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/federation/{provider}/start").get(start))
        .service(web::resource("/federation/{provider}/callback").get(callback))
        .service(web::resource("/federation/{provider}/backchannel-logout").post(backchannel_logout))
        .service(web::resource("/link/confirm").get(confirm_view).post(confirm))
        .service(web::resource("/link/unlink").post(unlink_page));
}

fn provider<'a>(state: &'a AppState, id: &str) -> Option<&'a Arc<Upstream>> {
    state.providers.get(id)
}

/// The stores the linking use cases take.
fn stores<'a>(state: &'a AppState, users: &'a StoreUsers) -> Stores<'a> {
    Stores { store: state.sessions.store().as_ref(), links: state.links.as_ref(), users }
}

fn binding_cookie(req: &HttpRequest, state: &AppState) -> Option<String> {
    crate::browser::cookie_value(req, state, BINDING)
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
    let Some(upstream) = provider(&state, &path) else { return Ok(refusal_page(&req, &Refusal::UnknownProvider)) };
    let session = current_session(&req, &state).await?;
    let users = StoreUsers::of(&state);
    let planned = linking::plan_start(&users, query.intent.as_deref(), query.return_to.as_deref(), session.as_ref());
    let mut request = match planned.await? {
        Ok(request) => request,
        Err(refusal) => return Ok(refusal_page(&req, &refusal)),
    };
    request.fresh = request.intent == Intent::Login && wants_fresh_login(&state, &request.return_to).await;
    crate::routes::authorize::limit_parked_state(&req, &state, &FLOWS_PER_IP).await?;
    let store = state.sessions.store().as_ref();
    match flow::begin(store, upstream.as_ref(), &redirect_uri(&state, &upstream.id), request, state.now()).await? {
        StartOutcome::Redirect { url, binding } => {
            let mut response = see_other(&url);
            let _ = response.add_cookie(&cookie(&state, BINDING, binding));
            Ok(response)
        }
        StartOutcome::Refused(refusal) => Ok(refusal_page(&req, &refusal)),
    }
}

/// Whether `return_to` resumes an authorization request that demands a fresh sign-in.
async fn wants_fresh_login(state: &AppState, return_to: &str) -> bool {
    let Some(id) = return_to.strip_prefix("/oauth2/authorize/continue?authz=") else { return false };
    match crate::routes::authorize::pending_request(state, id).await {
        Some(request) => request.prompt.contains(&ponte_identity::oidc::Prompt::Login) || request.max_age.is_some(),
        None => false,
    }
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
    let Some(upstream) = provider(&state, &path) else { return Ok(refusal_page(&req, &Refusal::UnknownProvider)) };
    let params = CallbackParams {
        code: query.code.as_deref(),
        state: query.state.as_deref(),
        iss: query.iss.as_deref(),
        error: query.error.as_deref(),
    };
    let (binding, session, ip) = (binding_cookie(&req, &state), current_session(&req, &state).await?, client_ip(&req));
    let browser = Browser { binding: binding.as_deref(), session: session.as_ref(), ip: ip.as_deref() };
    let redirect_uri = redirect_uri(&state, &upstream.id);
    let users = StoreUsers::of(&state);
    let outcome =
        linking::callback(stores(&state, &users), upstream.as_ref(), &redirect_uri, params, browser, state.now());
    match outcome.await? {
        CallbackOutcome::SignIn { user, identity, return_to } => {
            sign_in_with_offer(&req, &state, &user, &identity, &return_to).await
        }
        CallbackOutcome::ConfirmLink { pending_id } | CallbackOutcome::ProveExisting { pending_id } => {
            Ok(see_other(&format!("/link/confirm?id={pending_id}")))
        }
        CallbackOutcome::AcceptInvite { identity, invite_digest } => {
            crate::routes::invites::accept_through_link(&req, &state, &identity, &invite_digest).await
        }
        CallbackOutcome::Refused(refusal) => Ok(refusal_page(&req, &refusal)),
    }
}

/// A sign-in with the external ID: when invites wait for that identity (the seed's "no
/// email arrived"), the new session is sent to their offer first instead of `return_to`.
async fn sign_in_with_offer(
    req: &HttpRequest,
    state: &AppState,
    user: &User,
    identity: &UpstreamIdentity,
    return_to: &str,
) -> Result<HttpResponse, Problem> {
    let offered =
        ponte_linking::invite::offered(state.integrations.as_ref(), state.links.as_ref(), identity, state.now())
            .await?;
    if offered.is_empty() {
        return sign_in(req, state, user, identity, return_to).await;
    }
    let (mut response, session) =
        start_session(req, state, user, vec!["fed".into(), identity.provider.clone()], return_to).await?;
    flow::remember_upstream_session(state.sessions.store().as_ref(), identity, &session, state.now()).await?;
    let location = crate::routes::invites::make_offer(state, &session, identity, return_to).await?;
    response
        .headers_mut()
        .insert(header::LOCATION, header::HeaderValue::from_str(&location).map_err(|e| Problem::internal(&e))?);
    Ok(response)
}

/// Starts a Ponte session for `user` signed in through `identity`, remembered under the
/// upstream session for back-channel logout.
async fn sign_in(
    req: &HttpRequest,
    state: &AppState,
    user: &User,
    identity: &UpstreamIdentity,
    return_to: &str,
) -> Result<HttpResponse, Problem> {
    let (response, session) =
        start_session(req, state, user, vec!["fed".into(), identity.provider.clone()], return_to).await?;
    flow::remember_upstream_session(state.sessions.store().as_ref(), identity, &session, state.now()).await?;
    Ok(response)
}

/// `?id=` of a pending confirmation.
#[derive(Debug, Deserialize)]
pub struct ConfirmQuery {
    id: String,
}

/// Shows what will be linked to what, and asks for "Continue" (or proof).
pub async fn confirm_view(
    req: HttpRequest,
    query: web::Query<ConfirmQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let binding = binding_cookie(&req, &state);
    let browser = Browser { binding: binding.as_deref(), ..Browser::default() };
    let users = StoreUsers::of(&state);
    match linking::confirmation(stores(&state, &users), &query.id, browser).await? {
        Ok(view) => Ok(confirm_page(&req, &state, &query.id, &view, actix_web::http::StatusCode::OK, None)),
        Err(refusal) => Ok(refusal_page(&req, &refusal)),
    }
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
    let form = form.into_inner();
    let action = ConfirmAction::parse(&form.action, form.password, form.code);
    let (binding, session, ip) = (binding_cookie(&req, &state), current_session(&req, &state).await?, client_ip(&req));
    let browser = Browser { binding: binding.as_deref(), session: session.as_ref(), ip: ip.as_deref() };
    let mail = OutboxLinkCode { outbox: state.outbox.clone(), providers: state.providers.clone() };
    let users = StoreUsers::of(&state);
    let outcome = linking::confirm(stores(&state, &users), &mail, &form.id, action, browser, state.now());
    let outcome = match outcome.await {
        Ok(outcome) => outcome,
        // The password proof could not be checked now: say so, with Retry-After.
        Err(e) if is_busy(&e) => {
            return Ok(busy_status(error_page(&req, actix_web::http::StatusCode::OK, "busy", BUSY.0, BUSY.1)));
        }
        Err(e) => return Err(e.into()),
    };
    match outcome {
        ConfirmOutcome::Linked { return_to } | ConfirmOutcome::Cancelled { return_to } => Ok(see_other(&return_to)),
        ConfirmOutcome::SignIn { user, identity, return_to } => {
            sign_in(&req, &state, &user, &identity, &return_to).await
        }
        ConfirmOutcome::Ask { view, notice } => {
            let status = match notice {
                linking::Notice::CodeSent => actix_web::http::StatusCode::OK,
                linking::Notice::WrongProof => actix_web::http::StatusCode::UNAUTHORIZED,
            };
            Ok(confirm_page(&req, &state, &form.id, &view, status, Some(notice)))
        }
        ConfirmOutcome::MailUnavailable => {
            Err(Problem::unavailable("mail_unavailable", "The email could not be sent; try again shortly."))
        }
        ConfirmOutcome::Refused(refusal) => Ok(refusal_page(&req, &refusal)),
    }
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
    let store = state.sessions.store().as_ref();
    linking::unlink(
        store,
        state.links.as_ref(),
        state.integrations.as_ref(),
        session.account_id,
        session.user_id,
        &form.provider,
        &actor,
        state.now(),
    )
    .await?;
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
    let (store, refresh, links) = (state.sessions.store().as_ref(), state.refresh.as_ref(), state.links.as_ref());
    let ended =
        linking::backchannel_logout(store, &state.sessions, refresh, links, upstream.as_ref(), &token, state.now());
    let Some(ended) = ended.await? else { return Ok(bad()) };
    tracing::info!(provider = %upstream.id, ended, "back-channel logout");
    Ok(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "no-store")).finish())
}
