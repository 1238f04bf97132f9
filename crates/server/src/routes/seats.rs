//! Seats: `GET|POST /api/v1/accounts/{account}/seats`, `DELETE …/seats/{grant}` and
//! `POST …/seats/{grant}/paid`. The rules are `ponte_linking::seats`; these handlers
//! parse, call the store and answer.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use ponte_linking::access::{Permission, Target};
use ponte_linking::ids::{AccountId, SeatGrantId};
use ponte_linking::seats::{NewSeatGrant, SeatGrant};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::auth::{Caller, Need};
use crate::problem::{Problem, ProblemBody};
use crate::routes::api::{AccountPath, SeatsView, require_account};
use crate::state::AppState;

const PROBLEM: &str = crate::problem::PROBLEM_JSON;
type ApiResult = Result<HttpResponse, Problem>;

/// Registers the seat routes inside the `/api/v1/accounts` scope.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/{account}/seats").get(list_seats).post(create_seats))
        .service(web::resource("/{account}/seats/{grant}").delete(delete_seats))
        .service(web::resource("/{account}/seats/{grant}/paid").post(pay_seats));
}

/// A JSON number as a whole number, if it is one (`3` and `3.0` alike).
fn whole(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() <= 1e15).map(|f| f as i64))
}

fn grant_not_found(e: ponte_linking::Error) -> Problem {
    match e {
        ponte_linking::Error::NotFound(_) => {
            Problem::not_found("seat_grant_not_found", "No such seat grant in this account.")
        }
        other => other.into(),
    }
}

/// `POST …/seats`: seats bought from the POS cart.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSeats {
    /// How many members they seat, 1 to 10000. A whole number written with a fraction
    /// (`3.0`) is the same number: JSON Schema counts it as an integer too.
    #[schema(value_type = i64, minimum = 1, maximum = 10000)]
    pub quantity: serde_json::Number,
    /// The POS order (unique within the account), 1 to 100 characters.
    #[schema(schema_with = crate::contract::order_reference)]
    pub order_reference: String,
    /// Whether paying moves the expiry of the account's other active grants to this one's.
    #[serde(default)]
    pub extend_other_grants: bool,
}

/// A seat grant.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeatGrantView {
    /// Grant id (UUID).
    pub id: String,
    /// How many members it seats.
    pub quantity: u32,
    /// The POS order.
    pub order_reference: String,
    /// Whether paying it extended the account's other active grants.
    pub extend_other_grants: bool,
    /// `pending_payment`, `active` or `expired`.
    pub state: &'static str,
    /// When the payment was registered (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    pub paid_at: Option<OffsetDateTime>,
    /// Until when its seats count (RFC 3339).
    #[serde(with = "time::serde::rfc3339::option")]
    pub valid_until: Option<OffsetDateTime>,
    /// When it was bought (RFC 3339).
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
}

impl SeatGrantView {
    fn of(g: SeatGrant, now: OffsetDateTime) -> Self {
        Self {
            id: g.id.to_string(),
            quantity: g.quantity,
            state: g.state(now).as_str(),
            order_reference: g.order_reference,
            extend_other_grants: g.extend_other_grants,
            paid_at: g.paid_at,
            valid_until: g.valid_until,
            created_at: g.created_at,
        }
    }
}

/// The account's grants and its seats now.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeatList {
    /// Oldest first.
    pub grants: Vec<SeatGrantView>,
    /// Seats valid now, in use, free.
    pub seats: SeatsView,
}

/// A payment registered.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaidSeats {
    /// The grant, now `active`.
    pub grant: SeatGrantView,
    /// Members suspended when seats lapsed that the new seats brought back.
    pub restored: Vec<String>,
    /// Seats valid now, in use, free.
    pub seats: SeatsView,
}

/// `{account}/seats/{grant}` in a path.
#[derive(Debug, Deserialize, IntoParams)]
pub struct GrantPath {
    /// Account id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub account: AccountId,
    /// Seat grant id (UUID).
    #[param(value_type = String, format = Uuid)]
    pub grant: SeatGrantId,
}

/// The account's seat grants and its seats now.
#[utoipa::path(get, path = "/api/v1/accounts/{account}/seats", tag = "seats", params(AccountPath),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = SeatList),
        (status = 403, body = ProblemBody, content_type = PROBLEM),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn list_seats(caller: Caller, path: web::Path<AccountPath>, state: web::Data<AppState>) -> ApiResult {
    caller.check(Some(path.account), Need::Permission(Permission::UsersManage, Target::Account))?;
    require_account(&state, path.account).await?;
    let now = state.now();
    let grants = state.seats.list(path.account).await?;
    let seats = state.seats.usage(path.account, now).await?.into();
    Ok(HttpResponse::Ok()
        .json(SeatList { grants: grants.into_iter().map(|g| SeatGrantView::of(g, now)).collect(), seats }))
}

/// Buys seats: a grant that waits for its payment (`pending_payment`) and seats nobody yet.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/seats", tag = "seats", params(AccountPath),
    request_body = CreateSeats, security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 201, body = SeatGrantView, headers(("Location" = String, description = "The new grant"))),
        (status = 403, body = ProblemBody, content_type = PROBLEM),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "order_reference_taken", body = ProblemBody, content_type = PROBLEM),
        (status = 422, body = ProblemBody, content_type = PROBLEM),
        (status = 415, description = "unsupported_media_type: the body is not application/json", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn create_seats(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<AccountPath>,
    body: web::Json<CreateSeats>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), Need::Manage)?;
    require_account(&state, path.account).await?;
    let body = body.into_inner();
    let quantity = whole(&body.quantity).ok_or_else(|| Problem::validation("quantity", "must be a whole number"))?;
    let new = NewSeatGrant::parse(quantity, &body.order_reference, body.extend_other_grants)?;
    let now = state.now();
    let grant = state.seats.create(path.account, new, &caller.actor(&req), now).await?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/accounts/{}/seats/{}", path.account, grant.id)))
        .json(SeatGrantView::of(grant, now)))
}

/// Registers the payment of a grant (the POS backend only): its seats count for one year
/// from now, members suspended when seats lapsed come back up to the free seats, and with
/// `extend_other_grants` the account's other active grants now end with this one.
/// Repeating it changes nothing.
#[utoipa::path(post, path = "/api/v1/accounts/{account}/seats/{grant}/paid", tag = "seats", params(GrantPath),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 200, body = PaidSeats),
        (status = 403, body = ProblemBody, content_type = PROBLEM),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn pay_seats(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<GrantPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), Need::Backend)?;
    require_account(&state, path.account).await?;
    let now = state.now();
    let paid = state.seats.pay(path.account, path.grant, &caller.actor(&req), now).await.map_err(grant_not_found)?;
    let seats = paid.seats.into();
    Ok(HttpResponse::Ok().json(PaidSeats {
        grant: SeatGrantView::of(paid.grant, now),
        restored: paid.restored.iter().map(ToString::to_string).collect(),
        seats,
    }))
}

/// Removes a grant, refused with `seats_in_use` while the seats left would not cover the
/// active members ("delete the users first").
#[utoipa::path(delete, path = "/api/v1/accounts/{account}/seats/{grant}", tag = "seats", params(GrantPath),
    security(("bearer" = ["ponte.admin"])),
    responses(
        (status = 204, description = "Removed"),
        (status = 403, body = ProblemBody, content_type = PROBLEM),
        (status = 404, body = ProblemBody, content_type = PROBLEM),
        (status = 409, description = "seats_in_use", body = ProblemBody, content_type = PROBLEM),
    ))]
pub async fn delete_seats(
    caller: Caller,
    req: HttpRequest,
    path: web::Path<GrantPath>,
    state: web::Data<AppState>,
) -> ApiResult {
    caller.check(Some(path.account), Need::Manage)?;
    require_account(&state, path.account).await?;
    state.seats.remove(path.account, path.grant, &caller.actor(&req), state.now()).await.map_err(grant_not_found)?;
    Ok(HttpResponse::NoContent().finish())
}
