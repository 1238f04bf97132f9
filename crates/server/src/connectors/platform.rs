//! The invoicing platform, as Ponte needs it: find or create a company's platform
//! account, link a company to one, register a collaborator invite and activate the
//! integration. The wire contract (paths, JSON, errors) is the README's "invoicing-platform
//! connector contract"; [`HttpPlatform`] implements it.
//!
//! Every call carries the caller's idempotency key (a job id), so a job that runs twice
//! after a crash has one effect. Errors say whether a retry can help
//! ([`PlatformError::retryable`]); the job queue does the retrying, never this module,
//! except for the one retry after a 401 with a fresh token.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use oauth2::basic::{BasicClient, BasicErrorResponseType};
use oauth2::{ClientId, ClientSecret, EndpointNotSet, EndpointSet, RequestTokenError, Scope, TokenResponse, TokenUrl};
use ponte_identity::jobs::JobFailure;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use url::Url;

use ponte_linking::integration::credentials::{CheckOutcome, PlatformCredentials};

use crate::config::PlatformConfig;

/// A company's account on the platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformAccount {
    /// The platform's id (`pa_…`).
    pub id: String,
    /// The account's legal name.
    pub legal_name: String,
    /// The VAT number the account is registered under.
    pub vat_number: String,
    /// The owner's email, masked by the platform (`a***@example.com`).
    #[serde(default)]
    pub owner_email: Option<String>,
    /// When the account was created (RFC 3339).
    #[serde(default)]
    pub created_at: Option<String>,
}

impl PlatformAccount {
    /// What the integration keeps of it: the id, the name and the masked owner.
    pub fn summary(&self) -> ponte_linking::integration::PlatformAccount {
        ponte_linking::integration::PlatformAccount {
            id: self.id.clone(),
            legal_name: self.legal_name.clone(),
            owner_email: self.owner_email.clone(),
        }
    }
}

/// A collaborator invite as the platform recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collaborator {
    /// The invited address.
    pub email: String,
    /// `invited` or `active`.
    pub status: String,
    /// Whether the platform mailed the invite itself (then Ponte does not).
    pub platform_sent_invite: bool,
}

/// The integration's activation for a company.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activation {
    /// The platform's id (`act_…`).
    pub id: String,
    /// `active` once done.
    pub status: String,
    /// When it became active (RFC 3339).
    #[serde(default)]
    pub activated_at: Option<String>,
}

/// Why a platform call failed. Messages never carry credentials or tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The platform could not be reached, timed out, was overloaded or answered nonsense:
    /// worth retrying later.
    #[error("invoicing platform unavailable: {0}")]
    Unavailable(String),
    /// The platform refused the request; retrying the same request cannot change that.
    #[error("invoicing platform refused the request ({status} {code}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The platform's machine code (`account_exists`, …).
        code: String,
        /// The platform's explanation.
        message: String,
    },
    /// The platform refused Ponte's credentials even with a fresh token: a configuration
    /// problem.
    #[error("invoicing platform refused Ponte's credentials (check platform.client_id and platform.client_secret)")]
    Unauthorized,
    /// No `platform.base_url` is configured.
    #[error("the invoicing platform is not configured (platform.base_url)")]
    NotConfigured,
}

impl PlatformError {
    /// Whether trying again later may succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, PlatformError::Unavailable(_))
    }
}

impl From<PlatformError> for JobFailure {
    fn from(e: PlatformError) -> Self {
        if e.retryable() { JobFailure::Retry(e.to_string()) } else { JobFailure::Permanent(e.to_string()) }
    }
}

/// What Ponte needs from the invoicing platform. `key` is the idempotency key of the call
/// (the job id): the same key means the same request, with one effect.
#[async_trait]
pub trait Platform: Send + Sync + std::fmt::Debug {
    /// The account registered under `vat_number`, if there is one.
    async fn find_account(&self, vat_number: &str, key: &str) -> Result<Option<PlatformAccount>, PlatformError>;
    /// Creates an account for `company` (the Company JSON of the REST API).
    async fn create_account(&self, company: &Value, key: &str) -> Result<PlatformAccount, PlatformError>;
    /// Links `company` to the existing account `account_id` ("Continue").
    async fn link_account(
        &self,
        account_id: &str,
        company: &Value,
        key: &str,
    ) -> Result<PlatformAccount, PlatformError>;
    /// Registers the invite `reference` (Ponte's invite id) of `email` as a collaborator.
    async fn register_collaborator(
        &self,
        account_id: &str,
        email: &str,
        reference: &str,
        key: &str,
    ) -> Result<Collaborator, PlatformError>;
    /// Activates the integration `kind` (`digital_invoice`) for `vat_number`; activating
    /// again answers the existing activation.
    async fn activate(
        &self,
        account_id: &str,
        kind: &str,
        vat_number: &str,
        collaborator_email: &str,
        key: &str,
    ) -> Result<Activation, PlatformError>;
    /// Checks a company's `credentials` (its platform login, API key or technical key)
    /// for `vat_number` (contract operation 6).
    async fn check_credentials(
        &self,
        vat_number: &str,
        credentials: &PlatformCredentials,
        key: &str,
    ) -> Result<CheckOutcome, PlatformError>;
    /// Issues an API key of the platform account `account_id` for `vat_number` (contract
    /// operation 7).
    async fn issue_api_key(&self, account_id: &str, vat_number: &str, key: &str) -> Result<String, PlatformError>;
}

type OAuthClient = BasicClient<EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

/// The lifetime assumed for a token whose response has no `expires_in`.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);
/// A token is renewed this long before it expires, so it does not expire in flight.
const TOKEN_MARGIN: Duration = Duration::from_secs(30);
/// The longest platform message kept in an error (it ends up in a job's `last_error`).
const MAX_MESSAGE_CHARS: usize = 200;

/// A bearer token and when to stop using it.
struct CachedToken {
    value: String,
    renew_at: Instant,
}

/// The platform over HTTP, authenticated with OAuth2 client credentials.
pub struct HttpPlatform {
    base: Url,
    oauth: OAuthClient,
    scopes: Vec<String>,
    http: reqwest::Client,
    timeout: Duration,
    // A tokio mutex: concurrent calls wait for the one token request in flight.
    token: tokio::sync::Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for HttpPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPlatform")
            .field("base_url", &self.base.as_str())
            .field("client_id", &self.oauth.client_id().as_str())
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// What one authenticated request came back with.
enum Answer {
    /// A 2xx body.
    Body(Vec<u8>),
    /// A 401: the token was not accepted.
    Unauthorized,
}

impl HttpPlatform {
    /// The connector `[platform]` asks for, or `None` when `platform.base_url` is unset.
    /// `http` should be [`ponte_identity::upstream::http_client`] (no redirects).
    pub fn from_config(config: &PlatformConfig, http: reqwest::Client) -> Result<Option<Self>, String> {
        let Some(base) = config.base_url.clone() else { return Ok(None) };
        let client_id = config.client_id.clone().filter(|s| !s.is_empty()).ok_or("platform.client_id is required")?;
        let secret = config
            .client_secret
            .as_ref()
            .filter(|s| !s.expose().is_empty())
            .ok_or("platform.client_secret is required")?;
        let token_url = config.token_url();
        let token_url = TokenUrl::from_url(token_url.ok_or("platform.token_url is not a valid URL")?);
        // client_secret_basic is the crate's default client authentication.
        let oauth = BasicClient::new(ClientId::new(client_id))
            .set_client_secret(ClientSecret::new(secret.expose().to_owned()))
            .set_token_uri(token_url);
        let scopes = config.scope.as_deref().unwrap_or_default().split_whitespace().map(str::to_owned).collect();
        Ok(Some(Self {
            base,
            oauth,
            scopes,
            http,
            timeout: Duration::from_secs(config.timeout_secs),
            token: tokio::sync::Mutex::new(None),
        }))
    }

    /// `base_url` with `segments` appended, each percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// A token that is still good, fetching one if needed.
    async fn token(&self) -> Result<String, PlatformError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.value.clone());
        }
        let mut request = self.oauth.exchange_client_credentials();
        for scope in &self.scopes {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let response = tokio::time::timeout(self.timeout, request.request_async(&self.http))
            .await
            .map_err(|_| PlatformError::Unavailable(format!("token endpoint timed out after {:?}", self.timeout)))?
            .map_err(token_error)?;
        let lifetime = response.expires_in().unwrap_or(DEFAULT_TOKEN_LIFETIME);
        let value = response.access_token().secret().clone();
        *cached = Some(CachedToken {
            value: value.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(TOKEN_MARGIN),
        });
        Ok(value)
    }

    /// Drops `token` from the cache, unless another call already replaced it.
    async fn forget(&self, token: &str) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|t| t.value == token) {
            *cached = None;
        }
    }

    /// One request with `token`, its status mapped by the contract.
    async fn send(
        &self,
        method: &Method,
        url: &Url,
        body: Option<&Value>,
        key: &str,
        token: &str,
    ) -> Result<Answer, PlatformError> {
        let mut request = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .header(reqwest::header::ACCEPT, "application/json")
            .timeout(self.timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| unreachable(method, url, e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| unreachable(method, url, e))?;
        if status.is_success() {
            return Ok(Answer::Body(bytes.to_vec()));
        }
        match status {
            StatusCode::UNAUTHORIZED => Ok(Answer::Unauthorized),
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                Err(PlatformError::Unavailable(format!("{method} {} answered {status}", url.path())))
            }
            s if s.is_client_error() => Err(rejected(s, &bytes)),
            s => Err(PlatformError::Unavailable(format!("{method} {} answered {s}", url.path()))),
        }
    }

    /// A call: the cached token, and on a 401 one retry with a fresh one.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<Value>,
        key: &str,
    ) -> Result<T, PlatformError> {
        let token = self.token().await?;
        let mut answer = self.send(&method, &url, body.as_ref(), key, &token).await?;
        if let Answer::Unauthorized = answer {
            self.forget(&token).await;
            let token = self.token().await?;
            answer = self.send(&method, &url, body.as_ref(), key, &token).await?;
        }
        match answer {
            Answer::Body(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                PlatformError::Unavailable(format!("{method} {} answered unreadable JSON: {e}", url.path()))
            }),
            Answer::Unauthorized => Err(PlatformError::Unauthorized),
        }
    }
}

/// A transport failure, told without the URL (its query holds a VAT number; the path is enough).
fn unreachable(method: &Method, url: &Url, e: reqwest::Error) -> PlatformError {
    use std::error::Error;
    let e = e.without_url();
    let mut why = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        why.push_str(": ");
        why.push_str(&s.to_string());
        source = s.source();
    }
    PlatformError::Unavailable(format!("{method} {}: {why}", url.path()))
}

/// A permanent refusal, with the platform's code and message when its body has them.
fn rejected(status: StatusCode, body: &[u8]) -> PlatformError {
    #[derive(Deserialize)]
    struct Problem {
        error: Option<String>,
        message: Option<String>,
    }
    let problem = serde_json::from_slice::<Problem>(body).ok();
    let (code, message) = problem.map(|p| (p.error, p.message)).unwrap_or_default();
    PlatformError::Rejected {
        status: status.as_u16(),
        code: code.unwrap_or_else(|| format!("http_{}", status.as_u16())),
        message: message.unwrap_or_default().chars().take(MAX_MESSAGE_CHARS).collect(),
    }
}

/// The token endpoint's failure. Bad credentials are [`PlatformError::Unauthorized`];
/// other OAuth errors are the platform refusing Ponte's configuration; anything else
/// (unreachable, a 5xx, an unreadable answer) may pass.
fn token_error<E: std::error::Error + 'static>(
    e: RequestTokenError<E, oauth2::StandardErrorResponse<BasicErrorResponseType>>,
) -> PlatformError {
    match e {
        RequestTokenError::ServerResponse(r) => match r.error() {
            BasicErrorResponseType::InvalidClient | BasicErrorResponseType::UnauthorizedClient => {
                PlatformError::Unauthorized
            }
            BasicErrorResponseType::Extension(code) if code == "temporarily_unavailable" => {
                PlatformError::Unavailable("token endpoint: temporarily_unavailable".into())
            }
            other => PlatformError::Rejected {
                status: 400,
                code: other.to_string(),
                message: r.error_description().cloned().unwrap_or_default().chars().take(MAX_MESSAGE_CHARS).collect(),
            },
        },
        RequestTokenError::Request(e) => PlatformError::Unavailable(format!("token endpoint: {e}")),
        // Not the body: a 2xx token response that does not parse may still hold a token.
        RequestTokenError::Parse(_, _) => PlatformError::Unavailable("token endpoint: unreadable answer".into()),
        RequestTokenError::Other(why) => PlatformError::Unavailable(format!("token endpoint: {why}")),
    }
}

#[derive(Deserialize)]
struct Accounts {
    accounts: Vec<PlatformAccount>,
}

#[derive(Deserialize)]
struct OneAccount {
    account: PlatformAccount,
}

#[derive(Deserialize)]
struct OneCollaborator {
    collaborator: Collaborator,
}

#[derive(Deserialize)]
struct OneActivation {
    activation: Activation,
}

#[derive(Deserialize)]
struct Checked {
    outcome: CheckOutcome,
}

#[derive(Deserialize)]
struct IssuedKey {
    api_key: String,
}

#[async_trait]
impl Platform for HttpPlatform {
    async fn find_account(&self, vat_number: &str, key: &str) -> Result<Option<PlatformAccount>, PlatformError> {
        let mut url = self.url(&["v1", "accounts"]);
        url.query_pairs_mut().append_pair("vat_number", vat_number);
        let found: Accounts = self.call(Method::GET, url, None, key).await?;
        Ok(found.accounts.into_iter().next())
    }

    async fn create_account(&self, company: &Value, key: &str) -> Result<PlatformAccount, PlatformError> {
        let url = self.url(&["v1", "accounts"]);
        let created: OneAccount = self.call(Method::POST, url, Some(json!({ "company": company })), key).await?;
        Ok(created.account)
    }

    async fn link_account(
        &self,
        account_id: &str,
        company: &Value,
        key: &str,
    ) -> Result<PlatformAccount, PlatformError> {
        let url = self.url(&["v1", "accounts", account_id, "companies"]);
        let linked: OneAccount = self.call(Method::POST, url, Some(json!({ "company": company })), key).await?;
        Ok(linked.account)
    }

    async fn register_collaborator(
        &self,
        account_id: &str,
        email: &str,
        reference: &str,
        key: &str,
    ) -> Result<Collaborator, PlatformError> {
        let url = self.url(&["v1", "accounts", account_id, "collaborators"]);
        let body = json!({ "email": email, "reference": reference });
        let registered: OneCollaborator = self.call(Method::POST, url, Some(body), key).await?;
        Ok(registered.collaborator)
    }

    async fn activate(
        &self,
        account_id: &str,
        kind: &str,
        vat_number: &str,
        collaborator_email: &str,
        key: &str,
    ) -> Result<Activation, PlatformError> {
        let url = self.url(&["v1", "accounts", account_id, "integrations", kind, "activations"]);
        let body = json!({ "vat_number": vat_number, "collaborator_email": collaborator_email });
        let activated: OneActivation = self.call(Method::POST, url, Some(body), key).await?;
        Ok(activated.activation)
    }

    async fn check_credentials(
        &self,
        vat_number: &str,
        credentials: &PlatformCredentials,
        key: &str,
    ) -> Result<CheckOutcome, PlatformError> {
        let url = self.url(&["v1", "credentials", "check"]);
        let body = json!({ "vat_number": vat_number, "credentials": credentials });
        let checked: Checked = self.call(Method::POST, url, Some(body), key).await?;
        Ok(checked.outcome)
    }

    async fn issue_api_key(&self, account_id: &str, vat_number: &str, key: &str) -> Result<String, PlatformError> {
        let url = self.url(&["v1", "accounts", account_id, "api-keys"]);
        let issued: IssuedKey = self.call(Method::POST, url, Some(json!({ "vat_number": vat_number })), key).await?;
        Ok(issued.api_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_retried_by_the_queue() {
        let retry: JobFailure = PlatformError::Unavailable("503".into()).into();
        assert!(matches!(retry, JobFailure::Retry(_)));
        for e in [
            PlatformError::Rejected { status: 409, code: "account_exists".into(), message: String::new() },
            PlatformError::Unauthorized,
            PlatformError::NotConfigured,
        ] {
            assert!(!e.retryable());
            assert!(matches!(JobFailure::from(e), JobFailure::Permanent(_)));
        }
    }

    #[test]
    fn a_refusal_keeps_the_platform_code_or_names_the_status() {
        let e = rejected(StatusCode::CONFLICT, br#"{"error":"account_exists","message":"VAT taken"}"#);
        assert_eq!(
            e,
            PlatformError::Rejected { status: 409, code: "account_exists".into(), message: "VAT taken".into() }
        );
        let e = rejected(StatusCode::NOT_FOUND, b"<html>not found</html>");
        assert!(matches!(e, PlatformError::Rejected { status: 404, ref code, .. } if code == "http_404"));
    }

    #[test]
    fn path_segments_are_encoded_under_the_base_path() {
        let config = PlatformConfig {
            base_url: Some(Url::parse("https://platform.example/api/").unwrap()),
            client_id: Some("ponte".into()),
            client_secret: Some("s".into()),
            ..PlatformConfig::default()
        };
        let p = HttpPlatform::from_config(&config, reqwest::Client::new()).unwrap().unwrap();
        assert_eq!(
            p.url(&["v1", "accounts", "pa_1/../x"]).as_str(),
            "https://platform.example/api/v1/accounts/pa_1%2F..%2Fx"
        );
        assert!(!format!("{p:?}").contains("\"s\""));
    }
}
