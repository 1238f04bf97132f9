//! The jobs that talk to the invoicing platform for an integration: create the company's
//! platform account, link it to the existing one ("Continue"), and activate the
//! integration once the invite is accepted. Each call carries the job id as its
//! idempotency key, so a job run twice after a crash has its effect once; each outcome
//! goes back into the integration's state machine.

use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::clock::Clock;
use ponte_identity::jobs::{AfterFailure, Backoff, Job, JobFailure, after_failure};
use ponte_linking::audit::Actor;
use ponte_linking::ids::{AccountId, CompanyId};
use ponte_linking::integration::actions::{self, Target};
use ponte_linking::integration::{Integration, IntegrationKind, IntegrationState, Integrations};
use ponte_linking::invite::InviteState;
use serde::Deserialize;

use super::registry::JobHandler;
use crate::connectors::platform::{self as connector, Platform, PlatformError};

/// What the platform job kinds carry.
#[derive(Debug, Deserialize)]
struct Payload {
    account_id: AccountId,
    company_id: CompanyId,
    kind: String,
}

/// Which platform job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `platform.create_account`.
    CreateAccount,
    /// `platform.link_account`.
    LinkAccount,
    /// `platform.activate`.
    Activate,
}

/// Runs one platform job kind.
#[derive(Debug, Clone)]
pub struct PlatformJob {
    step: Step,
    platform: Option<Arc<dyn Platform>>,
    integrations: Arc<dyn Integrations>,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
}

impl PlatformJob {
    /// The handler of `step`; without a platform every run fails (and is retried), so
    /// configuring one later lets the queue finish the work.
    pub fn new(
        step: Step,
        platform: Option<Arc<dyn Platform>>,
        integrations: Arc<dyn Integrations>,
        backoff: Backoff,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self { step, platform, integrations, backoff, clock }
    }

    fn company_json(integration: &Integration) -> Result<serde_json::Value, JobFailure> {
        let data = integration
            .platform_data
            .as_ref()
            .ok_or_else(|| JobFailure::Permanent("the integration has no company data for the platform".into()))?;
        serde_json::to_value(data).map_err(|e| JobFailure::Permanent(format!("company data: {e}")))
    }

    async fn record(&self, i: &Integration, account: &connector::PlatformAccount) -> Result<(), JobFailure> {
        self.integrations
            .set_platform_account(i.account_id, i.company_id, i.kind, &account.summary(), self.clock.now())
            .await
            .map_err(|e| JobFailure::Retry(e.to_string()))
    }

    async fn create(&self, platform: &dyn Platform, i: &Integration, key: &str) -> Result<(), JobFailure> {
        if i.platform_account.is_some() {
            return Ok(());
        }
        let company = Self::company_json(i)?;
        let account = match platform.create_account(&company, key).await {
            Ok(account) => account,
            // Created meanwhile (by the platform's own flow): use that one.
            Err(PlatformError::Rejected { code, .. }) if code == "account_exists" => {
                let vat = company["vat_number"].as_str().unwrap_or_default();
                platform.find_account(vat, key).await?.ok_or_else(|| {
                    JobFailure::Retry("the platform says the account exists but cannot find it".into())
                })?
            }
            Err(e) => return Err(e.into()),
        };
        self.record(i, &account).await
    }

    async fn link(&self, platform: &dyn Platform, i: &Integration, key: &str) -> Result<(), JobFailure> {
        let Some(existing) = &i.platform_account else {
            return Err(JobFailure::Permanent("no platform account to link to".into()));
        };
        let account = platform.link_account(&existing.id, &Self::company_json(i)?, key).await?;
        self.record(i, &account).await
    }

    async fn activate(&self, platform: &dyn Platform, i: &Integration, job: &Job) -> Result<(), JobFailure> {
        // Created or linked by a job that may still be queued: wait for it.
        let Some(account) = &i.platform_account else {
            return Err(JobFailure::Retry("waiting for the platform account".into()));
        };
        let invites = self
            .integrations
            .invites(i.account_id, i.company_id, i.kind)
            .await
            .map_err(|e| JobFailure::Retry(e.to_string()))?;
        let Some(invite) = invites.iter().find(|v| v.state == InviteState::Accepted) else {
            return Err(JobFailure::Permanent("no accepted invite for this integration".into()));
        };
        let vat = i.platform_data.as_ref().map(|d| d.vat_number().as_str().to_owned()).unwrap_or_default();
        platform
            .register_collaborator(
                &account.id,
                &invite.email,
                &invite.id.to_string(),
                &format!("{}:collaborator", job.id),
            )
            .await?;
        platform.activate(&account.id, i.kind.as_str(), &vat, &invite.email, &job.id.to_string()).await?;
        Ok(())
    }

    fn target(&self, i: &Integration) -> Target {
        Target {
            account: i.account_id,
            company: i.company_id,
            kind: i.kind,
            actor: Actor::system(),
            now: self.clock.now(),
        }
    }

    /// Tells the state machine how an activation attempt ended.
    async fn report(&self, i: &Integration, job: &Job, outcome: Result<(), JobFailure>) -> Result<(), JobFailure> {
        let target = self.target(i);
        let store = |e: ponte_linking::Error| JobFailure::Retry(e.to_string());
        match outcome {
            Ok(()) => {
                actions::activated(self.integrations.as_ref(), &target).await.map_err(store)?.ok();
                Ok(())
            }
            Err(failure) => {
                let next = match after_failure(job.attempts, job.max_attempts, &failure, &self.backoff, target.now, 0.5)
                {
                    AfterFailure::RetryAt(at) => Some(at),
                    AfterFailure::Dead => None,
                };
                actions::activation_failed(self.integrations.as_ref(), &target, failure.message().to_owned(), next)
                    .await
                    .map_err(store)?
                    .ok();
                Err(failure)
            }
        }
    }
}

#[async_trait]
impl JobHandler for PlatformJob {
    async fn run(&self, job: &Job) -> Result<(), JobFailure> {
        let p: Payload = serde_json::from_value(job.payload.clone())
            .map_err(|e| JobFailure::Permanent(format!("{} payload unreadable: {e}", job.kind)))?;
        let kind = IntegrationKind::parse(&p.kind).ok_or_else(|| JobFailure::Permanent(format!("kind {}", p.kind)))?;
        let Some(i) = self
            .integrations
            .get(p.account_id, p.company_id, kind)
            .await
            .map_err(|e| JobFailure::Retry(e.to_string()))?
        else {
            tracing::info!(job = %job.id, "the company is gone; nothing to do");
            return Ok(());
        };
        let Some(platform) = self.platform.as_deref() else {
            return Err(JobFailure::Retry("no invoicing platform is configured ([platform] base_url)".into()));
        };
        let key = job.id.to_string();
        match self.step {
            Step::CreateAccount => self.create(platform, &i, &key).await,
            Step::LinkAccount => self.link(platform, &i, &key).await,
            Step::Activate if i.state != IntegrationState::Activating => {
                // Disabled, or already active (the platform's webhook was faster): stale.
                tracing::info!(job = %job.id, state = i.state.as_str(), "activation no longer wanted");
                Ok(())
            }
            Step::Activate => {
                let outcome = self.activate(platform, &i, job).await;
                self.report(&i, job, outcome).await
            }
        }
    }
}

/// `platform.check_credentials`: a check the platform could not answer, run again. It
/// records its own outcome (and schedules the next attempt itself while the platform is
/// away), so the job ends done either way.
#[derive(Debug, Clone)]
pub struct CheckCredentialsJob {
    /// Where the credentials are.
    pub credentials: Arc<dyn ponte_linking::integration::credentials::CredentialStore>,
    /// The platform's credentials operations.
    pub platform: Arc<dyn ponte_linking::integration::credentials::CredentialsPlatform>,
    /// The companies (the VAT number to check under).
    pub companies: Arc<dyn ponte_linking::company::CompanyStore>,
    /// The one clock.
    pub clock: Arc<dyn Clock>,
}

#[derive(Debug, Deserialize)]
struct CheckPayload {
    account_id: AccountId,
    company_id: CompanyId,
    kind: String,
    attempt: u32,
}

#[async_trait]
impl JobHandler for CheckCredentialsJob {
    async fn run(&self, job: &Job) -> Result<(), JobFailure> {
        use ponte_linking::integration::credentials::{self, CredentialsTarget};
        let p: CheckPayload = serde_json::from_value(job.payload.clone())
            .map_err(|e| JobFailure::Permanent(format!("check_credentials payload: {e}")))?;
        let kind = IntegrationKind::parse(&p.kind)
            .ok_or_else(|| JobFailure::Permanent(format!("unknown integration kind {}", p.kind)))?;
        let company = self
            .companies
            .get(p.account_id, p.company_id)
            .await
            .map_err(|e| JobFailure::Retry(e.to_string()))?
            .ok_or_else(|| JobFailure::Permanent("the company is gone".into()))?;
        let target = CredentialsTarget {
            account: p.account_id,
            company: p.company_id,
            vat_number: company.data.vat_number().as_str().to_owned(),
            kind,
            actor: Actor::system(),
            now: self.clock.now(),
        };
        match credentials::check(
            self.credentials.as_ref(),
            self.platform.as_ref(),
            &target,
            p.attempt,
            &job.id.to_string(),
        )
        .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(JobFailure::Retry(e.to_string())),
        }
    }
}
