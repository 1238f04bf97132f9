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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::fakes::{LOGGED_OUT, T0, World, shop};
    use crate::token::IdTokenClaims;

    fn hint_for(world: &World, session: &Session) -> String {
        let claims = IdTokenClaims {
            iss: "https://ponte.example".into(),
            sub: world.user.id.to_string(),
            aud: "shop".into(),
            exp: T0.unix_timestamp(),
            iat: T0.unix_timestamp(),
            auth_time: T0.unix_timestamp(),
            nonce: None,
            amr: vec![],
            sid: Some(session.id.clone()),
            azp: "shop".into(),
            email: None,
            email_verified: None,
            name: None,
            account_id: None,
            access: None,
        };
        world.keys.sign_id_token(&claims).unwrap()
    }

    #[tokio::test]
    async fn a_hint_for_this_session_signs_out_at_once_and_goes_back_to_the_client() {
        let world = World::new(shop(true));
        let op = world.provider();
        let session = world.sign_in(T0).await;
        let hint = hint_for(&world, &session);
        let request =
            LogoutRequest { id_token_hint: Some(&hint), post_logout_redirect_uri: Some(LOGGED_OUT), client_id: None };
        let decision = op.logout(request, Some(&session), T0).await.unwrap();
        assert_eq!(decision, LogoutDecision::SignedOut { target: Some(LOGGED_OUT.into()) });
        assert_eq!(world.sessions.list_for_user(world.user.id, T0).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn without_a_matching_hint_the_user_confirms() {
        let world = World::new(shop(true));
        let op = world.provider();
        let session = world.sign_in(T0).await;
        let request = LogoutRequest { client_id: Some("shop"), ..LogoutRequest::default() };
        let decision = op.logout(request, Some(&session), T0).await.unwrap();
        assert_eq!(decision, LogoutDecision::Confirm { client_id: Some("shop".into()) });
        assert_eq!(world.sessions.list_for_user(world.user.id, T0).await.unwrap().len(), 1, "a GET alone ends nothing");
        let other = world.sign_in(T0).await;
        let hint = hint_for(&world, &other);
        let request = LogoutRequest { id_token_hint: Some(&hint), ..LogoutRequest::default() };
        assert!(matches!(op.logout(request, Some(&session), T0).await.unwrap(), LogoutDecision::Confirm { .. }));
        let confirmed = op.logout_confirmed(LogoutRequest::default(), Some(&session), T0).await.unwrap();
        assert_eq!(confirmed, LogoutDecision::SignedOut { target: None });
    }

    #[tokio::test]
    async fn only_registered_targets_and_our_own_hints_are_accepted() {
        let world = World::new(shop(true));
        let op = world.provider();
        let unregistered = LogoutRequest {
            post_logout_redirect_uri: Some("https://evil.example/"),
            client_id: Some("shop"),
            ..LogoutRequest::default()
        };
        assert!(matches!(op.logout(unregistered, None, T0).await.unwrap(), LogoutDecision::Invalid(_)));
        let anonymous = LogoutRequest { post_logout_redirect_uri: Some(LOGGED_OUT), ..LogoutRequest::default() };
        assert!(matches!(op.logout(anonymous, None, T0).await.unwrap(), LogoutDecision::Invalid(_)));
        let forged = LogoutRequest { id_token_hint: Some("e30.e30.sig"), ..LogoutRequest::default() };
        assert_eq!(op.logout(forged, None, T0).await.unwrap(), LogoutDecision::InvalidHint);
        let session = world.sign_in(T0).await;
        let hint = hint_for(&world, &session);
        let mismatch =
            LogoutRequest { id_token_hint: Some(&hint), client_id: Some("other"), ..LogoutRequest::default() };
        assert_eq!(
            op.logout(mismatch, Some(&session), T0).await.unwrap(),
            LogoutDecision::Invalid("client_id does not match the id_token_hint")
        );
    }
}
