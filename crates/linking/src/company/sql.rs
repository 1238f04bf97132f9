//! [`CompanyStore`] on SQLite or PostgreSQL. The company's fields are kept as the JSON of
//! [`CompanyData`] (re-validated when read), with the VAT number also in a column under a
//! unique index per account. Both engines agree on all of this SQL.

use async_trait::async_trait;
use ponte_identity::clock::{from_unix, to_unix};
use ponte_identity::db::{Database, is_unique_violation};
use sqlx::Any;
use time::OffsetDateTime;

use super::{Company, CompanyData, CompanyDraft, CompanyStore};
use crate::account::sql::{forget_company, lock_account};
use crate::audit::{Actor, AuditEntry, sql::append as audit};
use crate::ids::{AccountId, CompanyId};
use crate::integration::sql::create_for_company;
use crate::{Error, Result};

/// [`CompanyStore`] in the relational store.
#[derive(Debug, Clone)]
pub struct SqlCompanies {
    db: Database,
}

impl SqlCompanies {
    /// Companies kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

type Row = (String, String, String, i64, i64);
const COLUMNS: &str = "id, account_id, data, created_at, updated_at";

fn parse(row: Row) -> Result<Company> {
    let (id, account, data, created_at, updated_at) = row;
    let corrupt = |what: &str| Error::Identity(ponte_identity::Error::Corrupt(format!("company {id}: {what}")));
    Ok(Company {
        id: id.parse().map_err(|_| corrupt("id"))?,
        account_id: account.parse().map_err(|_| corrupt("account_id"))?,
        data: serde_json::from_str(&data).map_err(|_| corrupt("data"))?,
        created_at: from_unix(created_at),
        updated_at: from_unix(updated_at),
    })
}

fn vat_taken() -> Error {
    Error::Conflict {
        code: "vat_number_taken",
        message: "The account already has a company with this VAT number (Partita IVA).".into(),
    }
}

fn to_json(data: &CompanyData) -> Result<String> {
    serde_json::to_string(data).map_err(|e| Error::Identity(ponte_identity::Error::Corrupt(format!("company: {e}"))))
}

async fn select(
    executor: impl sqlx::Executor<'_, Database = Any>,
    account: AccountId,
    company: CompanyId,
) -> Result<Option<Company>> {
    let row: Option<Row> =
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM companies WHERE account_id = $1 AND id = $2"))
            .bind(account.to_string())
            .bind(company.to_string())
            .fetch_optional(executor)
            .await?;
    row.map(parse).transpose()
}

fn entry(company: &Company, actor: &Actor, action: &str, now: OffsetDateTime) -> AuditEntry {
    AuditEntry::for_company(company.account_id, company.id, actor, action, now)
        .with_detail(serde_json::json!({"vat_number": company.data.vat_number().as_str()}).to_string())
}

#[async_trait]
impl CompanyStore for SqlCompanies {
    async fn list(&self, account: AccountId) -> Result<Vec<Company>> {
        let rows: Vec<Row> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM companies WHERE account_id = $1 ORDER BY created_at, id"))
                .bind(account.to_string())
                .fetch_all(self.db.pool())
                .await?;
        rows.into_iter().map(parse).collect()
    }

    async fn get(&self, account: AccountId, company: CompanyId) -> Result<Option<Company>> {
        select(self.db.pool(), account, company).await
    }

    async fn create(
        &self,
        account: AccountId,
        data: CompanyData,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Company> {
        let mut tx = self.db.begin().await?;
        if !lock_account(self.db.backend(), &mut tx, account).await? {
            return Err(Error::NotFound("account"));
        }
        let company = Company { id: CompanyId::new(), account_id: account, data, created_at: now, updated_at: now };
        let inserted = sqlx::query(
            "INSERT INTO companies (id, account_id, vat_number, data, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $5)",
        )
        .bind(company.id.to_string())
        .bind(account.to_string())
        .bind(company.data.vat_number().as_str())
        .bind(to_json(&company.data)?)
        .bind(to_unix(now))
        .execute(&mut *tx)
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(vat_taken()),
            Err(e) => return Err(e.into()),
        }
        create_for_company(&mut tx, account, company.id, now).await?;
        audit(&mut *tx, &entry(&company, actor, "company.created", now)).await?;
        tx.commit().await?;
        Ok(company)
    }

    async fn update(
        &self,
        account: AccountId,
        company: CompanyId,
        draft: &CompanyDraft,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Company> {
        let mut tx = self.db.begin().await?;
        let Some(current) = select(&mut *tx, account, company).await? else { return Err(Error::NotFound("company")) };
        let data = current.data.patched(draft)?;
        let updated = Company { data, updated_at: now, ..current };
        let written = sqlx::query(
            "UPDATE companies SET vat_number = $1, data = $2, updated_at = $3 WHERE account_id = $4 AND id = $5",
        )
        .bind(updated.data.vat_number().as_str())
        .bind(to_json(&updated.data)?)
        .bind(to_unix(now))
        .bind(account.to_string())
        .bind(company.to_string())
        .execute(&mut *tx)
        .await;
        match written {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => return Err(vat_taken()),
            Err(e) => return Err(e.into()),
        }
        audit(&mut *tx, &entry(&updated, actor, "company.updated", now)).await?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn delete(&self, account: AccountId, company: CompanyId, actor: &Actor, now: OffsetDateTime) -> Result<()> {
        let mut tx = self.db.begin().await?;
        // Under the account's lock, so a grant naming this company cannot be written meanwhile.
        lock_account(self.db.backend(), &mut tx, account).await?;
        let Some(current) = select(&mut *tx, account, company).await? else { return Err(Error::NotFound("company")) };
        let busy: Option<(String,)> =
            sqlx::query_as("SELECT state FROM integrations WHERE company_id = $1 AND state <> 'disabled' LIMIT 1")
                .bind(company.to_string())
                .fetch_optional(&mut *tx)
                .await?;
        if let Some((state,)) = busy {
            return Err(Error::Conflict {
                code: "integration_not_disabled",
                message: format!("The company's integration is {state}: disable it before removing the company."),
            });
        }
        sqlx::query("DELETE FROM companies WHERE account_id = $1 AND id = $2")
            .bind(account.to_string())
            .bind(company.to_string())
            .execute(&mut *tx)
            .await?;
        forget_company(&mut tx, account, company).await?;
        audit(&mut *tx, &entry(&current, actor, "company.deleted", now)).await?;
        tx.commit().await?;
        Ok(())
    }
}
