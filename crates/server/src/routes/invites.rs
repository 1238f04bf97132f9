//! Collaboration invites in the browser: the invite page and its "Accept with your
//! external ID" button (which starts a fresh upstream sign-in), the acceptance when that
//! sign-in comes back, and the fallback offer shown right after a sign-in with the
//! external ID an invite went to.
//!
//! Acceptance never looks at the browser's Ponte sessions: whoever else is signed in here,
//! only the identity that just signed in upstream counts ([`ponte_linking::invite`]).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_identity::federation::{self as flow, FLOWS_PER_IP, StartOutcome};
use ponte_identity::secret::digest;
use ponte_identity::session::Session;
use ponte_identity::upstream::UpstreamIdentity;
use ponte_linking::audit::{Actor, AuditEntry};
use ponte_linking::federation::plan_invite;
use ponte_linking::ids::InviteId;
use ponte_linking::invite::offer::{self, Offer};
use ponte_linking::invite::{self, Accepted, Invite, InviteRefusal};
use serde::Deserialize;

use crate::browser::{
    CSRF, cookie, csrf_failed_page, csrf_ok, csrf_token, current_session, error_page, page, see_other,
};
use crate::extract::client_ip;
use crate::html::{Lang, escape};
use crate::problem::Problem;
use crate::routes::federation::binding::{BINDING, redirect_uri};
use crate::routes::federation::pages::refusal_page;
use crate::state::AppState;

/// Registers the invite pages. The offer comes first: `/invites/offer` is not a token.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/invites/offer").get(offer_view).post(offer_accept))
        .service(web::resource("/invites/{token}").get(invite_view).post(invite_start));
}

/// The longest invite token a link may carry.
const MAX_TOKEN_LEN: usize = 128;

/// Whether `token` can be an invite token at all (base64url, bounded); anything else is
/// never looked up.
fn plausible_token(token: &str) -> bool {
    !token.is_empty()
        && token.len() <= MAX_TOKEN_LEN
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn refusal_status(refusal: InviteRefusal) -> StatusCode {
    match refusal {
        InviteRefusal::Unknown => StatusCode::NOT_FOUND,
        InviteRefusal::Expired | InviteRefusal::Revoked | InviteRefusal::Used => StatusCode::GONE,
        InviteRefusal::WrongPerson | InviteRefusal::EmailMismatch => StatusCode::FORBIDDEN,
    }
}

fn refusal_texts(refusal: InviteRefusal) -> (&'static str, &'static str) {
    match refusal {
        InviteRefusal::Unknown => (
            "Questo invito non esiste o il link è stato sostituito da uno più recente.",
            "This invite does not exist, or its link was replaced by a newer one.",
        ),
        InviteRefusal::Expired => (
            "Questo invito è scaduto. Chiedi all'amministratore di inviarlo di nuovo.",
            "This invite has expired. Ask your administrator to send it again.",
        ),
        InviteRefusal::Revoked => (
            "Questo invito è stato revocato. Nulla è stato collegato o attivato.",
            "This invite was revoked. Nothing was linked or activated.",
        ),
        InviteRefusal::Used => ("Questo invito è già stato accettato.", "This invite was already accepted."),
        InviteRefusal::WrongPerson => (
            "Questo invito è per un'altra persona. Nulla è stato collegato o attivato.",
            "This invite is for someone else. Nothing was linked or activated.",
        ),
        InviteRefusal::EmailMismatch => (
            "Il fornitore di identità non conferma l'email a cui è stato inviato l'invito. Nulla è stato attivato.",
            "The identity provider does not vouch for the email the invite was sent to. Nothing was activated.",
        ),
    }
}

/// The fail-closed page of an invite that cannot be used: its code and nothing else.
fn invite_refused_page(req: &HttpRequest, refusal: InviteRefusal) -> HttpResponse {
    let (it, en) = refusal_texts(refusal);
    error_page(req, refusal_status(refusal), refusal.code(), it, en)
}

/// The refusal for a person who signed in upstream as someone the invite is not for,
/// naming both (the invited address masked).
fn wrong_person_page(
    req: &HttpRequest,
    refusal: InviteRefusal,
    invite: Option<&Invite>,
    identity: &UpstreamIdentity,
) -> HttpResponse {
    let lang = Lang::from_request(req);
    let invited = invite.map(Invite::masked_email).unwrap_or_else(|| "—".into());
    let signed_in = identity.email.clone().unwrap_or_else(|| "—".into());
    let (it_lead, en_lead) = refusal_texts(refusal);
    let (title, message) = match lang {
        Lang::It => (
            "Impossibile continuare",
            format!("Questo invito è per {invited}, ma hai effettuato l'accesso come {signed_in}. {it_lead}"),
        ),
        Lang::En => {
            ("Cannot continue", format!("This invite is for {invited}, but you signed in as {signed_in}. {en_lead}"))
        }
    };
    let body = format!(
        r#"<h1>{title}</h1><p class="error" role="alert" data-code="{code}">{message}</p>
<p>{hint}</p>"#,
        code = refusal.code(),
        message = escape(&message),
        hint = lang.pick(
            "Apri di nuovo il link dell'invito e accedi con l'ID esterno a cui è stato inviato.",
            "Open the invite link again and sign in with the external ID it was sent to."
        ),
    );
    page(refusal_status(refusal), lang, title, &body)
}

/// What an invite is for, as its pages show it.
struct About {
    company: String,
    vat_number: String,
    platform_account: String,
}

async fn about(state: &AppState, invite: &Invite) -> Result<About, Problem> {
    let company = state.companies.get(invite.account_id, invite.company_id).await?;
    let (name, vat) = company
        .map(|c| (c.data.legal_name().as_str().to_owned(), c.data.vat_number().as_str().to_owned()))
        .unwrap_or_default();
    let integration = state.integrations.get(invite.account_id, invite.company_id, invite.kind).await?;
    let platform_account = integration
        .and_then(|i| i.platform_account)
        .map_or_else(|| name.clone(), |p| format!("{} ({})", p.legal_name, p.id));
    Ok(About { company: name, vat_number: vat, platform_account })
}

fn expiry(at: time::OffsetDateTime) -> String {
    format!("{} {:02}:{:02} UTC", at.date(), at.hour(), at.minute())
}

/// The invite page: which company and platform account, for whom, until when, and the
/// one button.
pub async fn invite_view(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if !plausible_token(&path) {
        return Ok(invite_refused_page(&req, InviteRefusal::Unknown));
    }
    let invite = match invite::by_token(state.integrations.as_ref(), &path, state.now()).await? {
        Ok(invite) => invite,
        Err(refusal) => return Ok(invite_refused_page(&req, refusal)),
    };
    let about = about(&state, &invite).await?;
    let lang = Lang::from_request(&req);
    let (csrf, fresh) = csrf_token(&req, &state);
    let body = format!(
        r#"<h1>{heading}</h1>
<p>{intro}</p>
<dl>
<dt>{company_l}</dt><dd id="invite-company">{company}</dd>
<dt>{vat_l}</dt><dd id="invite-vat">{vat}</dd>
<dt>{platform_l}</dt><dd id="invite-platform-account">{platform}</dd>
<dt>{email_l}</dt><dd id="invite-email">{email}</dd>
<dt>{expires_l}</dt><dd id="invite-expires">{expires}</dd>
</dl>
<form method="post" action="/invites/{token}">
<input type="hidden" name="csrf_token" value="{csrf}">
<button type="submit" id="invite-accept">{accept}</button>
</form>"#,
        heading = lang.pick("Invito di collaborazione", "Collaboration invite"),
        intro = lang.pick(
            "Accetta per attivare la fatturazione elettronica di questa azienda. Ti chiederemo di accedere di nuovo con il tuo ID esterno, anche se hai già una sessione aperta.",
            "Accept to activate electronic invoicing for this company. You will be asked to sign in again with your external ID, even if a session is open."
        ),
        company_l = lang.pick("Azienda", "Company"),
        vat_l = lang.pick("Partita IVA", "VAT number"),
        platform_l = lang.pick("Account della piattaforma", "Platform account"),
        email_l = lang.pick("Invitato", "Invited"),
        expires_l = lang.pick("Scade", "Expires"),
        accept = lang.pick("Accetta con il tuo ID esterno", "Accept with your external ID"),
        company = escape(&about.company),
        vat = escape(&about.vat_number),
        platform = escape(&about.platform_account),
        email = escape(&invite.masked_email()),
        expires = expiry(invite.expires_at),
        token = escape(&path),
        csrf = escape(&csrf),
    );
    let mut response = page(StatusCode::OK, lang, lang.pick("Invito", "Invite"), &body);
    if fresh {
        let _ = response.add_cookie(&cookie(&state, CSRF, csrf));
    }
    Ok(response)
}

/// What the invite page's form posts.
#[derive(Debug, Deserialize)]
pub struct InviteForm {
    csrf_token: Option<String>,
}

/// "Accept with your external ID": checks the invite again, then starts a fresh sign-in
/// at the provider of the invitee's external ID, carrying only the token's digest.
pub async fn invite_start(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<InviteForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if !csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        return Ok(csrf_failed_page(&req));
    }
    if !plausible_token(&path) {
        return Ok(invite_refused_page(&req, InviteRefusal::Unknown));
    }
    let invite = match invite::by_token(state.integrations.as_ref(), &path, state.now()).await? {
        Ok(invite) => invite,
        Err(refusal) => return Ok(invite_refused_page(&req, refusal)),
    };
    let identities = state.links.for_user(invite.account_id, invite.invitee).await?;
    let invited = invite.email.to_lowercase();
    let provider_id = identities
        .iter()
        .find(|x| x.email.as_deref().is_some_and(|e| e.to_lowercase() == invited))
        .or(identities.first())
        .map(|x| x.provider.clone());
    let Some(upstream) = provider_id.and_then(|id| state.providers.get(&id).cloned()) else {
        return Ok(error_page(
            &req,
            StatusCode::SERVICE_UNAVAILABLE,
            "invite_provider_unavailable",
            "Il fornitore dell'ID esterno a cui è stato inviato l'invito non è più configurato in Ponte. Contatta l'amministratore.",
            "The provider of the external ID this invite was sent to is no longer configured in Ponte. Contact your administrator.",
        ));
    };
    crate::routes::authorize::limit_parked_state(&req, &state, &FLOWS_PER_IP).await?;
    let store = state.sessions.store().as_ref();
    let request = plan_invite(digest(&path));
    match flow::begin(store, upstream.as_ref(), &redirect_uri(&state, &upstream.id), request, state.now()).await? {
        StartOutcome::Redirect { url, binding } => {
            let mut response = see_other(&url);
            let _ = response.add_cookie(&cookie(&state, BINDING, binding));
            Ok(response)
        }
        StartOutcome::Refused(refusal) => Ok(refusal_page(&req, &refusal)),
    }
}

/// Who acted on an invite: the Ponte user the upstream identity is linked to, or Ponte
/// itself on behalf of an identity nobody linked.
async fn actor_of(req: &HttpRequest, state: &AppState, identity: &UpstreamIdentity) -> Result<Actor, Problem> {
    let ip = client_ip(req);
    Ok(match state.links.find(&identity.issuer, &identity.subject).await? {
        Some(link) => Actor::user(link.user_id, ip),
        None => Actor { ip, ..Actor::system() },
    })
}

/// Writes `invite.refused` for an invite (when it is known at all).
async fn audit_refusal(
    state: &AppState,
    invite: Option<&Invite>,
    refusal: InviteRefusal,
    identity: &UpstreamIdentity,
    actor: &Actor,
) -> Result<(), Problem> {
    let detail = serde_json::json!({
        "invite": invite.map(|i| i.id.to_string()),
        "code": refusal.code(),
        "provider": identity.provider,
        "subject": identity.subject,
    })
    .to_string();
    let entry = match invite {
        Some(i) => AuditEntry::for_company(i.account_id, i.company_id, actor, "invite.refused", state.now()),
        None => AuditEntry {
            account_id: None,
            actor: actor.clone(),
            action: "invite.refused".into(),
            target: None,
            detail: None,
            at: state.now(),
        },
    };
    state.audit.append(&entry.with_detail(detail)).await?;
    Ok(())
}

/// The page an acceptance comes to.
async fn acceptance_page(
    req: &HttpRequest,
    state: &AppState,
    accepted: Accepted,
    known: Option<&Invite>,
    identity: &UpstreamIdentity,
    actor: &Actor,
    more: Option<String>,
) -> Result<HttpResponse, Problem> {
    match accepted {
        Accepted::Done { invite, .. } => {
            let about = about(state, &invite).await?;
            let lang = Lang::from_request(req);
            let more = more
                .map(|href| {
                    format!(
                        r#"<p><a id="invite-offer-more" href="{}">{}</a></p>"#,
                        escape(&href),
                        lang.pick("Altri inviti in attesa", "More invites waiting")
                    )
                })
                .unwrap_or_default();
            let body = format!(
                r#"<h1 id="invite-accepted">{heading}</h1>
<p>{intro}</p>
<dl><dt>{company_l}</dt><dd id="invite-company">{company}</dd></dl>{more}"#,
                heading = lang.pick("Invito accettato", "Invite accepted"),
                intro = lang.pick(
                    "Attivazione in corso: la piattaforma sta attivando la fatturazione elettronica, non serve fare altro.",
                    "Activation in progress: the platform is activating electronic invoicing, nothing else to do."
                ),
                company_l = lang.pick("Azienda", "Company"),
                company = escape(&about.company),
            );
            Ok(page(StatusCode::OK, lang, lang.pick("Invito accettato", "Invite accepted"), &body))
        }
        Accepted::Refused(refusal) => {
            audit_refusal(state, known, refusal, identity, actor).await?;
            Ok(match refusal {
                InviteRefusal::WrongPerson | InviteRefusal::EmailMismatch => {
                    wrong_person_page(req, refusal, known, identity)
                }
                _ => invite_refused_page(req, refusal),
            })
        }
    }
}

/// The upstream sign-in started from an invite page came back: accept the invite whose
/// token has `invite_digest` as `identity`, and show what came of it.
pub(crate) async fn accept_through_link(
    req: &HttpRequest,
    state: &AppState,
    identity: &UpstreamIdentity,
    invite_digest: &str,
) -> Result<HttpResponse, Problem> {
    let actor = actor_of(req, state, identity).await?;
    let (integrations, links) = (state.integrations.as_ref(), state.links.as_ref());
    let accepted = invite::accept_by_digest(integrations, links, invite_digest, identity, &actor, state.now()).await?;
    let known = match &accepted {
        Accepted::Done { .. } => None,
        Accepted::Refused(_) => invite::lookup(integrations, invite_digest).await?,
    };
    acceptance_page(req, state, accepted, known.as_ref(), identity, &actor, None).await
}

/// Keeps an offer of the invites waiting for `identity`, for `session` alone; returns
/// where to send the browser.
pub(crate) async fn make_offer(
    state: &AppState,
    session: &Session,
    identity: &UpstreamIdentity,
    return_to: &str,
) -> Result<String, Problem> {
    let kept = Offer { session_id: session.id.clone(), identity: identity.clone(), return_to: return_to.to_owned() };
    let id = offer::make(state.sessions.store().as_ref(), &kept).await?;
    Ok(format!("/invites/offer?offer={id}"))
}

fn offer_gone_page(req: &HttpRequest) -> HttpResponse {
    error_page(
        req,
        StatusCode::BAD_REQUEST,
        "offer_expired",
        "Questa offerta è scaduta, è già stata usata o appartiene a un'altra sessione.",
        "This offer expired, was already used, or belongs to another session.",
    )
}

/// `?offer=` of the offer page.
#[derive(Debug, Deserialize)]
pub struct OfferQuery {
    offer: Option<String>,
}

/// The invites waiting for the identity that just signed in, each with its own button,
/// and "not now".
pub async fn offer_view(
    req: HttpRequest,
    query: web::Query<OfferQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    let session = current_session(&req, &state).await?;
    let id = query.offer.as_deref().unwrap_or("");
    let store = state.sessions.store().as_ref();
    let Some(kept) = offer::load(store, id, session.as_ref().map(|s| s.id.as_str())).await? else {
        return Ok(offer_gone_page(&req));
    };
    let offered =
        invite::offered(state.integrations.as_ref(), state.links.as_ref(), &kept.identity, state.now()).await?;
    let lang = Lang::from_request(&req);
    let (csrf, fresh) = csrf_token(&req, &state);
    let mut rows = String::new();
    for i in &offered {
        let about = about(&state, i).await?;
        rows.push_str(&format!(
            r#"<tr data-invite="{invite}"><td>{company}</td><td>{platform}</td><td>{email}</td><td><form method="post" action="/invites/offer"><input type="hidden" name="csrf_token" value="{csrf}"><input type="hidden" name="offer" value="{offer}"><input type="hidden" name="invite" value="{invite}"><button type="submit" id="offer-accept-{invite}" class="compact">{accept}</button></form></td></tr>"#,
            invite = i.id,
            company = escape(&about.company),
            platform = escape(&about.platform_account),
            email = escape(&i.masked_email()),
            csrf = escape(&csrf),
            offer = escape(id),
            accept = lang.pick("Accetta", "Accept"),
        ));
    }
    let body = format!(
        r#"<h1>{heading}</h1>
<p>{intro}</p>
<table id="offered-invites"><thead><tr><th>{company_l}</th><th>{platform_l}</th><th>{email_l}</th><th></th></tr></thead>
<tbody>{rows}</tbody></table>
<p><a id="offer-not-now" href="{not_now}">{not_now_l}</a></p>"#,
        heading = lang.pick("Inviti di collaborazione in attesa", "Collaboration invites waiting"),
        intro = lang.pick(
            "Questi inviti sono stati inviati al tuo ID esterno. Puoi accettarli qui, anche se l'email non è arrivata.",
            "These invites were sent to your external ID. You can accept them here, even if the email never arrived."
        ),
        company_l = lang.pick("Azienda", "Company"),
        platform_l = lang.pick("Account della piattaforma", "Platform account"),
        email_l = lang.pick("Invitato", "Invited"),
        not_now = escape(&kept.return_to),
        not_now_l = lang.pick("Non ora", "Not now"),
    );
    let mut response = page(StatusCode::OK, lang, lang.pick("Inviti", "Invites"), &body);
    if fresh {
        let _ = response.add_cookie(&cookie(&state, CSRF, csrf));
    }
    Ok(response)
}

/// What an offer's accept button posts.
#[derive(Debug, Deserialize)]
pub struct OfferForm {
    csrf_token: Option<String>,
    offer: String,
    invite: String,
}

/// Accepts one offered invite as the identity the offer was made for; the offer is spent,
/// and any invites still waiting get a new one.
pub async fn offer_accept(
    req: HttpRequest,
    form: web::Form<OfferForm>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, Problem> {
    if !csrf_ok(&req, &state, form.csrf_token.as_deref()) {
        return Ok(csrf_failed_page(&req));
    }
    let Some(session) = current_session(&req, &state).await? else { return Ok(offer_gone_page(&req)) };
    let store = state.sessions.store().as_ref();
    let Some(kept) = offer::take(store, &form.offer, Some(&session.id)).await? else {
        return Ok(offer_gone_page(&req));
    };
    let identity = &kept.identity;
    let actor = actor_of(&req, &state, identity).await?;
    let (integrations, links) = (state.integrations.as_ref(), state.links.as_ref());
    let accepted = match form.invite.parse::<InviteId>() {
        Ok(invite) => invite::accept_offered(integrations, links, invite, identity, &actor, state.now()).await?,
        Err(_) => Accepted::Refused(InviteRefusal::Unknown),
    };
    let more = if invite::offered(integrations, links, identity, state.now()).await?.is_empty() {
        None
    } else {
        Some(make_offer(&state, &session, identity, &kept.return_to).await?)
    };
    acceptance_page(&req, &state, accepted, None, identity, &actor, more).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bounded_base64url_tokens_are_looked_up() {
        assert!(plausible_token("abcDEF012-_"));
        assert!(plausible_token(&"a".repeat(MAX_TOKEN_LEN)));
        assert!(!plausible_token(&"a".repeat(MAX_TOKEN_LEN + 1)));
        for bad in ["", "a b", "a.b", "a%2Fb", "é", "a/b", "a=b"] {
            assert!(!plausible_token(bad), "{bad:?}");
        }
    }
}
