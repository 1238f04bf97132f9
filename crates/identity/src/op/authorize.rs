//! The authorization endpoint as a use case: validate the request, then sign in, ask
//! for consent and issue a code as needed. One [`AuthorizeDecision`] says what the
//! browser sees next.

use std::collections::HashMap;

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
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        map.entry(k.into_owned()).or_default().push(v.into_owned());
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
    pub async fn client(&self, id: &str) -> Result<Option<Client>> {
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
        match (validate_request(params, client.as_ref(), now), client) {
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
            && self.subjects.active_subject(s.account_id, s.user_id).await?.is_none()
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
        if !PENDING_PER_IP.allow(self.store, ip, now).await? {
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
