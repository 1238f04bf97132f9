//! A company's credentials at the invoicing platform: typed (username and password, an
//! API key, a technical key), sealed at rest under the master key, never shown back.
//! "Check credentials" asks the platform and records a typed outcome and when; a check the
//! platform could not answer is scheduled again as a durable job. "Obtain API key"
//! exchanges the company's platform account for a key, kept as its credentials.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::{IntegrationKind, Integrations};
use crate::audit::Actor;
use crate::ids::{AccountId, CompanyId};
use crate::{Error, Result};

/// The longest credential field accepted.
const MAX_FIELD_CHARS: usize = 512;
/// How many times a check the platform could not answer is scheduled again.
pub const MAX_CHECK_ATTEMPTS: u32 = 10;

/// Credentials at the platform. `Debug` never shows a secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlatformCredentials {
    /// The platform user's name and password.
    UsernamePassword {
        /// The platform user name.
        username: String,
        /// Its password.
        password: String,
    },
    /// An API key the platform issued.
    ApiKey {
        /// The key.
        api_key: String,
    },
    /// A technical key (machine credentials) from the platform.
    TechnicalKey {
        /// The key.
        key: String,
    },
}

impl std::fmt::Debug for PlatformCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not even the user name: it is half of a credential.
        write!(f, "PlatformCredentials({}, ***)", self.credential_type().as_str())
    }
}

/// The kind of [`PlatformCredentials`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialType {
    /// `username_password`.
    UsernamePassword,
    /// `api_key`.
    ApiKey,
    /// `technical_key`.
    TechnicalKey,
}

impl CredentialType {
    const ALL: [Self; 3] = [Self::UsernamePassword, Self::ApiKey, Self::TechnicalKey];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UsernamePassword => "username_password",
            Self::ApiKey => "api_key",
            Self::TechnicalKey => "technical_key",
        }
    }

    /// Parses the spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The fields of a credentials form, before they are checked.
#[derive(Default)]
pub struct CredentialFields<'a> {
    /// `username_password`, `api_key` or `technical_key`.
    pub credential_type: &'a str,
    /// For `username_password`.
    pub username: Option<&'a str>,
    /// For `username_password`.
    pub password: Option<&'a str>,
    /// For `api_key`.
    pub api_key: Option<&'a str>,
    /// For `technical_key`.
    pub key: Option<&'a str>,
}

impl std::fmt::Debug for CredentialFields<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialFields").field("credential_type", &self.credential_type).finish_non_exhaustive()
    }
}

fn required(field: &'static str, value: Option<&str>) -> Result<String> {
    let value = value.unwrap_or_default();
    let invalid = |message: &str| Error::Invalid { field, message: message.into() };
    if value.trim().is_empty() {
        return Err(invalid("is required"));
    }
    if value.chars().count() > MAX_FIELD_CHARS {
        return Err(invalid("is too long (at most 512 characters)"));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters"));
    }
    Ok(value.to_owned())
}

impl PlatformCredentials {
    /// Checks a form: the type must be known and its fields present and sane; a field of
    /// another type is refused (it would be silently dropped otherwise).
    pub fn parse(f: &CredentialFields<'_>) -> Result<Self> {
        let kind = CredentialType::parse(f.credential_type).ok_or_else(|| Error::Invalid {
            field: "type",
            message: "must be username_password, api_key or technical_key".into(),
        })?;
        let stray =
            |field: &'static str| Error::Invalid { field, message: format!("does not belong to {}", kind.as_str()) };
        let allowed: &[&str] = match kind {
            CredentialType::UsernamePassword => &["username", "password"],
            CredentialType::ApiKey => &["api_key"],
            CredentialType::TechnicalKey => &["key"],
        };
        for (name, value) in
            [("username", f.username), ("password", f.password), ("api_key", f.api_key), ("key", f.key)]
        {
            if value.is_some() && !allowed.contains(&name) {
                return Err(stray(name));
            }
        }
        Ok(match kind {
            CredentialType::UsernamePassword => Self::UsernamePassword {
                username: required("username", f.username)?,
                password: required("password", f.password)?,
            },
            CredentialType::ApiKey => Self::ApiKey { api_key: required("api_key", f.api_key)? },
            CredentialType::TechnicalKey => Self::TechnicalKey { key: required("key", f.key)? },
        })
    }

    /// Which kind these are.
    pub fn credential_type(&self) -> CredentialType {
        match self {
            Self::UsernamePassword { .. } => CredentialType::UsernamePassword,
            Self::ApiKey { .. } => CredentialType::ApiKey,
            Self::TechnicalKey { .. } => CredentialType::TechnicalKey,
        }
    }
}

/// What the platform said of the credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckOutcome {
    /// They work.
    Ok,
    /// The platform refused them.
    InvalidCredentials,
    /// They work, but the company has not delegated the platform user.
    DelegationMissing,
    /// The platform could not be asked; a check is scheduled.
    PlatformUnavailable,
}

impl CheckOutcome {
    const ALL: [Self; 4] = [Self::Ok, Self::InvalidCredentials, Self::DelegationMissing, Self::PlatformUnavailable];

    /// The stored and wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::InvalidCredentials => "invalid_credentials",
            Self::DelegationMissing => "delegation_missing",
            Self::PlatformUnavailable => "platform_unavailable",
        }
    }

    /// Parses the spelling.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// What may be shown of stored credentials: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsStatus {
    /// Their kind.
    pub credential_type: CredentialType,
    /// When they were last set.
    pub updated_at: OffsetDateTime,
    /// The latest check and when it ran.
    pub last_check: Option<(CheckOutcome, OffsetDateTime)>,
    /// When the scheduled check runs, while one is.
    pub next_check_at: Option<OffsetDateTime>,
}

/// The next check after an unanswered one: attempt `n` (from 1) waits a minute doubled
/// `n - 1` times, at most an hour; `None` once the attempts are spent.
pub fn next_check(now: OffsetDateTime, attempt: u32) -> Option<OffsetDateTime> {
    (attempt <= MAX_CHECK_ATTEMPTS).then(|| now + Duration::seconds((60i64 << (attempt - 1).min(6)).min(3600)))
}

/// Where credentials are kept, sealed.
#[async_trait]
pub trait CredentialStore: Send + Sync + std::fmt::Debug {
    /// Sets the company's credentials for `kind`, forgetting the last check; writes the
    /// audit entry `action` (`credentials.updated`, `credentials.api_key_issued`) with it.
    #[allow(clippy::too_many_arguments)]
    async fn put(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
        credentials: &PlatformCredentials,
        actor: &Actor,
        action: &str,
        now: OffsetDateTime,
    ) -> Result<CredentialsStatus>;
    /// The credentials, opened, with their status.
    async fn get(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
    ) -> Result<Option<(PlatformCredentials, CredentialsStatus)>>;
    /// Their status only.
    async fn status(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
    ) -> Result<Option<CredentialsStatus>>;
    /// Records a check's outcome (audit `credentials.checked`); with `retry`, schedules
    /// the `platform.check_credentials` job (attempt, when) in the same transaction.
    #[allow(clippy::too_many_arguments)]
    async fn record_check(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
        outcome: CheckOutcome,
        retry: Option<(u32, OffsetDateTime)>,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<CredentialsStatus>;
}

/// Why the platform did not answer a credentials call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformFailure {
    /// Not now: worth trying later.
    #[error("the invoicing platform is unavailable: {0}")]
    Unavailable(String),
    /// It refused the request.
    #[error("the invoicing platform refused: {0}")]
    Rejected(String),
}

/// The two credentials operations of the platform (contract operations 6 and 7).
#[async_trait]
pub trait CredentialsPlatform: Send + Sync + std::fmt::Debug {
    /// Checks `credentials` for `vat_number`; never answers `PlatformUnavailable` (that
    /// is `Err(Unavailable)`).
    async fn check_credentials(
        &self,
        vat_number: &str,
        credentials: &PlatformCredentials,
        key: &str,
    ) -> std::result::Result<CheckOutcome, PlatformFailure>;
    /// Issues an API key of the platform account `account_id` for `vat_number`.
    async fn issue_api_key(
        &self,
        account_id: &str,
        vat_number: &str,
        key: &str,
    ) -> std::result::Result<String, PlatformFailure>;
}

/// Why a credentials action stopped without asking the platform (or without an answer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsRefused {
    /// No credentials are stored to check.
    #[error("no credentials are stored for this integration")]
    Missing,
    /// An API key needs the company's platform account, which there is not yet.
    #[error("the integration has no platform account yet")]
    NoPlatformAccount,
    /// No such company in the account.
    #[error("no such company")]
    NoCompany,
    /// The platform did not answer (the API key was not issued).
    #[error(transparent)]
    Platform(#[from] PlatformFailure),
}

/// Which company's credentials, by whom, when.
#[derive(Debug, Clone)]
pub struct CredentialsTarget {
    /// The account.
    pub account: AccountId,
    /// The company.
    pub company: CompanyId,
    /// Its VAT number (what the platform knows it by).
    pub vat_number: String,
    /// The integration.
    pub kind: IntegrationKind,
    /// Who acts.
    pub actor: Actor,
    /// When.
    pub now: OffsetDateTime,
}

/// "Check credentials": asks the platform and records the outcome; when the platform
/// cannot answer, records `platform_unavailable` and schedules check number `attempt + 1`.
/// `key` is the idempotency key of the call.
pub async fn check(
    store: &dyn CredentialStore,
    platform: &dyn CredentialsPlatform,
    t: &CredentialsTarget,
    attempt: u32,
    key: &str,
) -> Result<std::result::Result<CredentialsStatus, CredentialsRefused>> {
    let Some((credentials, _)) = store.get(t.account, t.company, t.kind).await? else {
        return Ok(Err(CredentialsRefused::Missing));
    };
    let (outcome, retry) = match platform.check_credentials(&t.vat_number, &credentials, key).await {
        Ok(CheckOutcome::PlatformUnavailable) | Err(PlatformFailure::Unavailable(_)) => {
            let next = attempt + 1;
            (CheckOutcome::PlatformUnavailable, next_check(t.now, next).map(|at| (next, at)))
        }
        Ok(outcome) => (outcome, None),
        // A refusal of the request itself says the credentials do not work there.
        Err(PlatformFailure::Rejected(_)) => (CheckOutcome::InvalidCredentials, None),
    };
    let status = store.record_check(t.account, t.company, t.kind, outcome, retry, &t.actor, t.now).await?;
    Ok(Ok(status))
}

/// "Obtain API key": the platform issues one for the company's platform account; it is
/// stored sealed as the company's credentials and returned, once.
pub async fn issue_api_key(
    store: &dyn CredentialStore,
    integrations: &dyn Integrations,
    platform: &dyn CredentialsPlatform,
    t: &CredentialsTarget,
    key: &str,
) -> Result<std::result::Result<(String, CredentialsStatus), CredentialsRefused>> {
    let Some(integration) = integrations.get(t.account, t.company, t.kind).await? else {
        return Ok(Err(CredentialsRefused::NoCompany));
    };
    let Some(account) = integration.platform_account else {
        return Ok(Err(CredentialsRefused::NoPlatformAccount));
    };
    let api_key = match platform.issue_api_key(&account.id, &t.vat_number, key).await {
        Ok(k) => k,
        Err(failure) => return Ok(Err(failure.into())),
    };
    let credentials = PlatformCredentials::ApiKey { api_key: api_key.clone() };
    let status =
        store.put(t.account, t.company, t.kind, &credentials, &t.actor, "credentials.api_key_issued", t.now).await?;
    Ok(Ok((api_key, status)))
}

/// [`CredentialStore`] in the relational store (the same SQL on both engines).
pub mod sql {
    use std::sync::Arc;

    use async_trait::async_trait;
    use ponte_identity::clock::{from_unix, to_unix};
    use ponte_identity::db::Database;
    use ponte_identity::jobs::{NewJob, SqlJobs};
    use ponte_identity::seal::MasterKeys;
    use time::OffsetDateTime;

    use super::{CheckOutcome, CredentialStore, CredentialType, CredentialsStatus, PlatformCredentials};
    use crate::audit::{Actor, AuditEntry, sql::append as audit};
    use crate::ids::{AccountId, CompanyId};
    use crate::integration::{IntegrationKind, jobs};
    use crate::{Error, Result};

    /// Credentials sealed under the master key, in `integration_credentials`.
    #[derive(Debug, Clone)]
    pub struct SqlCredentials {
        db: Database,
        jobs: Arc<SqlJobs>,
        master: MasterKeys,
    }

    impl SqlCredentials {
        /// Credentials kept in `db`, sealed under `master`; scheduled checks go to `jobs`.
        pub fn new(db: Database, jobs: Arc<SqlJobs>, master: MasterKeys) -> Self {
            Self { db, jobs, master }
        }
    }

    /// The seal context: a sealed value opens only in its own row.
    pub fn seal_context(company: &str, kind: &str) -> String {
        format!("integration_credentials:{company}:{kind}")
    }

    type Row = (String, i64, Option<String>, Option<i64>, Option<i64>);
    const STATUS: &str = "credential_type, updated_at, last_outcome, checked_at, next_check_at";

    fn status(row: Row) -> Result<CredentialsStatus> {
        let corrupt =
            |what: &str| Error::Identity(ponte_identity::Error::Corrupt(format!("integration_credentials: {what}")));
        let credential_type = CredentialType::parse(&row.0).ok_or_else(|| corrupt("credential_type"))?;
        let last_check = match (row.2, row.3) {
            (Some(o), Some(at)) => {
                Some((CheckOutcome::parse(&o).ok_or_else(|| corrupt("last_outcome"))?, from_unix(at)))
            }
            _ => None,
        };
        Ok(CredentialsStatus {
            credential_type,
            updated_at: from_unix(row.1),
            last_check,
            next_check_at: row.4.map(from_unix),
        })
    }

    impl SqlCredentials {
        async fn status_row(
            &self,
            account: AccountId,
            company: CompanyId,
            kind: IntegrationKind,
        ) -> Result<Option<CredentialsStatus>> {
            let row: Option<Row> = sqlx::query_as(&format!(
                "SELECT {STATUS} FROM integration_credentials WHERE company_id = $1 AND kind = $2 AND account_id = $3"
            ))
            .bind(company.to_string())
            .bind(kind.as_str())
            .bind(account.to_string())
            .fetch_optional(self.db.pool())
            .await?;
            row.map(status).transpose()
        }
    }

    #[async_trait]
    impl CredentialStore for SqlCredentials {
        #[allow(clippy::too_many_arguments)]
        async fn put(
            &self,
            account: AccountId,
            company: CompanyId,
            kind: IntegrationKind,
            credentials: &PlatformCredentials,
            actor: &Actor,
            action: &str,
            now: OffsetDateTime,
        ) -> Result<CredentialsStatus> {
            let json = serde_json::to_vec(credentials)
                .map_err(|e| Error::Identity(ponte_identity::Error::Corrupt(e.to_string())))?;
            let sealed = self.master.seal(&json, &seal_context(&company.to_string(), kind.as_str()))?;
            let kind_of = credentials.credential_type().as_str();
            let mut tx = self.db.begin().await?;
            sqlx::query(
                "INSERT INTO integration_credentials (company_id, kind, account_id, credential_type, sealed, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (company_id, kind) DO UPDATE SET \
                 credential_type = excluded.credential_type, sealed = excluded.sealed, updated_at = excluded.updated_at, \
                 last_outcome = NULL, checked_at = NULL, next_check_at = NULL",
            )
            .bind(company.to_string())
            .bind(kind.as_str())
            .bind(account.to_string())
            .bind(kind_of)
            .bind(sealed)
            .bind(to_unix(now))
            .execute(&mut *tx)
            .await
            ?;
            let detail = serde_json::json!({ "kind": kind.as_str(), "type": kind_of }).to_string();
            audit(&mut *tx, &AuditEntry::for_company(account, company, actor, action, now).with_detail(detail)).await?;
            tx.commit().await?;
            Ok(CredentialsStatus {
                credential_type: credentials.credential_type(),
                updated_at: now,
                last_check: None,
                next_check_at: None,
            })
        }

        async fn get(
            &self,
            account: AccountId,
            company: CompanyId,
            kind: IntegrationKind,
        ) -> Result<Option<(PlatformCredentials, CredentialsStatus)>> {
            let row: Option<(String, i64, Option<String>, Option<i64>, Option<i64>, String)> = sqlx::query_as(&format!(
                "SELECT {STATUS}, sealed FROM integration_credentials WHERE company_id = $1 AND kind = $2 AND account_id = $3"
            ))
            .bind(company.to_string())
            .bind(kind.as_str())
            .bind(account.to_string())
            .fetch_optional(self.db.pool())
            .await
            ?;
            let Some((t, u, o, c, n, sealed)) = row else { return Ok(None) };
            let json = self.master.open(&sealed, &seal_context(&company.to_string(), kind.as_str()))?;
            let credentials = serde_json::from_slice(&json).map_err(|_| {
                Error::Identity(ponte_identity::Error::Corrupt("integration_credentials: unreadable".into()))
            })?;
            Ok(Some((credentials, status((t, u, o, c, n))?)))
        }

        async fn status(
            &self,
            account: AccountId,
            company: CompanyId,
            kind: IntegrationKind,
        ) -> Result<Option<CredentialsStatus>> {
            self.status_row(account, company, kind).await
        }

        #[allow(clippy::too_many_arguments)]
        async fn record_check(
            &self,
            account: AccountId,
            company: CompanyId,
            kind: IntegrationKind,
            outcome: CheckOutcome,
            retry: Option<(u32, OffsetDateTime)>,
            actor: &Actor,
            now: OffsetDateTime,
        ) -> Result<CredentialsStatus> {
            let mut tx = self.db.begin().await?;
            sqlx::query(
                "UPDATE integration_credentials SET last_outcome = $1, checked_at = $2, next_check_at = $3 \
                 WHERE company_id = $4 AND kind = $5 AND account_id = $6",
            )
            .bind(outcome.as_str())
            .bind(to_unix(now))
            .bind(retry.map(|(_, at)| to_unix(at)))
            .bind(company.to_string())
            .bind(kind.as_str())
            .bind(account.to_string())
            .execute(&mut *tx)
            .await?;
            if let Some((attempt, at)) = retry {
                let payload = serde_json::json!({
                    "account_id": account.to_string(),
                    "company_id": company.to_string(),
                    "kind": kind.as_str(),
                    "attempt": attempt,
                });
                let mut job = NewJob::new(jobs::CHECK_CREDENTIALS, payload).idempotency_key(format!(
                    "{}:{company}:{}:{}",
                    jobs::CHECK_CREDENTIALS,
                    kind.as_str(),
                    to_unix(now)
                ));
                job.run_at = Some(at);
                self.jobs.enqueue_in(&mut tx, job, now).await?;
            }
            let detail = serde_json::json!({ "kind": kind.as_str(), "outcome": outcome.as_str() }).to_string();
            audit(
                &mut *tx,
                &AuditEntry::for_company(account, company, actor, "credentials.checked", now).with_detail(detail),
            )
            .await?;
            tx.commit().await?;
            self.status_row(account, company, kind).await?.ok_or(Error::NotFound("credentials"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields<'a>(t: &'a str) -> CredentialFields<'a> {
        CredentialFields { credential_type: t, ..CredentialFields::default() }
    }

    fn field_of(r: Result<PlatformCredentials>) -> &'static str {
        match r {
            Err(Error::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn each_type_needs_its_own_fields() {
        let ok = PlatformCredentials::parse(&CredentialFields {
            username: Some("mario"),
            password: Some("s3cret"),
            ..fields("username_password")
        });
        assert_eq!(
            ok.ok(),
            Some(PlatformCredentials::UsernamePassword { username: "mario".into(), password: "s3cret".into() })
        );
        assert_eq!(field_of(PlatformCredentials::parse(&fields("password"))), "type");
        assert_eq!(
            field_of(PlatformCredentials::parse(&CredentialFields {
                username: Some("m"),
                ..fields("username_password")
            })),
            "password"
        );
        assert_eq!(field_of(PlatformCredentials::parse(&fields("api_key"))), "api_key");
        assert_eq!(
            field_of(PlatformCredentials::parse(&CredentialFields { key: Some(" "), ..fields("technical_key") })),
            "key"
        );
        assert_eq!(
            field_of(PlatformCredentials::parse(&CredentialFields {
                api_key: Some("k"),
                password: Some("p"),
                ..fields("api_key")
            })),
            "password"
        );
        let long = "x".repeat(513);
        assert_eq!(
            field_of(PlatformCredentials::parse(&CredentialFields { api_key: Some(&long), ..fields("api_key") })),
            "api_key"
        );
    }

    #[test]
    fn debug_never_shows_a_secret_and_the_wire_form_is_tagged() {
        let c = PlatformCredentials::UsernamePassword { username: "mario".into(), password: "s3cret".into() };
        let shown = format!("{c:?}");
        assert!(!shown.contains("mario") && !shown.contains("s3cret"), "{shown}");
        let wire = serde_json::to_value(&c).unwrap();
        assert_eq!(wire, serde_json::json!({"type": "username_password", "username": "mario", "password": "s3cret"}));
    }

    #[test]
    fn unanswered_checks_back_off_up_to_an_hour_then_stop() {
        let t0 = OffsetDateTime::UNIX_EPOCH;
        assert_eq!(next_check(t0, 1), Some(t0 + Duration::minutes(1)));
        assert_eq!(next_check(t0, 2), Some(t0 + Duration::minutes(2)));
        assert_eq!(next_check(t0, 8), Some(t0 + Duration::hours(1)));
        assert_eq!(next_check(t0, MAX_CHECK_ATTEMPTS + 1), None);
        for o in CheckOutcome::ALL {
            assert_eq!(CheckOutcome::parse(o.as_str()), Some(o));
        }
    }
}
