//! [`SeatStore`] on SQLite or PostgreSQL. Every write takes the account lock first
//! ([`lock_account`]), so the seat count it checks cannot change before its commit: two
//! parallel additions cannot both take the last seat, and a lapse cannot race a payment.
//! Both engines agree on all of this SQL; the lock is where they differ, and it has its
//! per-engine file beside the account aggregate.

use std::sync::Arc;

use async_trait::async_trait;
use ponte_identity::clock::{from_unix, to_unix};
use ponte_identity::db::{Database, is_unique_violation};
use ponte_identity::outbox::{Message, Outbox, OutgoingMail};
use sqlx::{Any, Transaction};
use time::OffsetDateTime;

use super::{
    Lapse, NewSeatGrant, PaidGrant, Payment, SEATS_LAPSED, SeatGrant, SeatStore, SeatUsage, Seated, check_removal, pay,
    reminder_due, restorable, surplus,
};
use crate::account::Lang;
use crate::account::sql::{lock_account, seat_usage, seat_usage_in as usage_in};
use crate::audit::{Actor, AuditEntry, sql::append as audit};
use crate::ids::{AccountId, SeatGrantId, UserId};
use crate::{Error, Result};

/// Seat grants kept in the relational store; the owner's mail goes through `outbox` in the
/// same transaction as the change it reports.
#[derive(Debug, Clone)]
pub struct SqlSeats {
    db: Database,
    outbox: Arc<dyn Outbox>,
}

impl SqlSeats {
    /// Grants in `db`, mailing through `outbox`.
    pub fn new(db: Database, outbox: Arc<dyn Outbox>) -> Self {
        Self { db, outbox }
    }
}

type GrantRow = (String, String, i64, String, i64, Option<i64>, Option<i64>, Option<i64>, i64);
const GRANT_COLUMNS: &str =
    "id, account_id, quantity, order_reference, extend_other_grants, paid_at, valid_until, reminded_days, created_at";

fn parse_grant(row: GrantRow) -> Result<SeatGrant> {
    let (id, account, quantity, order_reference, extend, paid_at, valid_until, reminded_days, created_at) = row;
    let corrupt = |what: &str| Error::Identity(ponte_identity::Error::Corrupt(format!("seat grant {id}: {what}")));
    Ok(SeatGrant {
        id: id.parse().map_err(|_| corrupt("id"))?,
        account_id: account.parse().map_err(|_| corrupt("account_id"))?,
        quantity: u32::try_from(quantity).map_err(|_| corrupt("quantity"))?,
        order_reference,
        extend_other_grants: extend != 0,
        paid_at: paid_at.map(from_unix),
        valid_until: valid_until.map(from_unix),
        reminded_days: reminded_days.and_then(|d| u32::try_from(d).ok()),
        created_at: from_unix(created_at),
    })
}

async fn grants_in(executor: impl sqlx::Executor<'_, Database = Any>, account: AccountId) -> Result<Vec<SeatGrant>> {
    let rows: Vec<GrantRow> = sqlx::query_as(&format!(
        "SELECT {GRANT_COLUMNS} FROM seat_grants WHERE account_id = $1 ORDER BY created_at, id"
    ))
    .bind(account.to_string())
    .fetch_all(executor)
    .await?;
    rows.into_iter().map(parse_grant).collect()
}

/// Members of `account` in `status` (and, if given, with `reason`), as the seat rules see them.
async fn members(
    tx: &mut Transaction<'_, Any>,
    account: AccountId,
    status: &str,
    reason: Option<&str>,
) -> Result<Vec<(Seated, String)>> {
    let sql = "SELECT id, created_at, name, email FROM users WHERE account_id = $1 AND role = 'member' AND status = $2";
    let with_reason = format!("{sql} AND status_reason = $3");
    let query = match reason {
        Some(reason) => sqlx::query_as(&with_reason).bind(account.to_string()).bind(status).bind(reason),
        None => sqlx::query_as(sql).bind(account.to_string()).bind(status),
    };
    let rows: Vec<(String, i64, String, String)> = query.fetch_all(&mut **tx).await?;
    rows.into_iter()
        .map(|(id, created_at, name, email)| {
            let id: UserId =
                id.parse().map_err(|_| Error::Identity(ponte_identity::Error::Corrupt(format!("user {id}: id"))))?;
            Ok((Seated { id, created_at: from_unix(created_at) }, format!("{name} <{email}>")))
        })
        .collect()
}

/// Moves `user` from `from` to `to` (compare-and-set on the status), recording `reason`.
async fn set_status(
    tx: &mut Transaction<'_, Any>,
    user: UserId,
    from: &str,
    to: &str,
    reason: Option<&str>,
    now: OffsetDateTime,
) -> Result<bool> {
    let done =
        sqlx::query("UPDATE users SET status = $1, status_reason = $2, updated_at = $3 WHERE id = $4 AND status = $5")
            .bind(to)
            .bind(reason)
            .bind(to_unix(now))
            .bind(user.to_string())
            .bind(from)
            .execute(&mut **tx)
            .await?;
    Ok(done.rows_affected() == 1)
}

/// The owner's address, language and the account's name, for the mail the sweep sends.
async fn owner_of(tx: &mut Transaction<'_, Any>, account: AccountId) -> Result<Option<(String, Lang, String)>> {
    let row: Option<(String, String, String)> = sqlx::query_as(
        "SELECT u.email, u.lang, a.name FROM users u JOIN accounts a ON a.id = u.account_id \
         WHERE u.account_id = $1 AND u.role = 'owner'",
    )
    .bind(account.to_string())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(email, lang, name)| (email, Lang::parse(&lang).unwrap_or(Lang::It), name)))
}

fn system() -> Actor {
    Actor::system()
}

#[async_trait]
impl SeatStore for SqlSeats {
    async fn list(&self, account: AccountId) -> Result<Vec<SeatGrant>> {
        grants_in(self.db.pool(), account).await
    }

    async fn usage(&self, account: AccountId, now: OffsetDateTime) -> Result<SeatUsage> {
        seat_usage(self.db.pool(), account, now).await
    }

    async fn create(
        &self,
        account: AccountId,
        new: NewSeatGrant,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<SeatGrant> {
        let grant = SeatGrant {
            id: SeatGrantId::new(),
            account_id: account,
            quantity: new.quantity,
            order_reference: new.order_reference,
            extend_other_grants: new.extend_other_grants,
            paid_at: None,
            valid_until: None,
            reminded_days: None,
            created_at: now,
        };
        let mut tx = self.db.begin().await?;
        if !lock_account(self.db.backend(), &mut tx, account).await? {
            return Err(Error::NotFound("account"));
        }
        let inserted = sqlx::query(
            "INSERT INTO seat_grants (id, account_id, quantity, order_reference, extend_other_grants, created_at, \
             updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(grant.id.to_string())
        .bind(account.to_string())
        .bind(i64::from(grant.quantity))
        .bind(&grant.order_reference)
        .bind(i64::from(grant.extend_other_grants))
        .bind(to_unix(now))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(Error::Conflict {
                    code: "order_reference_taken",
                    message: "this account already has a seat grant with that order reference".into(),
                });
            }
            Err(e) => return Err(e.into()),
        }
        let detail = serde_json::json!({"grant": grant.id, "quantity": grant.quantity, "order_reference": grant.order_reference});
        let entry = AuditEntry::for_account(account, actor, "seats.ordered", now).with_detail(detail.to_string());
        audit(&mut *tx, &entry).await?;
        tx.commit().await?;
        Ok(grant)
    }

    async fn pay(
        &self,
        account: AccountId,
        grant: SeatGrantId,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<PaidGrant> {
        let mut tx = self.db.begin().await?;
        if !lock_account(self.db.backend(), &mut tx, account).await? {
            return Err(Error::NotFound("account"));
        }
        let grants = grants_in(&mut *tx, account).await?;
        let current = grants.iter().find(|g| g.id == grant).cloned().ok_or(Error::NotFound("seat grant"))?;
        let Payment::Paid { paid_at, valid_until, extended } = pay(&current, &grants, now) else {
            let seats = usage_in(&mut tx, account, now).await?;
            tx.rollback().await?;
            return Ok(PaidGrant { grant: current, restored: Vec::new(), seats });
        };
        sqlx::query(
            "UPDATE seat_grants SET paid_at = $1, valid_until = $2, reminded_days = NULL, updated_at = $1 \
             WHERE id = $3 AND paid_at IS NULL",
        )
        .bind(to_unix(paid_at))
        .bind(to_unix(valid_until))
        .bind(grant.to_string())
        .execute(&mut *tx)
        .await?;
        for other in &extended {
            sqlx::query("UPDATE seat_grants SET valid_until = $1, reminded_days = NULL, updated_at = $2 WHERE id = $3")
                .bind(to_unix(valid_until))
                .bind(to_unix(now))
                .bind(other.to_string())
                .execute(&mut *tx)
                .await?;
        }
        let detail = serde_json::json!({
            "grant": grant, "valid_until": to_unix(valid_until), "extended": extended,
        });
        audit(&mut *tx, &AuditEntry::for_account(account, actor, "seats.paid", now).with_detail(detail.to_string()))
            .await?;
        let before = usage_in(&mut tx, account, now).await?;
        let suspended: Vec<Seated> =
            members(&mut tx, account, "suspended", Some(SEATS_LAPSED)).await?.into_iter().map(|(s, _)| s).collect();
        let mut restored = Vec::new();
        for user in restorable(&suspended, before.free()) {
            if set_status(&mut tx, user, "suspended", "active", None, now).await? {
                let entry = AuditEntry::for_user(account, user, &system(), "user.restored", now)
                    .with_detail(format!(r#"{{"reason":"{SEATS_LAPSED}"}}"#));
                audit(&mut *tx, &entry).await?;
                restored.push(user);
            }
        }
        tx.commit().await?;
        let grant =
            SeatGrant { paid_at: Some(paid_at), valid_until: Some(valid_until), reminded_days: None, ..current };
        // Each restored member takes one of the free seats counted above.
        let seats = SeatUsage { used: before.used + restored.len() as u32, ..before };
        Ok(PaidGrant { grant, restored, seats })
    }

    async fn remove(&self, account: AccountId, grant: SeatGrantId, actor: &Actor, now: OffsetDateTime) -> Result<()> {
        let mut tx = self.db.begin().await?;
        if !lock_account(self.db.backend(), &mut tx, account).await? {
            return Err(Error::NotFound("account"));
        }
        let grants = grants_in(&mut *tx, account).await?;
        let current = grants.iter().find(|g| g.id == grant).ok_or(Error::NotFound("seat grant"))?;
        let used = usage_in(&mut tx, account, now).await?.used;
        check_removal(&grants, grant, used, now)?;
        sqlx::query("DELETE FROM seat_grants WHERE id = $1 AND account_id = $2")
            .bind(grant.to_string())
            .bind(account.to_string())
            .execute(&mut *tx)
            .await?;
        let detail = serde_json::json!({"grant": grant, "quantity": current.quantity, "order_reference": current.order_reference});
        audit(&mut *tx, &AuditEntry::for_account(account, actor, "seats.removed", now).with_detail(detail.to_string()))
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn lapse(&self, now: OffsetDateTime) -> Result<Vec<Lapse>> {
        // Candidates first, outside any lock; each is decided again under its own lock.
        let candidates: Vec<(String,)> = sqlx::query_as(
            "SELECT a.id FROM accounts a WHERE \
               (SELECT COUNT(*) FROM users u WHERE u.account_id = a.id AND u.role = 'member' AND u.status = 'active') \
             > (SELECT COALESCE(SUM(g.quantity), 0) FROM seat_grants g \
                WHERE g.account_id = a.id AND g.paid_at IS NOT NULL AND g.valid_until > $1)",
        )
        .bind(to_unix(now))
        .fetch_all(self.db.pool())
        .await?;
        let mut lapsed = Vec::new();
        for (id,) in candidates {
            let Ok(account) = id.parse::<AccountId>() else { continue };
            let mut tx = self.db.begin().await?;
            if !lock_account(self.db.backend(), &mut tx, account).await? {
                continue;
            }
            let valid = usage_in(&mut tx, account, now).await?.valid;
            let active = members(&mut tx, account, "active", None).await?;
            let seated: Vec<Seated> = active.iter().map(|(s, _)| *s).collect();
            let mut suspended = Vec::new();
            let mut names = Vec::new();
            for user in surplus(&seated, valid) {
                if set_status(&mut tx, user, "active", "suspended", Some(SEATS_LAPSED), now).await? {
                    let entry = AuditEntry::for_user(account, user, &system(), "user.suspended", now)
                        .with_detail(format!(r#"{{"reason":"{SEATS_LAPSED}"}}"#));
                    audit(&mut *tx, &entry).await?;
                    names.extend(active.iter().filter(|(s, _)| s.id == user).map(|(_, n)| n.clone()));
                    suspended.push(user);
                }
            }
            if !suspended.is_empty()
                && let Some((to, lang, account_name)) = owner_of(&mut tx, account).await?
            {
                let mail = OutgoingMail { to, lang, message: Message::SeatsLapsed { account_name, suspended: names } };
                self.outbox.send_in(&mut tx, &mail, now).await?;
            }
            tx.commit().await?;
            if !suspended.is_empty() {
                lapsed.push(Lapse { account, suspended });
            }
        }
        Ok(lapsed)
    }

    async fn remind(&self, now: OffsetDateTime) -> Result<u32> {
        let horizon = now + time::Duration::days(i64::from(super::REMINDER_DAYS[0]));
        let rows: Vec<GrantRow> = sqlx::query_as(&format!(
            "SELECT {GRANT_COLUMNS} FROM seat_grants WHERE paid_at IS NOT NULL AND valid_until > $1 \
             AND valid_until <= $2 AND (reminded_days IS NULL OR reminded_days > {})",
            super::REMINDER_DAYS[1]
        ))
        .bind(to_unix(now))
        .bind(to_unix(horizon))
        .fetch_all(self.db.pool())
        .await?;
        let mut sent = 0;
        for grant in rows.into_iter().map(parse_grant) {
            let grant = grant?;
            let Some(days) = reminder_due(&grant, now) else { continue };
            let mut tx = self.db.begin().await?;
            // The compare-and-set makes the reminder once per expiry, whoever else sweeps.
            let won = sqlx::query(
                "UPDATE seat_grants SET reminded_days = $1 WHERE id = $2 AND valid_until = $3 \
                 AND (reminded_days IS NULL OR reminded_days > $1)",
            )
            .bind(i64::from(days))
            .bind(grant.id.to_string())
            .bind(grant.valid_until.map(to_unix))
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if won && let Some((to, lang, account_name)) = owner_of(&mut tx, grant.account_id).await? {
                let expires_on = grant.valid_until.map(|t| t.date().to_string()).unwrap_or_default();
                let message = Message::SeatsExpiring {
                    account_name,
                    quantity: grant.quantity,
                    order_reference: grant.order_reference.clone(),
                    expires_on,
                };
                self.outbox.send_in(&mut tx, &OutgoingMail { to, lang, message }, now).await?;
                sent += 1;
            }
            tx.commit().await?;
        }
        Ok(sent)
    }
}
