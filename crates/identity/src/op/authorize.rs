//! The authorization endpoint as a use case: validate the request, then sign in, ask
//! for consent and issue a code as needed. One [`AuthorizeDecision`] says what the
//! browser sees next.

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;

use super::{Provider, codes, pending};
use crate::Result;
use crate::client::Client;
use crate::oidc::{
    AuthorizationRequest, CodeGrant, LoginNeed, Prompt, RequestError, SentToLogin, login_need, validate_request,
};
use crate::session::Session;

/// What the browser sees after an authorization step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeDecision {
    /// Back to the client with a code (RFC 6749 §4.1.2), with `iss` added by the caller.
    RedirectWithCode {
        /// The registered redirect URI.
        redirect_uri: String,
        /// The authorization code.
        code: String,
        /// The client's `state`, echoed.
        state: Option<String>,
    },
    /// Back to the client with an error (RFC 6749 §4.1.2.1).
    ErrorToClient {
        /// The registered redirect URI.
        redirect_uri: String,
        /// The client's `state`, echoed.
        state: Option<String>,
        /// The RFC 6749 error code.
        error: &'static str,
        /// For a developer.
        description: String,
    },
    /// No redirect can be trusted, or the request is gone: show a page.
    ErrorPage(AuthorizePageError),
    /// The browser must sign in first; the request waits under `authz`.
    NeedLogin {
        /// The parked request's id.
        authz: String,
    },
    /// The user must allow a third-party client; the request waits under `authz`.
    NeedConsent {
        /// The parked request's id.
        authz: String,
        /// The client's name, for the page.
        client_name: String,
        /// The scopes asked for.
        scopes: Vec<String>,
    },
    /// This client address parked too many requests lately.
    TooManyRequests,
}

/// Why an authorization step ends on a page of Ponte's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizePageError {
    /// Unknown client, or a redirect URI that is not registered (logged, not shown).
    Untrusted(String),
    /// The parked request expired, was used already, or belongs to another session.
    Expired,
}

/// Pending requests one client address may park per minute (each lives ten minutes).
pub const PENDING_PER_IP: crate::ratelimit::RateLimit =
    crate::ratelimit::RateLimit { name: "pending-ip", max: 120, window: time::Duration::minutes(1) };

/// Every value of every query parameter, so repeated parameters can be refused.
pub fn query_params(query: &str) -> HashMap<String, Vec<String>> {
    // Room for an authorization request's usual parameters without growing the table.
    let mut map: HashMap<String, Vec<String>> = HashMap::with_capacity(12);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match map.get_mut(k.as_ref()) {
            Some(values) => values.push(v.into_owned()),
            None => {
                map.insert(k.into_owned(), vec![v.into_owned()]);
            }
        }
    }
    map
}

fn to_client(request: &AuthorizationRequest, error: &'static str, description: &str) -> AuthorizeDecision {
    AuthorizeDecision::ErrorToClient {
        redirect_uri: request.redirect_uri.clone(),
        state: request.state.clone(),
        error,
        description: description.to_owned(),
    }
}

/// The browser asking: its current session (if any) and the address parked requests
/// are counted against.
#[derive(Debug, Clone, Copy)]
pub struct Browser<'s> {
    /// The live session of this browser.
    pub session: Option<&'s Session>,
    /// The client address, for the parking limit.
    pub ip: &'s str,
}

impl Provider<'_> {
    /// A client by id; ids longer than any we issue are never looked up.
    pub async fn client(&self, id: &str) -> Result<Option<Arc<Client>>> {
        if id.len() > 64 {
            return Ok(None);
        }
        self.clients.find(id).await
    }

    /// `GET /oauth2/authorize`: validates the request (every value of each parameter in
    /// `params`), then goes on as far as the browser's session allows.
    pub async fn authorize(
        &self,
        params: &HashMap<String, Vec<String>>,
        browser: Browser<'_>,
        now: OffsetDateTime,
    ) -> Result<AuthorizeDecision> {
        let client = match params.get("client_id").map(Vec::as_slice) {
            Some([id]) => self.client(id).await?,
            _ => None,
        };
        match (validate_request(params, client.as_deref(), now), client) {
            (Err(RequestError::Untrusted(why)), _) => {
                Ok(AuthorizeDecision::ErrorPage(AuthorizePageError::Untrusted(why)))
            }
            (Err(RequestError::Redirect { redirect_uri, state, error, description }), _) => {
                Ok(AuthorizeDecision::ErrorToClient { redirect_uri, state, error, description })
            }
            (Ok(request), Some(client)) => self.proceed(&client, request, browser, now).await,
            (Ok(_), None) => Ok(AuthorizeDecision::ErrorPage(AuthorizePageError::Untrusted("Unknown client.".into()))),
        }
    }

    /// `GET /oauth2/authorize/continue`: picks a request parked for sign-in up again.
    pub async fn resume(&self, authz: &str, browser: Browser<'_>, now: OffsetDateTime) -> Result<AuthorizeDecision> {
        let Some(request) = pending::take(self.store, authz).await? else {
            return Ok(AuthorizeDecision::ErrorPage(AuthorizePageError::Expired));
        };
        match self.client(&request.client_id).await? {
            Some(client) => self.proceed(&client, request, browser, now).await,
            None => Ok(AuthorizeDecision::ErrorPage(AuthorizePageError::Untrusted("The client was removed.".into()))),
        }
    }

    /// `POST /oauth2/consent`: the user's decision on a parked request. It counts only
    /// from the session the consent page was shown to.
    pub async fn consent(
        &self,
        authz: &str,
        allow: bool,
        session: Option<&Session>,
        now: OffsetDateTime,
    ) -> Result<AuthorizeDecision> {
        let Some(request) = pending::take(self.store, authz).await? else {
            return Ok(AuthorizeDecision::ErrorPage(AuthorizePageError::Expired));
        };
        if !allow {
            return Ok(to_client(&request, "access_denied", "The user denied the request."));
        }
        let Some(session) = session.filter(|s| request.consent_sid.as_deref() == Some(s.id.as_str())) else {
            return Ok(AuthorizeDecision::ErrorPage(AuthorizePageError::Expired));
        };
        self.consents.grant(session.user_id, &request.client_id, &request.scope, now).await?;
        self.issue_code(&request, session).await
    }

    /// A parked request, read without consuming it.
    pub async fn pending_request(&self, authz: &str) -> Result<Option<AuthorizationRequest>> {
        pending::peek(self.store, authz).await
    }

    async fn proceed(
        &self,
        client: &Client,
        request: AuthorizationRequest,
        browser: Browser<'_>,
        now: OffsetDateTime,
    ) -> Result<AuthorizeDecision> {
        let mut session = browser.session;
        // A session whose user or account was turned off does not count, and ends.
        if let Some(s) = session
            && !self.subjects.is_active(s.account_id, s.user_id).await?
        {
            self.end_session(s, now).await?;
            session = None;
        }
        let current = session.map(|s| (s.id.as_str(), s.created_at.unix_timestamp()));
        let session = match (login_need(&request, current, now), session) {
            (LoginNeed::Satisfied, Some(s)) => s,
            _ if request.prompt.contains(&Prompt::None) => {
                return Ok(to_client(&request, "login_required", "The user is not signed in."));
            }
            (_, stale) => {
                let request = AuthorizationRequest {
                    sent_to_login: Some(SentToLogin { stale_sid: stale.map(|s| s.id.clone()) }),
                    ..request
                };
                return self.park(&request, browser.ip, now, |authz| AuthorizeDecision::NeedLogin { authz }).await;
            }
        };
        if !client.first_party {
            let granted = self.consents.granted(session.user_id, &client.id).await?;
            let covered = request.scope.iter().all(|s| granted.contains(s));
            if !covered || request.prompt.contains(&Prompt::Consent) {
                if request.prompt.contains(&Prompt::None) {
                    return Ok(to_client(&request, "consent_required", "The user has not consented."));
                }
                let request = AuthorizationRequest { consent_sid: Some(session.id.clone()), ..request };
                let (client_name, scopes) = (client.name.clone(), request.scope.clone());
                return self
                    .park(&request, browser.ip, now, |authz| AuthorizeDecision::NeedConsent {
                        authz,
                        client_name,
                        scopes,
                    })
                    .await;
            }
        }
        self.issue_code(&request, session).await
    }

    /// Parks `request` unless this address parked too many lately.
    async fn park(
        &self,
        request: &AuthorizationRequest,
        ip: &str,
        now: OffsetDateTime,
        then: impl FnOnce(String) -> AuthorizeDecision,
    ) -> Result<AuthorizeDecision> {
        if !PENDING_PER_IP.allow_address(self.store, ip, now).await? {
            return Ok(AuthorizeDecision::TooManyRequests);
        }
        Ok(then(pending::park(self.store, request).await?))
    }

    async fn issue_code(&self, request: &AuthorizationRequest, session: &Session) -> Result<AuthorizeDecision> {
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
        let code = codes::issue(self.store, &grant).await?;
        Ok(AuthorizeDecision::RedirectWithCode {
            redirect_uri: request.redirect_uri.clone(),
            code,
            state: request.state.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::op::fakes::{REDIRECT, T0, World, authorize_params, shop};

    const IP: &str = "192.0.2.1";

    fn code_of(decision: &AuthorizeDecision) -> &str {
        match decision {
            AuthorizeDecision::RedirectWithCode { code, redirect_uri, state } => {
                assert_eq!((redirect_uri.as_str(), state.as_deref()), (REDIRECT, Some("st")));
                code
            }
            other => panic!("expected a code, got {other:?}"),
        }
    }

    fn error_of(decision: &AuthorizeDecision) -> &'static str {
        match decision {
            AuthorizeDecision::ErrorToClient { error, .. } => error,
            other => panic!("expected an error for the client, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn without_a_session_the_request_waits_for_sign_in_then_gets_a_code() {
        let world = World::new(shop(true));
        let op = world.provider();
        let params = authorize_params("openid email", &[]);
        let decision = op.authorize(&params, Browser { session: None, ip: IP }, T0).await.unwrap();
        let AuthorizeDecision::NeedLogin { authz } = decision else { panic!("{decision:?}") };
        assert_eq!(op.pending_request(&authz).await.unwrap().unwrap().client_id, "shop", "readable while it waits");

        let session = world.sign_in(T0).await;
        let resumed = op.resume(&authz, Browser { session: Some(&session), ip: IP }, T0).await.unwrap();
        let code = code_of(&resumed);
        let grant = crate::op::codes::take(world.store.as_ref(), code).await.unwrap().unwrap();
        assert_eq!((grant.user_id, grant.sid.as_str()), (world.user.id, session.id.as_str()));
        assert_eq!(grant.scope, vec!["openid", "email"]);

        let again = op.resume(&authz, Browser { session: Some(&session), ip: IP }, T0).await.unwrap();
        assert_eq!(again, AuthorizeDecision::ErrorPage(AuthorizePageError::Expired), "a parked request is used once");
    }

    #[tokio::test]
    async fn prompt_none_never_shows_a_page() {
        let world = World::new(shop(false));
        let op = world.provider();
        let params = authorize_params("openid", &[("prompt", "none")]);
        let decision = op.authorize(&params, Browser { session: None, ip: IP }, T0).await.unwrap();
        assert_eq!(error_of(&decision), "login_required");
        let session = world.sign_in(T0).await;
        let decision = op.authorize(&params, Browser { session: Some(&session), ip: IP }, T0).await.unwrap();
        assert_eq!(error_of(&decision), "consent_required", "a third-party client without consent");
    }

    #[tokio::test]
    async fn unknown_clients_get_a_page() {
        let world = World::new(shop(true));
        let mut params = authorize_params("openid", &[]);
        params.insert("client_id".into(), vec!["nobody".into()]);
        let decision = world.provider().authorize(&params, Browser { session: None, ip: IP }, T0).await.unwrap();
        assert!(matches!(decision, AuthorizeDecision::ErrorPage(AuthorizePageError::Untrusted(_))), "{decision:?}");
    }

    #[tokio::test]
    async fn consent_counts_only_from_the_session_it_was_shown_to_and_is_remembered() {
        let world = World::new(shop(false));
        let op = world.provider();
        let session = world.sign_in(T0).await;
        let browser = Browser { session: Some(&session), ip: IP };
        let params = authorize_params("openid email", &[]);
        let decision = op.authorize(&params, browser, T0).await.unwrap();
        let AuthorizeDecision::NeedConsent { authz, client_name, scopes } = decision else { panic!("{decision:?}") };
        assert_eq!((client_name.as_str(), scopes), ("Shop", vec!["openid".to_owned(), "email".to_owned()]));

        let other = world.sign_in(T0).await;
        let stolen = op.consent(&authz, true, Some(&other), T0).await.unwrap();
        assert_eq!(stolen, AuthorizeDecision::ErrorPage(AuthorizePageError::Expired));

        let AuthorizeDecision::NeedConsent { authz, .. } = op.authorize(&params, browser, T0).await.unwrap() else {
            panic!("consent is asked again")
        };
        code_of(&op.consent(&authz, true, Some(&session), T0).await.unwrap());
        code_of(&op.authorize(&params, browser, T0).await.unwrap());
        let forced = op.authorize(&authorize_params("openid", &[("prompt", "consent")]), browser, T0).await.unwrap();
        assert!(matches!(forced, AuthorizeDecision::NeedConsent { .. }), "prompt=consent asks anyway");
    }

    #[tokio::test]
    async fn a_denied_consent_goes_back_to_the_client() {
        let world = World::new(shop(false));
        let op = world.provider();
        let session = world.sign_in(T0).await;
        let params = authorize_params("openid", &[]);
        let decision = op.authorize(&params, Browser { session: Some(&session), ip: IP }, T0).await.unwrap();
        let AuthorizeDecision::NeedConsent { authz, .. } = decision else { panic!("{decision:?}") };
        assert_eq!(error_of(&op.consent(&authz, false, Some(&session), T0).await.unwrap()), "access_denied");
    }

    #[tokio::test]
    async fn the_session_of_a_disabled_user_ends_and_does_not_count() {
        let world = World::new(shop(true));
        let op = world.provider();
        let session = world.sign_in(T0).await;
        world.disable_user();
        let params = authorize_params("openid", &[]);
        let decision = op.authorize(&params, Browser { session: Some(&session), ip: IP }, T0).await.unwrap();
        assert!(matches!(decision, AuthorizeDecision::NeedLogin { .. }), "{decision:?}");
        assert_eq!(world.sessions.list_for_user(world.user.id, T0).await.unwrap(), vec![], "the session ended");
    }

    #[tokio::test]
    async fn one_address_may_park_only_so_many_requests() {
        let world = World::new(shop(true));
        let op = world.provider();
        let params = authorize_params("openid", &[]);
        for _ in 0..PENDING_PER_IP.max {
            let decision = op.authorize(&params, Browser { session: None, ip: IP }, T0).await.unwrap();
            assert!(matches!(decision, AuthorizeDecision::NeedLogin { .. }));
        }
        let refused = op.authorize(&params, Browser { session: None, ip: IP }, T0).await.unwrap();
        assert_eq!(refused, AuthorizeDecision::TooManyRequests);
        let elsewhere = op.authorize(&params, Browser { session: None, ip: "192.0.2.2" }, T0).await.unwrap();
        assert!(matches!(elsewhere, AuthorizeDecision::NeedLogin { .. }), "other addresses are counted apart");
    }
}
