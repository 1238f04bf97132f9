//! [`Integrations`] on SQLite or PostgreSQL: the thin layer that applies the state
//! machine. Each change runs in one transaction: read the row, decide by
//! [`transition`], compare-and-set the row on its `version`, then write the audit entry,
//! the invites, the jobs of the effects and the event, so all of it commits or none does.
//! A concurrent change that wins the compare-and-set makes this one start over on the new
//! row (the machine decides again), so two racing actions cannot both take effect.
//! Both engines agree on all of this SQL.

use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::clock::{from_unix, to_unix};
use ponte_identity::db::Database;
use ponte_identity::events::Event as Outgoing;
use ponte_identity::jobs::{NewJob, SqlJobs};
use ponte_identity::outbox::{Message, OutgoingMail};
use ponte_identity::seal::MasterKeys;
use ponte_identity::secret::{digest, random_token};
use sqlx::{Any, Transaction};
use time::{Duration, OffsetDateTime};

use super::store::{Applied, Change, Integrations, Invitee, Refused};
use super::{Effect, Integration, IntegrationKind, IntegrationState, PlatformAccount, Step, jobs, status, transition};
use crate::audit::{AuditEntry, sql::append as audit};
use crate::company::CompanyData;
use crate::email::Email;
use crate::ids::{AccountId, CompanyId, InviteId, UserId};
use crate::invite::{Invite, InviteRefusal, InviteState};
use crate::{Error, Result};

/// How often a change starts over after losing a compare-and-set before giving up.
const CAS_ROUNDS: u32 = 8;

/// [`Integrations`] in the relational store.
#[derive(Debug, Clone)]
pub struct SqlIntegrations {
    db: Database,
    jobs: Arc<SqlJobs>,
    master: MasterKeys,
    public_url: String,
    invite_ttl: Duration,
}

impl SqlIntegrations {
    /// Integrations kept in `db`, enqueueing into `jobs`; invite mails are sealed with
    /// `master` and link to `public_url`; invites live `invite_ttl`.
    pub fn new(db: Database, jobs: Arc<SqlJobs>, master: MasterKeys, public_url: &str, invite_ttl: Duration) -> Self {
        Self { db, jobs, master, public_url: public_url.trim_end_matches('/').to_owned(), invite_ttl }
    }
}

/// Creates the integrations of a new company, `disabled`, inside the company's transaction.
pub async fn create_for_company(
    tx: &mut Transaction<'_, Any>,
    account: AccountId,
    company: CompanyId,
    now: OffsetDateTime,
) -> Result<()> {
    for kind in IntegrationKind::ALL {
        sqlx::query(
            "INSERT INTO integrations (company_id, kind, account_id, state, since, version, updated_at) \
             VALUES ($1, $2, $3, $4, $5, 1, $5)",
        )
        .bind(company.to_string())
        .bind(kind.as_str())
        .bind(account.to_string())
        .bind(IntegrationState::Disabled.as_str())
        .bind(to_unix(now))
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

type Row = (
    String,
    String,
    String,
    String,
    i64,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
    i64,
);
const COLUMNS: &str = "account_id, company_id, kind, state, since, last_error, next_retry_at, platform_account, \
                       platform_data, invitee_user_id, version, updated_at";

/// [`COLUMNS`] of the integrations table under `alias`, for queries that join companies.
fn columns_of(alias: &str) -> String {
    COLUMNS.split(", ").map(|c| format!("{alias}.{c}")).collect::<Vec<_>>().join(", ")
}

/// The folded form of an invite's address for matching; an address that does not parse
/// (it came from an upstream provider) is kept as it is, so it matches only itself.
fn normalized(email: &str) -> String {
    Email::parse(email).map(|e| e.normalized()).unwrap_or_else(|_| email.to_owned())
}

/// A user's mail language, Italian when the user is gone or the value unreadable.
fn lang_or_italian(stored: Option<&str>) -> crate::account::Lang {
    stored.and_then(crate::account::Lang::parse).unwrap_or(crate::account::Lang::It)
}

fn corrupt(what: String) -> Error {
    Error::Identity(ponte_identity::Error::Corrupt(what))
}

fn parse(row: Row) -> Result<Integration> {
    let (account, company, kind, state, since, last_error, next_retry_at, platform, data, invitee, version, updated) =
        row;
    let bad = |what: &str| corrupt(format!("integration {company}/{kind}: {what}"));
    Ok(Integration {
        account_id: account.parse().map_err(|_| bad("account_id"))?,
        company_id: company.parse().map_err(|_| bad("company_id"))?,
        kind: IntegrationKind::parse(&kind).ok_or_else(|| bad("kind"))?,
        state: IntegrationState::parse(&state).ok_or_else(|| bad("state"))?,
        since: from_unix(since),
        last_error,
        next_retry_at: next_retry_at.map(from_unix),
        platform_account: platform
            .map(|p| serde_json::from_str(&p))
            .transpose()
            .map_err(|_| bad("platform_account"))?,
        platform_data: data
            .map(|d| serde_json::from_str::<CompanyData>(&d))
            .transpose()
            .map_err(|_| bad("platform_data"))?,
        invitee: invitee.map(|u| u.parse()).transpose().map_err(|_| bad("invitee_user_id"))?,
        version,
        updated_at: from_unix(updated),
    })
}

type InviteRow = (String, String, String, String, String, String, String, i64, i64, i64, Option<i64>);
const INVITE_COLUMNS: &str =
    "id, account_id, company_id, kind, invitee_user_id, email, state, expires_at, sent_count, created_at, accepted_at";

fn parse_invite(row: InviteRow) -> Result<Invite> {
    let (id, account, company, kind, invitee, email, state, expires_at, sent_count, created_at, accepted_at) = row;
    let bad = |what: &str| corrupt(format!("invite {id}: {what}"));
    Ok(Invite {
        id: id.parse().map_err(|_| bad("id"))?,
        account_id: account.parse().map_err(|_| bad("account_id"))?,
        company_id: company.parse().map_err(|_| bad("company_id"))?,
        kind: IntegrationKind::parse(&kind).ok_or_else(|| bad("kind"))?,
        invitee: invitee.parse().map_err(|_| bad("invitee_user_id"))?,
        email,
        state: InviteState::parse(&state).ok_or_else(|| bad("state"))?,
        expires_at: from_unix(expires_at),
        sent_count: u32::try_from(sent_count).unwrap_or(u32::MAX),
        created_at: from_unix(created_at),
        accepted_at: accepted_at.map(from_unix),
    })
}

async fn select(
    executor: impl sqlx::Executor<'_, Database = Any>,
    account: AccountId,
    company: CompanyId,
    kind: IntegrationKind,
) -> Result<Option<Integration>> {
    let row: Option<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM integrations WHERE account_id = $1 AND company_id = $2 AND kind = $3"
    ))
    .bind(account.to_string())
    .bind(company.to_string())
    .bind(kind.as_str())
    .fetch_optional(executor)
    .await?;
    row.map(parse).transpose()
}

async fn select_invite(
    executor: impl sqlx::Executor<'_, Database = Any>,
    where_: &str,
    value: String,
) -> Result<Option<Invite>> {
    let row: Option<InviteRow> = sqlx::query_as(&format!("SELECT {INVITE_COLUMNS} FROM invites WHERE {where_}"))
        .bind(value)
        .fetch_optional(executor)
        .await?;
    row.map(parse_invite).transpose()
}

/// The event every move sends to the POS backend.
fn state_changed(from: IntegrationState, i: &Integration, invited: Option<&str>) -> Outgoing {
    Outgoing::new(
        "integration.state_changed",
        serde_json::json!({
            "account_id": i.account_id.to_string(),
            "company_id": i.company_id.to_string(),
            "kind": i.kind.as_str(),
            "state": i.state.as_str(),
            "previous_state": from.as_str(),
            "since": i.since.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            "last_error": i.last_error,
            "next_step": status::next_step(i.state, invited),
        }),
        i.since,
    )
}

impl SqlIntegrations {
    async fn enqueue(&self, tx: &mut Transaction<'_, Any>, job: NewJob, now: OffsetDateTime) -> Result<()> {
        self.jobs.enqueue_in(tx, job, now).await?;
        Ok(())
    }

    fn platform_job(kind: &str, i: &Integration) -> NewJob {
        NewJob::new(
            kind,
            serde_json::json!({
                "account_id": i.account_id.to_string(),
                "company_id": i.company_id.to_string(),
                "kind": i.kind.as_str(),
            }),
        )
        // One job per step of the integration: a retried transaction cannot enqueue twice.
        .idempotency_key(format!("{kind}:{}:{}:{}", i.company_id, i.kind.as_str(), i.version))
    }

    async fn revoke_invites(&self, tx: &mut Transaction<'_, Any>, i: &Integration, now: OffsetDateTime) -> Result<()> {
        sqlx::query(
            "UPDATE invites SET state = 'revoked', updated_at = $1 \
             WHERE company_id = $2 AND kind = $3 AND state = 'pending'",
        )
        .bind(to_unix(now))
        .bind(i.company_id.to_string())
        .bind(i.kind.as_str())
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// The mail carrying a fresh token for `invite`.
    async fn invite_mail(
        &self,
        tx: &mut Transaction<'_, Any>,
        invite: &Invite,
        lang: crate::account::Lang,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<()> {
        let (data, platform): (String, Option<String>) = sqlx::query_as(
            "SELECT c.data, i.platform_account FROM companies c JOIN integrations i ON i.company_id = c.id \
             WHERE c.id = $1 AND i.kind = $2",
        )
        .bind(invite.company_id.to_string())
        .bind(invite.kind.as_str())
        .fetch_one(&mut **tx)
        .await?;
        let company_name = serde_json::from_str::<serde_json::Value>(&data)
            .ok()
            .and_then(|v| v.get("legal_name").and_then(|n| n.as_str()).map(str::to_owned))
            .unwrap_or_default();
        let platform_account = platform
            .and_then(|p| serde_json::from_str::<PlatformAccount>(&p).ok())
            .map_or_else(|| company_name.clone(), |p| p.legal_name);
        let mail = OutgoingMail {
            to: invite.email.clone(),
            lang,
            message: Message::CollaborationInvite {
                link: format!("{}/invites/{token}", self.public_url),
                company_name,
                platform_account,
                expires_on: invite.expires_at.date().to_string(),
            },
        };
        self.enqueue(tx, mail.to_job(&self.master)?, now).await
    }

    async fn issue_invite(
        &self,
        tx: &mut Transaction<'_, Any>,
        i: &Integration,
        invitee: &Invitee,
        now: OffsetDateTime,
    ) -> Result<()> {
        self.revoke_invites(tx, i, now).await?;
        let token = random_token();
        let invite = Invite {
            id: InviteId::new(),
            account_id: i.account_id,
            company_id: i.company_id,
            kind: i.kind,
            invitee: invitee.user,
            email: invitee.email.clone(),
            state: InviteState::Pending,
            expires_at: now + self.invite_ttl,
            sent_count: 1,
            created_at: now,
            accepted_at: None,
        };
        let normalized = normalized(&invitee.email);
        sqlx::query(
            "INSERT INTO invites (id, account_id, company_id, kind, invitee_user_id, email, email_normalized, \
             token_digest, state, expires_at, sent_count, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, 1, $10, $10)",
        )
        .bind(invite.id.to_string())
        .bind(i.account_id.to_string())
        .bind(i.company_id.to_string())
        .bind(i.kind.as_str())
        .bind(invitee.user.to_string())
        .bind(&invite.email)
        .bind(normalized)
        .bind(digest(&token))
        .bind(to_unix(invite.expires_at))
        .bind(to_unix(now))
        .execute(&mut **tx)
        .await?;
        self.invite_mail(tx, &invite, invitee.lang, &token, now).await?;
        audit(
            &mut **tx,
            &AuditEntry::for_company(i.account_id, i.company_id, &Actor::system(), "invite.issued", now)
                .with_detail(serde_json::json!({"invite": invite.id.to_string(), "kind": i.kind.as_str()}).to_string()),
        )
        .await
    }

    /// Marks the accepted invite used, if it still is the pending one the link named.
    async fn take_invite(
        &self,
        tx: &mut Transaction<'_, Any>,
        invite: InviteId,
        token_digest: Option<&str>,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<(), InviteRefusal>> {
        let Some(stored) = select_invite(&mut **tx, "id = $1", invite.to_string()).await? else {
            return Ok(Err(InviteRefusal::Unknown));
        };
        if let Err(refusal) = stored.usable(now) {
            return Ok(Err(refusal));
        }
        let done = sqlx::query(
            "UPDATE invites SET state = 'accepted', accepted_at = $1, updated_at = $1 \
             WHERE id = $2 AND state = 'pending' AND ($3 IS NULL OR token_digest = $3)",
        )
        .bind(to_unix(now))
        .bind(invite.to_string())
        .bind(token_digest.map(str::to_owned))
        .execute(&mut **tx)
        .await?;
        // A resend since the link was opened changed the digest: that link is dead.
        if done.rows_affected() != 1 {
            return Ok(Err(InviteRefusal::Unknown));
        }
        let how = if token_digest.is_some() { "link" } else { "offer" };
        audit(
            &mut **tx,
            &AuditEntry::for_company(stored.account_id, stored.company_id, actor, "invite.accepted", now).with_detail(
                serde_json::json!({"invite": invite.to_string(), "kind": stored.kind.as_str(), "through": how})
                    .to_string(),
            ),
        )
        .await?;
        Ok(Ok(()))
    }

    /// One round of [`Integrations::apply`]; `None` when a concurrent change won the
    /// compare-and-set and the round must start over.
    async fn apply_once(&self, change: &Change) -> Result<Option<std::result::Result<Applied, Refused>>> {
        let now = change.now;
        let mut tx = self.db.begin().await?;
        let Some(current) = select(&mut *tx, change.account, change.company, change.kind).await? else {
            return Ok(Some(Err(Refused::NoCompany)));
        };
        let (to, error, effects) = match transition(current.state, &change.event) {
            Err(illegal) => return Ok(Some(Err(illegal.into()))),
            Ok(Step::Unchanged) => return Ok(Some(Ok(Applied::Unchanged(current)))),
            Ok(Step::Move { to, error, effects }) => (to, error, effects),
        };
        let invitee = change.invitee.clone();
        if effects.contains(&Effect::IssueInvite) && invitee.is_none() && current.invitee.is_none() {
            return Ok(Some(Err(Refused::NoInvitee)));
        }
        if let Some((invite, token_digest)) = &change.accepting
            && let Err(refusal) =
                self.take_invite(&mut tx, *invite, token_digest.as_deref(), &change.actor, now).await?
        {
            return Ok(Some(Err(Refused::Invite(refusal))));
        }
        let mut next = current.clone();
        if to != current.state {
            next.since = now;
        }
        next.state = to;
        next.last_error = error;
        next.next_retry_at = if to == IntegrationState::Activating { change.next_retry_at } else { None };
        next.version = current.version + 1;
        next.updated_at = now;
        if let super::Event::Reactivate { existing } = &change.event {
            next.platform_account = existing.clone();
        }
        if let Some(data) = &change.data {
            next.platform_data = Some(data.clone());
        }
        if let Some(i) = &invitee {
            next.invitee = Some(i.user);
        }
        let platform_json = next.platform_account.as_ref().map(serde_json::to_string).transpose().map_err(bad_json)?;
        let data_json = next.platform_data.as_ref().map(serde_json::to_string).transpose().map_err(bad_json)?;
        let written = sqlx::query(
            "UPDATE integrations SET state = $1, since = $2, last_error = $3, next_retry_at = $4, \
             platform_account = $5, platform_data = $6, invitee_user_id = $7, version = $8, updated_at = $9 \
             WHERE company_id = $10 AND kind = $11 AND version = $12",
        )
        .bind(next.state.as_str())
        .bind(to_unix(next.since))
        .bind(next.last_error.clone())
        .bind(next.next_retry_at.map(to_unix))
        .bind(platform_json)
        .bind(data_json)
        .bind(next.invitee.map(|u| u.to_string()))
        .bind(next.version)
        .bind(to_unix(now))
        .bind(current.company_id.to_string())
        .bind(current.kind.as_str())
        .bind(current.version)
        .execute(&mut *tx)
        .await?;
        if written.rows_affected() != 1 {
            return Ok(None);
        }
        for effect in &effects {
            match effect {
                Effect::RevokeInvites => self.revoke_invites(&mut tx, &next, now).await?,
                Effect::IssueInvite => {
                    let invitee = match invitee.clone() {
                        Some(i) => i,
                        None => self.invitee_again(&mut tx, &next).await?.ok_or(Error::NotFound("invitee"))?,
                    };
                    self.issue_invite(&mut tx, &next, &invitee, now).await?;
                }
                Effect::CreatePlatformAccount => {
                    self.enqueue(&mut tx, Self::platform_job(jobs::CREATE_ACCOUNT, &next), now).await?;
                }
                Effect::LinkPlatformAccount => {
                    self.enqueue(&mut tx, Self::platform_job(jobs::LINK_ACCOUNT, &next), now).await?;
                }
                Effect::Activate => self.enqueue(&mut tx, Self::platform_job(jobs::ACTIVATE, &next), now).await?,
            }
        }
        if to != current.state {
            let invited = pending_masked(&mut tx, &next, now).await?;
            self.enqueue(&mut tx, state_changed(current.state, &next, invited.as_deref()).fanout_job(), now).await?;
        }
        audit(
            &mut *tx,
            &AuditEntry::for_company(
                next.account_id,
                next.company_id,
                &change.actor,
                &format!("integration.{}", change.event.name()),
                now,
            )
            .with_detail(
                serde_json::json!({"kind": next.kind.as_str(), "from": current.state.as_str(), "to": to.as_str()})
                    .to_string(),
            ),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(Ok(Applied::Moved { from: current.state, integration: next })))
    }

    /// The invitee named earlier (at reactivate), re-read with their current language.
    async fn invitee_again(&self, tx: &mut Transaction<'_, Any>, i: &Integration) -> Result<Option<Invitee>> {
        let Some(user) = i.invitee else { return Ok(None) };
        let row: Option<(String, Option<String>)> = sqlx::query_as(
            "SELECT u.lang, x.email FROM users u JOIN external_identities x ON x.user_id = u.id \
             WHERE u.id = $1 AND x.email IS NOT NULL ORDER BY x.linked_at LIMIT 1",
        )
        .bind(user.to_string())
        .fetch_optional(&mut **tx)
        .await?;
        Ok(row.and_then(|(lang, email)| Some(Invitee { user, email: email?, lang: lang_or_italian(Some(&lang)) })))
    }
}

fn bad_json(e: serde_json::Error) -> Error {
    corrupt(format!("integration json: {e}"))
}

/// The masked address of the integration's pending, unexpired invite.
async fn pending_masked(tx: &mut Transaction<'_, Any>, i: &Integration, now: OffsetDateTime) -> Result<Option<String>> {
    let row: Option<(String,)> = sqlx::query_as(
        "SELECT email FROM invites WHERE company_id = $1 AND kind = $2 AND state = 'pending' AND expires_at > $3 \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(i.company_id.to_string())
    .bind(i.kind.as_str())
    .bind(to_unix(now))
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(e,)| crate::invite::mask_email(&e)))
}

#[async_trait]
impl Integrations for SqlIntegrations {
    async fn get(&self, account: AccountId, company: CompanyId, kind: IntegrationKind) -> Result<Option<Integration>> {
        select(self.db.pool(), account, company, kind).await
    }

    async fn for_account(&self, account: AccountId) -> Result<Vec<Integration>> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {} FROM integrations i JOIN companies c ON c.id = i.company_id \
             WHERE i.account_id = $1 ORDER BY c.created_at, c.id, i.kind",
            columns_of("i")
        ))
        .bind(account.to_string())
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(parse).collect()
    }

    async fn apply(&self, change: Change) -> Result<std::result::Result<Applied, Refused>> {
        for _ in 0..CAS_ROUNDS {
            if let Some(outcome) = self.apply_once(&change).await? {
                return Ok(outcome);
            }
        }
        Err(Error::Identity(ponte_identity::Error::Busy))
    }

    async fn set_platform_account(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
        platform: &PlatformAccount,
        now: OffsetDateTime,
    ) -> Result<()> {
        sqlx::query(
            "UPDATE integrations SET platform_account = $1, version = version + 1, updated_at = $2 \
             WHERE account_id = $3 AND company_id = $4 AND kind = $5",
        )
        .bind(serde_json::to_string(platform).map_err(bad_json)?)
        .bind(to_unix(now))
        .bind(account.to_string())
        .bind(company.to_string())
        .bind(kind.as_str())
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    async fn invites(&self, account: AccountId, company: CompanyId, kind: IntegrationKind) -> Result<Vec<Invite>> {
        let rows: Vec<InviteRow> = sqlx::query_as(&format!(
            "SELECT {INVITE_COLUMNS} FROM invites WHERE account_id = $1 AND company_id = $2 AND kind = $3 \
             ORDER BY created_at DESC, id DESC"
        ))
        .bind(account.to_string())
        .bind(company.to_string())
        .bind(kind.as_str())
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(parse_invite).collect()
    }

    async fn invite_by_id(&self, invite: InviteId) -> Result<Option<Invite>> {
        select_invite(self.db.pool(), "id = $1", invite.to_string()).await
    }

    async fn by_platform_account(
        &self,
        vat_number: &str,
        platform_account: &str,
        kind: IntegrationKind,
    ) -> Result<Vec<Integration>> {
        let rows: Vec<Row> = sqlx::query_as(&format!(
            "SELECT {} FROM integrations i JOIN companies c ON c.id = i.company_id \
             WHERE c.vat_number = $1 AND i.kind = $2",
            columns_of("i")
        ))
        .bind(vat_number)
        .bind(kind.as_str())
        .fetch_all(self.db.pool())
        .await?;
        let all: Vec<Integration> = rows.into_iter().map(parse).collect::<Result<_>>()?;
        Ok(all.into_iter().filter(|i| i.platform_account.as_ref().is_some_and(|p| p.id == platform_account)).collect())
    }

    async fn invite_by_token_digest(&self, digest: &str) -> Result<Option<Invite>> {
        select_invite(self.db.pool(), "token_digest = $1", digest.to_owned()).await
    }

    async fn pending_invites_for(
        &self,
        user: UserId,
        email_normalized: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<Invite>> {
        let rows: Vec<InviteRow> = sqlx::query_as(&format!(
            "SELECT {INVITE_COLUMNS} FROM invites WHERE invitee_user_id = $1 AND email_normalized = $2 \
             AND state = 'pending' AND expires_at > $3 ORDER BY created_at"
        ))
        .bind(user.to_string())
        .bind(email_normalized)
        .bind(to_unix(now))
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter().map(parse_invite).collect()
    }

    async fn revoke_invites_of(&self, user: UserId, actor: &Actor, now: OffsetDateTime) -> Result<u64> {
        let mut tx = self.db.begin().await?;
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "SELECT id, account_id, company_id, kind FROM invites WHERE invitee_user_id = $1 AND state = 'pending' \
             ORDER BY created_at, id",
        )
        .bind(user.to_string())
        .fetch_all(&mut *tx)
        .await?;
        let mut revoked = 0;
        for (id, account, company, kind) in rows {
            let done = sqlx::query(
                "UPDATE invites SET state = 'revoked', updated_at = $1 WHERE id = $2 AND state = 'pending'",
            )
            .bind(to_unix(now))
            .bind(&id)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                continue;
            }
            revoked += 1;
            let bad = |what: &str| corrupt(format!("invite {id}: {what}"));
            let account: AccountId = account.parse().map_err(|_| bad("account_id"))?;
            let company: CompanyId = company.parse().map_err(|_| bad("company_id"))?;
            audit(
                &mut *tx,
                &AuditEntry::for_company(account, company, actor, "invite.revoked", now).with_detail(
                    serde_json::json!({"invite": id, "kind": kind, "why": "invitee_unlinked", "user": user.to_string()})
                        .to_string(),
                ),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(revoked)
    }

    async fn resend(
        &self,
        account: AccountId,
        company: CompanyId,
        kind: IntegrationKind,
        invite: InviteId,
        actor: &crate::audit::Actor,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<Invite, Refused>> {
        let mut tx = self.db.begin().await?;
        let Some(integration) = select(&mut *tx, account, company, kind).await? else {
            return Ok(Err(Refused::NoCompany));
        };
        let Some(stored) = select_invite(&mut *tx, "id = $1", invite.to_string()).await? else {
            return Ok(Err(Refused::Invite(InviteRefusal::Unknown)));
        };
        if stored.company_id != company || stored.kind != kind {
            return Ok(Err(Refused::Invite(InviteRefusal::Unknown)));
        }
        if integration.state != IntegrationState::InvitePending {
            return Ok(Err(Refused::Illegal(super::Illegal { state: integration.state, event: "resend" })));
        }
        // A pending invite goes to the same address again. One revoked while the
        // integration still waits for it (its invitee unlinked the external ID) comes back
        // to life at the address of the external ID linked now, if there is one.
        let (email, lang) = match stored.state {
            InviteState::Accepted => return Ok(Err(Refused::Invite(InviteRefusal::Used))),
            InviteState::Pending => {
                let lang: Option<(String,)> = sqlx::query_as("SELECT lang FROM users WHERE id = $1")
                    .bind(stored.invitee.to_string())
                    .fetch_optional(&mut *tx)
                    .await?;
                let lang = lang_or_italian(lang.as_ref().map(|(l,)| l.as_str()));
                (stored.email.clone(), lang)
            }
            InviteState::Revoked => {
                let other: Option<(String,)> = sqlx::query_as(
                    "SELECT id FROM invites WHERE company_id = $1 AND kind = $2 AND state = 'pending' LIMIT 1",
                )
                .bind(company.to_string())
                .bind(kind.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                if other.is_some() || integration.invitee != Some(stored.invitee) {
                    return Ok(Err(Refused::Invite(InviteRefusal::Revoked)));
                }
                match self.invitee_again(&mut tx, &integration).await? {
                    Some(invitee) => (invitee.email, invitee.lang),
                    None => return Ok(Err(Refused::InviteeWithoutExternalId)),
                }
            }
        };
        let normalized = normalized(&email);
        let token = random_token();
        let expires_at = now + self.invite_ttl;
        sqlx::query(
            "UPDATE invites SET state = 'pending', email = $1, email_normalized = $2, token_digest = $3, \
             expires_at = $4, sent_count = sent_count + 1, updated_at = $5 \
             WHERE id = $6 AND state IN ('pending', 'revoked')",
        )
        .bind(&email)
        .bind(normalized)
        .bind(digest(&token))
        .bind(to_unix(expires_at))
        .bind(to_unix(now))
        .bind(invite.to_string())
        .execute(&mut *tx)
        .await?;
        let renewed = Invite {
            expires_at,
            email,
            state: InviteState::Pending,
            sent_count: stored.sent_count.saturating_add(1),
            ..stored
        };
        self.invite_mail(&mut tx, &renewed, lang, &token, now).await?;
        audit(
            &mut *tx,
            &AuditEntry::for_company(account, company, actor, "invite.resent", now)
                .with_detail(serde_json::json!({"invite": invite.to_string(), "kind": kind.as_str()}).to_string()),
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(renewed))
    }
}

use crate::audit::Actor;
