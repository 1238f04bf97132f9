//! REST for an account's companies: `GET|POST /api/v1/accounts/{account}/companies`,
//! `GET|PATCH|DELETE …/companies/{company}`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_linking::company::{AddressDraft, Company, CompanyData, CompanyDraft};
use ponte_linking::ids::{AccountId, CompanyId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Need};
use crate::problem::{Problem, ProblemBody};
use crate::routes::api::{AccountPath, require_account};
use crate::state::AppState;
use ponte_linking::access::{Permission, Target as On};

/// Registers the company routes inside the `/api/v1/accounts` scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/{account}/companies").get(list_companies).post(create_company)).service(
        web::resource("/{account}/companies/{company}").get(get_company).patch(update_company).delete(delete_company),
    );
}

/// A postal address.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressFields {
    /// Street and number.
    pub street: Option<String>,
    /// Town or city.
    pub city: Option<String>,
    /// CAP: five digits in Italy.
    pub postal_code: Option<String>,
    /// Province code (sigla), two letters in Italy.
    pub province: Option<String>,
    /// ISO 3166-1 alpha-2 country code; `IT` when absent.
    pub country: Option<String>,
}

/// A company's fields as a request gives them: all required on create, any subset on
/// update (an empty `pec` or `sdi_code` clears it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompanyFields {
    /// Ragione sociale.
    pub legal_name: Option<String>,
    /// Partita IVA: 11 digits with a valid check digit; an `IT` prefix is dropped.
    pub vat_number: Option<String>,
    /// Codice fiscale: the 11-digit company form or the 16-character personal form;
    /// defaults to the VAT number.
    pub tax_code: Option<String>,
    /// The address.
    pub address: Option<AddressFields>,
    /// SDI recipient code (7 characters); `0000000` needs a PEC, `XXXXXXX` is for foreign recipients.
    pub sdi_code: Option<String>,
    /// PEC address where invoices arrive.
    pub pec: Option<String>,
}

/// The schema of `POST …/companies`, whose body the handler reads as [`CompanyFields`]:
/// on create every rule of `CompanyData::parse` applies (required fields, check digits,
/// the Italian address, the delivery rules), so the contract states them
/// ([`crate::contract::new_company`]); a PATCH keeps the permissive [`CompanyFields`].
#[derive(Debug)]
pub struct NewCompany;

impl utoipa::PartialSchema for NewCompany {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
        crate::contract::new_company()
    }
}

impl ToSchema for NewCompany {}

impl From<CompanyFields> for CompanyDraft {
    fn from(f: CompanyFields) -> Self {
        Self {
            legal_name: f.legal_name,
            vat_number: f.vat_number,
            tax_code: f.tax_code,
            sdi_code: f.sdi_code,
            pec: f.pec,
            address: f.address.map(|a| AddressDraft {
                street: a.street,
                city: a.city,
                postal_code: a.postal_code,
                province: a.province,
                country: a.country,
            }),
        }
    }
}

/// A company's validated fields, as responses show them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CompanyDataView {
    /// Ragione sociale.
    pub legal_name: String,
    /// Partita IVA (11 digits).
    pub vat_number: String,
    /// Codice fiscale.
    pub tax_code: String,
    /// The address.
    pub address: AddressView,
    /// SDI recipient code, if any.
    pub sdi_code: Option<String>,
    /// PEC address, if any.
    pub pec: Option<String>,
}

/// A validated postal address.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AddressView {
    /// Street and number.
    pub street: String,
    /// Town or city.
    pub city: String,
    /// Postal code.
    pub postal_code: Option<String>,
    /// Province code.
    pub province: Option<String>,
    /// Country code.
    pub country: String,
}

impl CompanyDataView {
    /// The view of validated data: its JSON is the contract shape already.
    pub fn of(data: &CompanyData) -> Result<Self, Problem> {
        serde_json::to_value(data).and_then(serde_json::from_value).map_err(|e| Problem::internal(&e))
    }
}

/// A company as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompanyView {
    /// Company id (UUID).
    pub id: String,
    /// Its fields.
    #[serde(flatten)]
    pub data: CompanyDataView,
    /// Creation time (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Last change (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub updated_at: OffsetDateTime,
}

impl CompanyView {
    fn of(c: &Company) -> Result<Self, Problem> {
        Ok(Self {
            id: c.id.to_string(),
            data: CompanyDataView::of(&c.data)?,
            created_at: c.created_at,
            updated_at: c.updated_at,
        })
    }
}

/// The account's companies.
#[derive(Debug, Serialize, ToSchema)]
pub struct CompanyList {
    /// Oldest first.
    pub companies: Vec<CompanyView>,
}

/// `{account}/companies/{company}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct CompanyPath {
    /// Account id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub account: AccountId,
    /// Company id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub company: CompanyId,
}

/// The company, or the 404 a missing account or company gets.
pub async fn require_company(state: &AppState, account: AccountId, company: CompanyId) -> Result<Company, Problem> {
    require_account(state, account).await?;
    state
        .companies
        .get(account, company)
        .await?
        .ok_or_else(|| Problem::not_found("company_not_found", "No such company in this account."))
}

type ApiResult = Result<HttpResponse, Problem>;

const PROBLEM: &str = crate::problem::PROBLEM_JSON;

/// The account's companies.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/companies", tag = "companies", params(AccountPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = CompanyList), (status = 404, body = ProblemBody, content_type = PROBLEM)))]
pub async fn list_companies(caller: Caller, path: web::Path<AccountPath>, state: web::Data<AppState>) -> ApiResult {
    caller.check(Some(path.account), Need::Member)?;
    require_account(&state, path.account).await?;
    let companies = state.companies.list(path.account).await?;
    // A member sees the companies they hold some permission on.
    let companies = companies.iter().filter(|c| caller.sees(c.id)).map(CompanyView::of).collect::<Result<_, _>>()?;
    Ok(HttpResponse::Ok().json(CompanyList { companies }))
}

/// Adds a company; its integrations start `disabled`.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/companies", tag = "companies", params(AccountPath),
    request_body = NewCompany, security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 201, body = CompanyView, headers(("Location" = String, description = "The new company"))),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "vat_number_taken", body = ProblemBody, content_type = PROBLEM),
        (status = 422, description = "validation_failed: `errors` names each field", body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn create_company(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<AccountPath>,
    body: web::Json<CompanyFields>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), Need::Manage)?;
    let data = CompanyData::parse(&body.into_inner().into()).map_err(ponte_linking::Error::from)?;
    let company = state.companies.create(path.account, data, &caller.actor(&req), state.now()).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/accounts/{}/companies/{}", path.account, company.id)))
        .json(CompanyView::of(&company)?))
}

/// One company.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/companies/{company}", tag = "companies", params(CompanyPath),
    security(("bearer" = ["ponte.admin"])),
    responses((status = 200, body = CompanyView), (status = 404, body = ProblemBody, content_type = PROBLEM)))]
pub async fn get_company(caller: Caller, path: web::Path<CompanyPath>, state: web::Data<AppState>) -> ApiResult {
    caller.check(Some(path.account), Need::AnyOn(path.company))?;
    Ok(HttpResponse::Ok().json(CompanyView::of(&require_company(&state, path.account, path.company).await?)?))
}

/// Changes the fields given; the whole company is validated again.
#[utoipa::path(patch, path = "/api/v1/accounts/{account}/companies/{company}", tag = "companies", params(CompanyPath),
    request_body = CompanyFields, security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = CompanyView),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "vat_number_taken", body = ProblemBody, content_type = PROBLEM),
        (status = 422, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn update_company(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<CompanyPath>,
    body: web::Json<CompanyFields>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), Need::Permission(Permission::SettingsManage, On::Company(path.company)))?;
    require_account(&state, path.account).await?;
    let draft = CompanyDraft::from(body.into_inner());
    let company = state.companies.update(path.account, path.company, &draft, &caller.actor(&req), state.now()).await?;
    Ok(HttpResponse::Ok().json(CompanyView::of(&company)?))
}

/// Removes a company whose integrations are all disabled.
#[utoipa::path(delete, path = "/api/v1/accounts/{account}/companies/{company}", tag = "companies", params(CompanyPath),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "integration_not_disabled", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn delete_company(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<CompanyPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), Need::Manage)?;
    require_company(&state, path.account, path.company).await?;
    state.companies.delete(path.account, path.company, &caller.actor(&req), state.now()).await?;
    Ok(HttpResponse::NoContent().finish())
}
