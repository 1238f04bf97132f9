//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0). With a valid
//! `id_token_hint` for this browser's session it ends at once; otherwise the user
//! confirms on a page, so that a link alone cannot sign anyone out.

use time::OffsetDateTime;

use super::Provider;
use crate::Result;
use crate::session::Session;

/// The parameters of a logout request.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogoutRequest<'a> {
    /// An ID token we issued (expired ones are fine).
    pub id_token_hint: Option<&'a str>,
    /// Where to send the browser afterwards; must be registered for the client.
    pub post_logout_redirect_uri: Option<&'a str>,
    /// The client, when no hint names it.
    pub client_id: Option<&'a str>,
}

/// What the browser sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogoutDecision {
    /// The `id_token_hint` is not one of ours.
    InvalidHint,
    /// The request cannot be honoured, for this reason (for a developer).
    Invalid(&'static str),
    /// The session (if any) has ended; go to `target` if there is one, else say so.
    SignedOut {
        /// The registered post-logout redirect URI asked for.
        target: Option<String>,
    },
    /// Ask the user to confirm; the form carries the client it names.
    Confirm {
        /// The client named by the hint or the request.
        client_id: Option<String>,
    },
}

impl Provider<'_> {
    /// `GET /oauth2/logout`.
    pub async fn logout(
        &self,
        request: LogoutRequest<'_>,
        session: Option<&Session>,
        now: OffsetDateTime,
    ) -> Result<LogoutDecision> {
        let hint = match request.id_token_hint {
            Some(token) => match self.keys.verify_id_token_hint(token, &self.settings.issuer) {
                Ok(claims) => Some(claims),
                Err(_) => return Ok(LogoutDecision::InvalidHint),
            },
            None => None,
        };
        let hint_aud = hint.as_ref().map(|h| h.aud.as_str());
        let target = match self.logout_target(request, hint_aud).await? {
            Ok(target) => target,
            Err(why) => return Ok(LogoutDecision::Invalid(why)),
        };
        let confirmed = match (session, &hint) {
            (None, _) => true,
            (Some(s), Some(h)) => h.sid.as_deref() == Some(s.id.as_str()) && h.sub == s.user_id.to_string(),
            (Some(_), None) => false,
        };
        if !confirmed {
            return Ok(LogoutDecision::Confirm { client_id: hint_aud.or(request.client_id).map(str::to_owned) });
        }
        if let Some(s) = session {
            self.end_session(s, now).await?;
        }
        Ok(LogoutDecision::SignedOut { target })
    }

    /// `POST /oauth2/logout`: the user confirmed (the caller checked the form came from
    /// Ponte).
    pub async fn logout_confirmed(
        &self,
        request: LogoutRequest<'_>,
        session: Option<&Session>,
        now: OffsetDateTime,
    ) -> Result<LogoutDecision> {
        let target = match self.logout_target(request, None).await? {
            Ok(target) => target,
            Err(why) => return Ok(LogoutDecision::Invalid(why)),
        };
        if let Some(s) = session {
            self.end_session(s, now).await?;
        }
        Ok(LogoutDecision::SignedOut { target })
    }

    /// Where to send the browser afterwards, if the request names a registered URI.
    async fn logout_target(
        &self,
        request: LogoutRequest<'_>,
        hint_aud: Option<&str>,
    ) -> Result<Result<Option<String>, &'static str>> {
        let client_id = match (hint_aud, request.client_id) {
            (Some(a), Some(c)) if a != c => return Ok(Err("client_id does not match the id_token_hint")),
            (a, c) => a.or(c),
        };
        let Some(uri) = request.post_logout_redirect_uri else { return Ok(Ok(None)) };
        let Some(client_id) = client_id else {
            return Ok(Err("post_logout_redirect_uri needs id_token_hint or client_id"));
        };
        match self.client(client_id).await? {
            Some(client) if client.has_post_logout_redirect_uri(uri) => Ok(Ok(Some(uri.to_owned()))),
            _ => Ok(Err("post_logout_redirect_uri is not registered for this client")),
        }
    }
}
