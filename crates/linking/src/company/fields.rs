//! TEMPORARY STUB (replaced by the company branch): the API the rest is written against.
use serde::{Deserialize, Serialize};

/// Stub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VatNumber(String);
impl VatNumber {
    /// Stub.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// Stub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegalName(String);
impl LegalName {
    /// Stub.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
/// Stub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Stub.
    pub field: &'static str,
    /// Stub.
    pub message: String,
}
/// Stub.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CompanyDraft {
    /// Stub.
    pub legal_name: Option<String>,
    /// Stub.
    pub vat_number: Option<String>,
    /// Stub.
    pub tax_code: Option<String>,
    /// Stub.
    pub sdi_code: Option<String>,
    /// Stub.
    pub pec: Option<String>,
    /// Stub.
    pub address: Option<AddressDraft>,
}
/// Stub.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct AddressDraft {
    /// Stub.
    pub street: Option<String>,
    /// Stub.
    pub city: Option<String>,
    /// Stub.
    pub postal_code: Option<String>,
    /// Stub.
    pub province: Option<String>,
    /// Stub.
    pub country: Option<String>,
}
/// Stub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompanyData {
    /// Stub.
    pub legal_name: LegalName,
    /// Stub.
    pub vat_number: VatNumber,
}
impl CompanyData {
    /// Stub.
    pub fn parse(d: &CompanyDraft) -> Result<Self, Vec<FieldError>> {
        Ok(Self {
            legal_name: LegalName(d.legal_name.clone().unwrap_or_default()),
            vat_number: VatNumber(d.vat_number.clone().unwrap_or_default()),
        })
    }
    /// Stub.
    pub fn patched(&self, _d: &CompanyDraft) -> Result<Self, Vec<FieldError>> {
        Ok(self.clone())
    }
}
impl From<Vec<FieldError>> for crate::Error {
    fn from(v: Vec<FieldError>) -> Self {
        crate::Error::invalid(v.first().map_or("body", |f| f.field), "stub")
    }
}
