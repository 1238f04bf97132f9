//! The one-time flow state of an upstream sign-in and the pure rules around it: which
//! intents exist and how each asks the provider, where the flow may return to, how it is
//! bound to the browser that started it, and why a flow is refused.

use serde::{Deserialize, Serialize};
use time::Duration;

use crate::ids::{AccountId, UserId};
use crate::ratelimit::RateLimit;
use crate::secret::{digest, digest_matches};
use crate::upstream::{Ask, FlowSecrets, UpstreamError};

/// How long a flow (and a pending confirmation made from it) lives.
pub const FLOW_TTL_SECS: u64 = 600;
/// Flows one client address may start per minute (each lives ten minutes).
pub const FLOWS_PER_IP: RateLimit = RateLimit { name: "fed-flow-ip", max: 120, window: Duration::minutes(1) };

/// Why a person went to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    /// Sign in to Ponte with the external ID.
    Login,
    /// An admin connects an existing external ID to their user.
    Link,
    /// An admin creates an external ID at the provider and connects it.
    Register,
    /// The invitee of a collaboration invite proves, just now, who they are upstream.
    /// Ponte starts it itself from the invite page; `?intent=` never names it.
    AcceptInvite,
}

impl Intent {
    /// The `intent` query value; absent means `login`, anything unknown is `None`.
    pub fn parse(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("login") => Some(Self::Login),
            Some("link") => Some(Self::Link),
            Some("register") => Some(Self::Register),
            Some(_) => None,
        }
    }

    /// How to ask the provider. Link and register always force a fresh upstream sign-in,
    /// so a stale upstream session in this browser never answers for someone else; a
    /// login does when the application asked for one (`fresh`).
    pub fn ask(self, fresh: bool) -> Ask {
        match self {
            Self::Login if fresh => Ask::FreshLogin,
            Self::Login => Ask::Login,
            Self::Link | Self::AcceptInvite => Ask::FreshLogin,
            Self::Register => Ask::Create,
        }
    }
}

/// The signed-in admin who starts a link or register flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Initiator {
    /// The admin's account.
    pub account_id: AccountId,
    /// The admin.
    pub user_id: UserId,
    /// The Ponte session that started the flow; only it may finish it.
    pub session_id: String,
}

/// A flow in progress, kept one-time in the session store under [`flow_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    /// The configured provider id.
    pub provider: String,
    /// Why the person went upstream.
    pub intent: Intent,
    /// Nonce and PKCE verifier.
    pub secrets: FlowSecrets,
    /// The initiator's account (link and register).
    pub account_id: Option<AccountId>,
    /// The initiator (link and register).
    pub user_id: Option<UserId>,
    /// The initiator's session (link and register).
    pub initiating_sid: Option<String>,
    /// Digest of the browser-binding cookie.
    pub binding: String,
    /// Where to go afterwards (checked by [`check_return_to`]).
    pub return_to: String,
    /// Unix seconds at the start.
    pub started_at: i64,
    /// The sign-in must be fresh upstream (an application asked for prompt=login or
    /// max_age), so a silent upstream session cannot stand in for it.
    #[serde(default)]
    pub fresh: bool,
    /// Digest of the collaboration invite's token ([`Intent::AcceptInvite`]); never the
    /// token itself.
    #[serde(default)]
    pub invite_digest: Option<String>,
}

impl Flow {
    /// The moment the upstream sign-in must not predate, if the flow demands a fresh one.
    pub fn fresh_after(&self) -> Option<i64> {
        (self.intent != Intent::Login || self.fresh).then_some(self.started_at)
    }

    /// Whether the browser presents the binding cookie this flow was started with.
    pub fn bound_to(&self, binding_cookie: Option<&str>) -> bool {
        binding_matches(&self.binding, binding_cookie)
    }
}

/// Whether `cookie` is the value whose digest is `expected_digest` (constant time).
pub fn binding_matches(expected_digest: &str, cookie: Option<&str>) -> bool {
    cookie.is_some_and(|c| digest_matches(c, expected_digest))
}

/// Key of a flow in the session store: only the digest of the state value is stored.
pub fn flow_key(state_param: &str) -> String {
    format!("fed:{}", digest(state_param))
}

/// The longest `state` value a callback may carry.
pub const MAX_STATE_LEN: usize = 128;

/// `return_to` may only point back into Ponte: a path, never another origin.
pub fn check_return_to(value: Option<&str>) -> Option<String> {
    match value {
        None | Some("") => Some("/".into()),
        Some(v)
            if v.len() <= 512
                && v.starts_with('/')
                && !v.starts_with("//")
                && !v.starts_with("/\\")
                && !v.chars().any(|c| c.is_control() || c == '\\') =>
        {
            Some(v.to_owned())
        }
        Some(_) => None,
    }
}

/// Why a federation or linking step stopped. Each variant is one page with one stable
/// code ([`Refusal::code`]); nothing was linked or signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No provider is configured under that id.
    UnknownProvider,
    /// A parameter or form action is not one we know.
    InvalidRequest,
    /// `return_to` points outside Ponte.
    InvalidReturnTo,
    /// Linking needs a Ponte session first.
    SignInFirst,
    /// Only an owner or admin may connect an ID.
    LinkNotAllowed,
    /// The user or its account is disabled.
    UserDisabled,
    /// The flow or confirmation expired, was used already, or was voided.
    FlowExpired,
    /// Another browser or session started it.
    FlowOtherBrowser,
    /// The provider answered with an OAuth error; holds its code, made safe to show.
    UpstreamError(String),
    /// The provider could not be reached.
    ProviderUnreachable,
    /// The provider's answer did not pass validation.
    UpstreamResponseInvalid,
    /// The upstream identity belongs to another Ponte user.
    IdentityLinkedElsewhere,
    /// The user already has an identity at this provider.
    ProviderTaken,
    /// No Ponte user is linked to the upstream identity.
    NotLinked,
    /// Too many proof attempts.
    TooManyAttempts,
}

impl Refusal {
    /// The stable machine code shown on the page.
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnknownProvider => "unknown_provider",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidReturnTo => "invalid_return_to",
            Self::SignInFirst => "sign_in_first",
            Self::LinkNotAllowed => "link_not_allowed",
            Self::UserDisabled => "user_disabled",
            Self::FlowExpired => "flow_expired",
            Self::FlowOtherBrowser => "flow_other_browser",
            Self::UpstreamError(_) => "upstream_error",
            Self::ProviderUnreachable => "provider_unreachable",
            Self::UpstreamResponseInvalid => "upstream_response_invalid",
            Self::IdentityLinkedElsewhere => "identity_linked_elsewhere",
            Self::ProviderTaken => "provider_taken",
            Self::NotLinked => "not_linked",
            Self::TooManyAttempts => "too_many_attempts",
        }
    }

    /// The refusal for a provider's OAuth `error`, keeping only a short safe code of it.
    pub fn upstream_error(error: &str) -> Self {
        Self::UpstreamError(error.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect())
    }
}

impl From<&UpstreamError> for Refusal {
    fn from(e: &UpstreamError) -> Self {
        match e {
            UpstreamError::Unreachable(_) | UpstreamError::Config(_) => Self::ProviderUnreachable,
            UpstreamError::Returned { error } => Self::upstream_error(error),
            UpstreamError::Invalid(_) => Self::UpstreamResponseInvalid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_inside_ponte() {
        assert_eq!(check_return_to(None).as_deref(), Some("/"));
        assert_eq!(check_return_to(Some("")).as_deref(), Some("/"));
        assert_eq!(
            check_return_to(Some("/oauth2/authorize/continue?authz=x")).as_deref(),
            Some("/oauth2/authorize/continue?authz=x")
        );
        for bad in
            ["https://evil.example/", "//evil.example", "/\\evil.example", "javascript:alert(1)", "/a\nb", "evil"]
        {
            assert!(check_return_to(Some(bad)).is_none(), "{bad:?}");
        }
        assert!(check_return_to(Some(&format!("/{}", "a".repeat(512)))).is_none(), "bounded length");
    }

    #[test]
    fn intents_map_to_how_the_provider_is_asked() {
        assert_eq!(Intent::parse(None), Some(Intent::Login));
        assert_eq!(Intent::parse(Some("link")), Some(Intent::Link));
        assert_eq!(Intent::parse(Some("register")), Some(Intent::Register));
        assert_eq!(Intent::parse(Some("admin")), None);
        assert_eq!(Intent::parse(Some("accept_invite")), None, "only the invite page starts it");
        assert_eq!(Intent::AcceptInvite.ask(false), Ask::FreshLogin, "a stale upstream session never accepts");
        assert_eq!(Intent::Login.ask(false), Ask::Login);
        assert_eq!(Intent::Login.ask(true), Ask::FreshLogin, "an application asked for a fresh sign-in");
        assert_eq!(Intent::Link.ask(false), Ask::FreshLogin, "a stale upstream session never links");
        assert_eq!(Intent::Register.ask(false), Ask::Create);
    }

    #[test]
    fn only_link_register_and_fresh_logins_demand_a_fresh_upstream_sign_in() {
        let flow = |intent, fresh| Flow {
            provider: "up".into(),
            intent,
            secrets: FlowSecrets { nonce: "n".into(), pkce_verifier: "v".into() },
            account_id: None,
            user_id: None,
            initiating_sid: None,
            binding: digest("cookie"),
            return_to: "/".into(),
            started_at: 1000,
            fresh,
            invite_digest: None,
        };
        assert_eq!(flow(Intent::Login, false).fresh_after(), None);
        assert_eq!(flow(Intent::Login, true).fresh_after(), Some(1000));
        assert_eq!(flow(Intent::Link, false).fresh_after(), Some(1000));
        assert_eq!(flow(Intent::Register, false).fresh_after(), Some(1000));
        assert_eq!(flow(Intent::AcceptInvite, false).fresh_after(), Some(1000), "an invite is accepted just now");
        assert!(flow(Intent::Login, false).bound_to(Some("cookie")));
        assert!(!flow(Intent::Login, false).bound_to(Some("other")));
        assert!(!flow(Intent::Login, false).bound_to(None));
    }

    #[test]
    fn upstream_failures_become_their_own_refusals() {
        assert_eq!(Refusal::from(&UpstreamError::Unreachable("x".into())), Refusal::ProviderUnreachable);
        assert_eq!(Refusal::from(&UpstreamError::Config("x".into())), Refusal::ProviderUnreachable);
        assert_eq!(Refusal::from(&UpstreamError::Invalid("x".into())), Refusal::UpstreamResponseInvalid);
        assert_eq!(
            Refusal::from(&UpstreamError::Returned { error: "access_denied<script>".into() }),
            Refusal::UpstreamError("access_deniedscript".into()),
            "only a safe code of the provider's error is kept"
        );
        assert_eq!(Refusal::upstream_error("x").code(), "upstream_error");
    }
}
