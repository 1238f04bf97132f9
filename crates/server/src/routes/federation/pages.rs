//! The federation pages: one page per refusal, and the confirmation page.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse};
use ponte_identity::federation::Refusal;
use ponte_linking::federation::{ConfirmView, Notice, PendingKind};

use crate::browser::{CSRF, cookie, csrf_token, error_page, page};
use crate::html::{Lang, escape};
use crate::state::AppState;

fn status(refusal: &Refusal) -> StatusCode {
    match refusal {
        Refusal::UnknownProvider => StatusCode::NOT_FOUND,
        Refusal::SignInFirst => StatusCode::UNAUTHORIZED,
        Refusal::LinkNotAllowed | Refusal::UserDisabled | Refusal::NotLinked => StatusCode::FORBIDDEN,
        Refusal::ProviderUnreachable => StatusCode::BAD_GATEWAY,
        Refusal::IdentityLinkedElsewhere | Refusal::ProviderTaken => StatusCode::CONFLICT,
        Refusal::TooManyAttempts => StatusCode::TOO_MANY_REQUESTS,
        Refusal::InvalidRequest
        | Refusal::InvalidReturnTo
        | Refusal::FlowExpired
        | Refusal::FlowOtherBrowser
        | Refusal::UpstreamError(_)
        | Refusal::UpstreamResponseInvalid => StatusCode::BAD_REQUEST,
    }
}

fn texts(refusal: &Refusal) -> (&'static str, &'static str) {
    match refusal {
        Refusal::UnknownProvider => {
            ("Questo fornitore di identità non è configurato.", "This identity provider is not configured.")
        }
        Refusal::InvalidRequest => ("La richiesta non è valida.", "The request is not valid."),
        Refusal::InvalidReturnTo => ("L'indirizzo di ritorno non è ammesso.", "The return address is not allowed."),
        Refusal::SignInFirst => {
            ("Accedi a Ponte prima di collegare un ID.", "Sign in to Ponte before connecting an ID.")
        }
        Refusal::LinkNotAllowed => {
            ("Solo il titolare o un amministratore può collegare un ID.", "Only an owner or admin can connect an ID.")
        }
        Refusal::FlowExpired => (
            "Questa richiesta è scaduta o è già stata usata. Ricomincia dall'inizio.",
            "This request expired or was already used. Please start again.",
        ),
        Refusal::FlowOtherBrowser => (
            "Questa richiesta è stata avviata in un altro browser o da un'altra sessione. Ricomincia da qui.",
            "This request was started in another browser or session. Please start again here.",
        ),
        Refusal::UpstreamError(error) if error == "access_denied" => {
            ("Hai annullato l'accesso presso il fornitore di identità.", "You cancelled at the identity provider.")
        }
        Refusal::UpstreamError(_) => {
            ("Il fornitore di identità ha rifiutato la richiesta.", "The identity provider refused the request.")
        }
        Refusal::ProviderUnreachable => (
            "Il fornitore di identità non risponde. Riprova tra poco.",
            "The identity provider is not answering. Try again shortly.",
        ),
        Refusal::UpstreamResponseInvalid => (
            "La risposta del fornitore di identità non è valida; per sicurezza non proseguiamo.",
            "The identity provider's answer did not pass our checks; for safety we stop here.",
        ),
        Refusal::IdentityLinkedElsewhere => (
            "Questo ID è già collegato a un altro utente di Ponte. Nessun collegamento è stato fatto.",
            "This ID is already linked to another Ponte user. Nothing was linked.",
        ),
        Refusal::ProviderTaken => (
            "Questo utente ha già un ID collegato per questo fornitore. Scollegalo prima.",
            "This user already has an ID linked at this provider. Unlink it first.",
        ),
        Refusal::UserDisabled => ("Questo utente o account è disattivato.", "This user or account is disabled."),
        Refusal::NotLinked => (
            "Nessun utente di Ponte è collegato a questo ID. Chiedi al tuo amministratore di collegarlo.",
            "No Ponte user is linked to this ID. Ask your administrator to connect it.",
        ),
        Refusal::TooManyAttempts => {
            ("Troppi tentativi. Ricomincia più tardi.", "Too many attempts. Start again later.")
        }
    }
}

/// The page that explains a refusal, with its status and code.
pub fn refusal_page(req: &HttpRequest, refusal: &Refusal) -> HttpResponse {
    let (it, en) = texts(refusal);
    let mut response = error_page(req, status(refusal), refusal.code(), it, en);
    if let Refusal::UpstreamError(error) = refusal {
        response.headers_mut().insert(
            header::HeaderName::from_static("x-upstream-error"),
            header::HeaderValue::from_str(error).unwrap_or(header::HeaderValue::from_static("error")),
        );
    }
    response
}

/// Shows what will be linked to what, and asks for "Continue" (or proof).
pub fn confirm_page(
    req: &HttpRequest,
    state: &AppState,
    id: &str,
    view: &ConfirmView,
    status: StatusCode,
    notice: Option<Notice>,
) -> HttpResponse {
    let lang = Lang::from_request(req);
    let provider_name =
        state.providers.get(&view.identity.provider).map(|p| p.config.display_name.clone()).unwrap_or_default();
    let (csrf, fresh) = csrf_token(req, state);
    let upstream_email = view.identity.email.clone().unwrap_or_else(|| "—".into());
    let upstream_name = view.identity.name.clone().unwrap_or_else(|| "—".into());
    let error = notice
        .map(|n| match n {
            Notice::CodeSent => lang.pick("Ti abbiamo inviato un codice via email.", "We emailed you a code."),
            Notice::WrongProof => lang.pick("Password o codice non corretti.", "The password or code is not correct."),
        })
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
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
        account = escape(&view.account_name),
        user_email = escape(&view.user.email),
    );
    let hidden = format!(
        r#"<input type="hidden" name="csrf_token" value="{}"><input type="hidden" name="id" value="{}">"#,
        escape(&csrf),
        escape(id)
    );
    let body = match view.kind {
        PendingKind::Confirm => format!(
            r#"<h1>{heading}</h1>{error}<p>{intro}</p>{identity}
<form method="post" action="/link/confirm">{hidden}
<button type="submit" name="action" value="continue" id="link-continue">{cont}</button>
<button type="submit" name="action" value="cancel" id="link-cancel" class="secondary">{cancel}</button>
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
            let code_form = if view.code_sent {
                format!(
                    r#"<label for="code">{label}</label><input id="code" name="code" inputmode="numeric" autocomplete="one-time-code">
<button type="submit" name="action" value="code" id="link-code">{submit}</button>"#,
                    label = lang.pick("Codice ricevuto via email", "Code from the email"),
                    submit = lang.pick("Collega con il codice", "Connect with the code"),
                )
            } else {
                format!(
                    r#"<button type="submit" name="action" value="send_code" id="link-send-code" class="secondary">{send}</button>"#,
                    send = lang.pick("Inviami un codice via email", "Email me a code instead"),
                )
            };
            format!(
                r#"<h1>{heading}</h1>{error}<p>{intro}</p>{identity}
<form method="post" action="/link/confirm">{hidden}
<label for="password">{password_l}</label><input id="password" name="password" type="password" autocomplete="current-password">
<button type="submit" name="action" value="password" id="link-password">{cont}</button>
{code_form}
<button type="submit" name="action" value="cancel" class="secondary">{cancel}</button>
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
    response
}
