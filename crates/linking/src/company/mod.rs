//! Companies of an account: the legal entities and points of sale that invoices are for,
//! with fields that can only hold valid values ([`fields`]) and their storage ([`sql`]).

pub mod fields;

pub use fields::*;

pub mod sql;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::Result;
use crate::audit::Actor;
use crate::ids::{AccountId, CompanyId};

/// A company of an account, with its validated data.
#[derive(Debug, Clone, PartialEq)]
pub struct Company {
    /// Its id.
    pub id: CompanyId,
    /// The account it belongs to.
    pub account_id: AccountId,
    /// Legal name, VAT number, tax code, address and where invoices arrive.
    pub data: CompanyData,
    /// When it was added.
    pub created_at: OffsetDateTime,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// The companies of accounts. Every operation is scoped by account; every write is
/// audited in its own transaction.
#[async_trait]
pub trait CompanyStore: Send + Sync + std::fmt::Debug {
    /// The account's companies, oldest first.
    async fn list(&self, account: AccountId) -> Result<Vec<Company>>;
    /// One company of the account.
    async fn get(&self, account: AccountId, company: CompanyId) -> Result<Option<Company>>;
    /// Adds a company with its integrations (`disabled`). [`crate::Error::NotFound`] if
    /// there is no such account; a conflict `vat_number_taken` if the account already
    /// has a company with that VAT number.
    async fn create(
        &self,
        account: AccountId,
        data: CompanyData,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Company>;
    /// Changes the fields `draft` names, validating the whole again
    /// ([`CompanyData::patched`]) inside the write transaction.
    async fn update(
        &self,
        account: AccountId,
        company: CompanyId,
        draft: &CompanyDraft,
        actor: &Actor,
        now: OffsetDateTime,
    ) -> Result<Company>;
    /// Removes a company, only while each of its integrations is `disabled` (conflict
    /// `integration_not_disabled` otherwise): an active integration is switched off first.
    async fn delete(&self, account: AccountId, company: CompanyId, actor: &Actor, now: OffsetDateTime) -> Result<()>;
}
