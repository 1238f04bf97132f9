//! The identity half of the federation use cases: begin a flow, complete it (one-time
//! state, same browser, full validation), remember which Ponte sessions an upstream
//! session opened, and accept a back-channel logout.
//!
//! What happens with a validated upstream identity (link, sign in, offer a proof) is
//! decided by the linking crate, which knows users and links.

use time::OffsetDateTime;

use super::flow::{FLOW_TTL_SECS, Flow, Initiator, Intent, MAX_STATE_LEN, Refusal, flow_key};
use crate::ids::UserId;
use crate::refresh::RefreshRepo;
use crate::secret::{digest, random_token};
use crate::session::{Session, SessionStore, Sessions};
use crate::upstream::{FlowSecrets, LogoutRequest, Provider, UpstreamIdentity};
use crate::{Error, Result};

/// How long a back-channel logout token's `jti` is remembered (beyond its 5-minute `iat`
/// window plus skew).
const LOGOUT_JTI_TTL_SECS: u64 = 900;

/// Key of the set of Ponte sessions an upstream session (`sid`) opened.
fn upstream_sid_key(provider: &str, sid: &str) -> String {
    format!("upsid:{provider}:{}", digest(sid))
}

/// Key under which a logout token's `jti` is remembered, to refuse replays.
fn logout_jti_key(provider: &str, jti: &str) -> String {
    format!("bcl-jti:{provider}:{}", digest(jti))
}

/// A flow about to start, already allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartRequest {
    /// Why the person goes upstream.
    pub intent: Intent,
    /// The admin starting a link or register flow (`None` for a login).
    pub initiator: Option<Initiator>,
    /// Where to go afterwards, already checked.
    pub return_to: String,
    /// Whether a login must be fresh upstream (an application asked for one).
    pub fresh: bool,
    /// Digest of the invite token an [`Intent::AcceptInvite`] flow accepts.
    pub invite_digest: Option<String>,
}

/// What [`begin`] comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartOutcome {
    /// Send the browser to `url`, setting the binding cookie to `binding`.
    Redirect {
        /// The provider's authorization URL.
        url: String,
        /// The binding cookie's value (only its digest is stored).
        binding: String,
    },
    /// The provider could not be asked.
    Refused(Refusal),
}

/// Starts a flow: asks the provider for an authorization URL and stores the one-time flow
/// state under the `state` value, bound to a fresh browser cookie.
pub async fn begin(
    store: &dyn SessionStore,
    provider: &dyn Provider,
    redirect_uri: &str,
    request: StartRequest,
    now: OffsetDateTime,
) -> Result<StartOutcome> {
    let started = match provider.start(redirect_uri, request.intent.ask(request.fresh), None).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "upstream flow failed");
            return Ok(StartOutcome::Refused(Refusal::from(&e)));
        }
    };
    let binding = random_token();
    let initiator = request.initiator;
    let flow = Flow {
        provider: provider.id().to_owned(),
        intent: request.intent,
        secrets: FlowSecrets { nonce: started.nonce, pkce_verifier: started.pkce_verifier },
        account_id: initiator.as_ref().map(|i| i.account_id),
        user_id: initiator.as_ref().map(|i| i.user_id),
        initiating_sid: initiator.map(|i| i.session_id),
        binding: digest(&binding),
        return_to: request.return_to,
        started_at: now.unix_timestamp(),
        fresh: request.fresh,
        invite_digest: request.invite_digest,
    };
    let json = serde_json::to_string(&flow).map_err(|e| Error::Corrupt(e.to_string()))?;
    store.put_once(&flow_key(&started.state), &json, FLOW_TTL_SECS).await?;
    Ok(StartOutcome::Redirect { url: started.url, binding })
}

/// The provider's answer at the callback, as received.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallbackParams<'a> {
    /// The authorization code.
    pub code: Option<&'a str>,
    /// The state value, naming the flow.
    pub state: Option<&'a str>,
    /// RFC 9207 `iss`.
    pub iss: Option<&'a str>,
    /// An OAuth error instead of a code.
    pub error: Option<&'a str>,
}

/// What [`complete`] comes to.
// Made once per callback and matched at once: boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completion {
    /// The flow was this browser's and the provider's answer passed every check.
    Verified {
        /// The flow, now consumed.
        flow: Flow,
        /// Who signed in upstream.
        identity: UpstreamIdentity,
    },
    /// Stopped; nothing happened.
    Refused(Refusal),
}

/// Completes a flow: takes its state once, checks it belongs to this provider and to the
/// browser presenting `binding_cookie`, then redeems the code and validates the answer.
pub async fn complete(
    store: &dyn SessionStore,
    provider: &dyn Provider,
    redirect_uri: &str,
    params: CallbackParams<'_>,
    binding_cookie: Option<&str>,
    now: OffsetDateTime,
) -> Result<Completion> {
    let refused = |r| Ok(Completion::Refused(r));
    let Some(state) = params.state.filter(|s| s.len() <= MAX_STATE_LEN) else { return refused(Refusal::FlowExpired) };
    // Taken before anything else, so a replayed or failed callback can never be retried.
    let Some(json) = store.take_once(&flow_key(state)).await? else { return refused(Refusal::FlowExpired) };
    let flow: Flow = serde_json::from_str(&json).map_err(|e| Error::Corrupt(format!("flow: {e}")))?;
    if flow.provider != provider.id() {
        return refused(Refusal::FlowExpired);
    }
    if !flow.bound_to(binding_cookie) {
        return refused(Refusal::FlowOtherBrowser);
    }
    if let Some(error) = params.error {
        return refused(Refusal::upstream_error(error));
    }
    let Some(code) = params.code else { return refused(Refusal::UpstreamResponseInvalid) };
    match provider.finish(redirect_uri, code, params.iss, &flow.secrets, flow.fresh_after(), now).await {
        Ok(identity) => Ok(Completion::Verified { flow, identity }),
        Err(e) => {
            tracing::warn!(error = %e, "upstream flow failed");
            refused(Refusal::from(&e))
        }
    }
}

/// Indexes `session`, opened by a sign-in through `identity`, under its upstream `sid`,
/// so a back-channel logout for that `sid` ends it. Concurrent sign-ins are all kept.
pub async fn remember_upstream_session(
    store: &dyn SessionStore,
    identity: &UpstreamIdentity,
    session: &Session,
    now: OffsetDateTime,
) -> Result<()> {
    let Some(sid) = &identity.sid else { return Ok(()) };
    let ttl = (session.absolute_expires_at - now).whole_seconds().max(1) as u64;
    let member = format!("{}:{}", session.user_id, session.id);
    store.add_member(&upstream_sid_key(&identity.provider, sid), &member, ttl).await
}

/// Validates a back-channel logout token and refuses a replay of its `jti` atomically;
/// `None` if the token is not acceptable.
pub async fn accept_logout(
    store: &dyn SessionStore,
    provider: &dyn Provider,
    token: &str,
    now: OffsetDateTime,
) -> Result<Option<LogoutRequest>> {
    let request = match provider.validate_logout_token(token, now).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, provider = %provider.id(), "back-channel logout refused");
            return Ok(None);
        }
    };
    if !store.put_if_absent(&logout_jti_key(provider.id(), &request.jti), "1", LOGOUT_JTI_TTL_SECS).await? {
        tracing::warn!(provider = %provider.id(), "back-channel logout token replayed");
        return Ok(None);
    }
    Ok(Some(request))
}

/// Ends the Ponte sessions (and their refresh tokens) opened through the upstream session
/// `sid`; returns how many sessions ended.
pub async fn end_upstream_session(
    store: &dyn SessionStore,
    sessions: &Sessions,
    refresh: &dyn RefreshRepo,
    provider: &str,
    sid: &str,
    now: OffsetDateTime,
) -> Result<usize> {
    let mut ended = 0;
    for member in store.take_members(&upstream_sid_key(provider, sid)).await? {
        let Some((user, session_id)) = member.split_once(':') else { continue };
        let Ok(user) = user.parse::<UserId>() else { continue };
        if sessions.revoke(user, session_id).await? {
            ended += 1;
        }
        refresh.revoke_session(session_id, now).await?;
    }
    Ok(ended)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use time::macros::datetime;

    use super::*;
    use crate::session::MemoryStore;
    use crate::upstream::{Ask, Started, UpstreamError};

    const NOW: OffsetDateTime = datetime!(2026-03-01 10:00:00 UTC);

    /// A provider that answers from memory and records how it was asked.
    #[derive(Debug, Default)]
    struct FakeProvider {
        asked: Mutex<Vec<Ask>>,
        fail_finish: Option<&'static str>,
    }

    #[async_trait]
    impl Provider for FakeProvider {
        fn id(&self) -> &str {
            "up"
        }

        async fn start(&self, _: &str, ask: Ask, _: Option<&str>) -> Result<Started, UpstreamError> {
            self.asked.lock().unwrap().push(ask);
            let n = self.asked.lock().unwrap().len();
            Ok(Started {
                url: format!("https://id.example/authorize?n={n}"),
                state: format!("state-{n}"),
                nonce: "nonce".into(),
                pkce_verifier: "verifier".into(),
            })
        }

        async fn finish(
            &self,
            _: &str,
            code: &str,
            _: Option<&str>,
            flow: &FlowSecrets,
            _: Option<i64>,
            _: OffsetDateTime,
        ) -> Result<UpstreamIdentity, UpstreamError> {
            if let Some(why) = self.fail_finish {
                return Err(UpstreamError::Invalid(why.into()));
            }
            assert_eq!(flow.pkce_verifier, "verifier", "the stored verifier is used");
            Ok(identity(code))
        }

        async fn validate_logout_token(&self, token: &str, _: OffsetDateTime) -> Result<LogoutRequest, UpstreamError> {
            match token {
                "good" => {
                    Ok(LogoutRequest { issuer: "https://id.example".into(), sid: None, sub: None, jti: "j1".into() })
                }
                _ => Err(UpstreamError::Invalid("bad".into())),
            }
        }
    }

    fn identity(subject: &str) -> UpstreamIdentity {
        UpstreamIdentity {
            provider: "up".into(),
            issuer: "https://id.example".into(),
            subject: subject.into(),
            email: None,
            email_verified: false,
            name: None,
            auth_time: None,
            sid: Some("upstream-sid".into()),
        }
    }

    fn login() -> StartRequest {
        StartRequest {
            intent: Intent::Login,
            initiator: None,
            return_to: "/".into(),
            fresh: false,
            invite_digest: None,
        }
    }

    async fn started(store: &MemoryStore, provider: &FakeProvider, request: StartRequest) -> (String, String) {
        match begin(store, provider, "https://ponte/cb", request, NOW).await.unwrap() {
            StartOutcome::Redirect { url, binding } => (url.rsplit('=').next().unwrap().to_owned(), binding),
            other => panic!("{other:?}"),
        }
    }

    fn params<'a>(n: &'a str) -> (String, CallbackParams<'a>) {
        (format!("state-{n}"), CallbackParams { code: Some("sub-1"), ..Default::default() })
    }

    #[tokio::test]
    async fn a_flow_completes_once_in_the_browser_that_started_it() {
        let (store, provider) = (MemoryStore::new(), FakeProvider::default());
        let (n, binding) = started(&store, &provider, login()).await;
        let (state, mut p) = params(&n);
        p.state = Some(&state);
        match complete(&store, &provider, "cb", p, Some(&binding), NOW).await.unwrap() {
            Completion::Verified { flow, identity } => {
                assert_eq!(flow.intent, Intent::Login);
                assert_eq!(flow.started_at, NOW.unix_timestamp());
                assert_eq!(identity.subject, "sub-1");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            complete(&store, &provider, "cb", p, Some(&binding), NOW).await.unwrap(),
            Completion::Refused(Refusal::FlowExpired),
            "a replayed state is refused"
        );
    }

    #[tokio::test]
    async fn a_flow_from_another_browser_is_refused_and_spent() {
        let (store, provider) = (MemoryStore::new(), FakeProvider::default());
        let (n, binding) = started(&store, &provider, login()).await;
        let (state, mut p) = params(&n);
        p.state = Some(&state);
        for cookie in [None, Some("someone-elses-cookie")] {
            let (n, _) = started(&store, &provider, login()).await;
            let state = format!("state-{n}");
            let p = CallbackParams { state: Some(&state), ..p };
            assert_eq!(
                complete(&store, &provider, "cb", p, cookie, NOW).await.unwrap(),
                Completion::Refused(Refusal::FlowOtherBrowser)
            );
            assert_eq!(
                complete(&store, &provider, "cb", p, cookie, NOW).await.unwrap(),
                Completion::Refused(Refusal::FlowExpired),
                "a refused flow cannot be retried"
            );
        }
        assert!(matches!(
            complete(&store, &provider, "cb", p, Some(&binding), NOW).await.unwrap(),
            Completion::Verified { .. }
        ));
    }

    #[tokio::test]
    async fn upstream_errors_missing_codes_and_bad_answers_are_refused() {
        let (store, provider) = (MemoryStore::new(), FakeProvider::default());
        for (params_error, code, expected) in [
            (Some("access_denied"), None, Refusal::UpstreamError("access_denied".into())),
            (None, None, Refusal::UpstreamResponseInvalid),
        ] {
            let (n, binding) = started(&store, &provider, login()).await;
            let state = format!("state-{n}");
            let p = CallbackParams { state: Some(&state), code, error: params_error, iss: None };
            assert_eq!(
                complete(&store, &provider, "cb", p, Some(&binding), NOW).await.unwrap(),
                Completion::Refused(expected)
            );
        }
        let failing = FakeProvider { fail_finish: Some("nonce"), ..Default::default() };
        let (n, binding) = started(&store, &failing, login()).await;
        let (state, mut p) = params(&n);
        p.state = Some(&state);
        assert_eq!(
            complete(&store, &failing, "cb", p, Some(&binding), NOW).await.unwrap(),
            Completion::Refused(Refusal::UpstreamResponseInvalid)
        );
        let long = "x".repeat(MAX_STATE_LEN + 1);
        let p = CallbackParams { state: Some(&long), ..p };
        assert_eq!(
            complete(&store, &provider, "cb", p, None, NOW).await.unwrap(),
            Completion::Refused(Refusal::FlowExpired)
        );
    }

    #[tokio::test]
    async fn the_flow_remembers_its_initiator_and_asks_by_intent() {
        let (store, provider) = (MemoryStore::new(), FakeProvider::default());
        let admin =
            Initiator { account_id: crate::ids::AccountId::new(), user_id: UserId::new(), session_id: "sid".into() };
        let request = StartRequest {
            intent: Intent::Link,
            initiator: Some(admin.clone()),
            return_to: "/x".into(),
            fresh: false,
            invite_digest: None,
        };
        let (n, binding) = started(&store, &provider, request).await;
        assert_eq!(provider.asked.lock().unwrap().as_slice(), &[Ask::FreshLogin]);
        let (state, mut p) = params(&n);
        p.state = Some(&state);
        let Completion::Verified { flow, .. } =
            complete(&store, &provider, "cb", p, Some(&binding), NOW).await.unwrap()
        else {
            panic!("verified")
        };
        assert_eq!((flow.account_id, flow.user_id), (Some(admin.account_id), Some(admin.user_id)));
        assert_eq!(flow.initiating_sid.as_deref(), Some("sid"));
        assert_eq!(flow.return_to, "/x");
        assert_eq!(flow.fresh_after(), Some(NOW.unix_timestamp()));
    }

    #[tokio::test]
    async fn an_invite_flow_asks_for_a_fresh_sign_in_and_carries_only_the_digest() {
        let (store, provider) = (MemoryStore::new(), FakeProvider::default());
        let request = StartRequest {
            intent: Intent::AcceptInvite,
            initiator: None,
            return_to: "/".into(),
            fresh: false,
            invite_digest: Some(digest("invite-token")),
        };
        let (n, binding) = started(&store, &provider, request).await;
        assert_eq!(provider.asked.lock().unwrap().as_slice(), &[Ask::FreshLogin]);
        let (state, mut p) = params(&n);
        p.state = Some(&state);
        let Completion::Verified { flow, .. } =
            complete(&store, &provider, "cb", p, Some(&binding), NOW).await.unwrap()
        else {
            panic!("verified")
        };
        assert_eq!(flow.invite_digest, Some(digest("invite-token")));
        assert_eq!(flow.fresh_after(), Some(NOW.unix_timestamp()), "a stale upstream session cannot answer");
    }

    #[tokio::test]
    async fn a_logout_token_is_accepted_once() {
        let (store, provider) = (MemoryStore::new(), FakeProvider::default());
        assert!(accept_logout(&store, &provider, "good", NOW).await.unwrap().is_some());
        assert!(accept_logout(&store, &provider, "good", NOW).await.unwrap().is_none(), "a replayed jti is refused");
        assert!(accept_logout(&store, &provider, "forged", NOW).await.unwrap().is_none());
    }
}
