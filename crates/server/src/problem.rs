//! The one error shape: RFC 9457 `application/problem+json` with a stable `code`.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use utoipa::ToSchema;

/// Seconds a caller refused as `busy` (the password hashing queue is full) should wait.
pub const BUSY_RETRY_AFTER_SECS: u32 = 1;

/// A field-level complaint inside a problem.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FieldError {
    /// The field, as named in the request.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

/// An RFC 9457 problem document.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProblemBody {
    /// `urn:ponte:problem:<code>`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Short summary, stable per code.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// Stable machine-readable code.
    pub code: String,
    /// What happened in this case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Field-level errors for validation failures.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// An error a handler returns; becomes a problem response.
#[derive(Debug, Clone)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: Option<String>,
    errors: Vec<FieldError>,
    www_authenticate: Option<String>,
    retry_after: Option<u32>,
}

impl Problem {
    /// A problem with a status, a stable code and a title.
    pub fn new(status: StatusCode, code: &'static str, title: &'static str) -> Self {
        Self { status, code, title, detail: None, errors: Vec::new(), www_authenticate: None, retry_after: None }
    }

    /// Adds the case-specific explanation.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a field-level error.
    pub fn field(mut self, field: impl Into<String>, message: impl Into<String>) -> Self {
        self.errors.push(FieldError { field: field.into(), message: message.into() });
        self
    }

    /// Sets `WWW-Authenticate` (401 and 403 on bearer-protected routes).
    pub fn www_authenticate(mut self, value: impl Into<String>) -> Self {
        self.www_authenticate = Some(value.into());
        self
    }

    /// Sets `Retry-After` in seconds (503 and 429).
    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    /// 400 for a request that cannot be parsed.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, "Bad request").detail(detail)
    }

    /// 422 for a parsed request that breaks a rule.
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "Validation failed")
            .detail(message.clone())
            .field(field, message)
    }

    /// 404 for a thing that does not exist (or is not the caller's to see).
    pub fn not_found(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, "Not found").detail(detail)
    }

    /// 500; the cause goes to the log, never to the client.
    pub fn internal(cause: &dyn std::error::Error) -> Self {
        tracing::error!(error = %cause, source = ?cause.source().map(ToString::to_string), "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Internal error")
            .detail("Something went wrong on our side; it has been logged.")
    }

    /// 503 for a dependency that is away.
    pub fn unavailable(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, "Service unavailable").detail(detail).retry_after(5)
    }

    /// The body as sent.
    pub fn body(&self) -> ProblemBody {
        ProblemBody {
            type_: format!("urn:ponte:problem:{}", self.code),
            title: self.title.to_owned(),
            status: self.status.as_u16(),
            code: self.code.to_owned(),
            detail: self.detail.clone(),
            errors: self.errors.clone(),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.code)
    }
}

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

impl ResponseError for Problem {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        response.insert_header((header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON)));
        response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        if let Some(value) = &self.www_authenticate {
            response.insert_header((header::WWW_AUTHENTICATE, value.clone()));
        }
        if let Some(secs) = self.retry_after {
            response.insert_header((header::RETRY_AFTER, secs.to_string()));
        }
        response.body(serde_json::to_string(&self.body()).unwrap_or_default())
    }
}

impl From<ponte_identity::Error> for Problem {
    fn from(e: ponte_identity::Error) -> Self {
        use ponte_identity::Error as E;
        match e {
            E::DatabaseUnavailable(cause) => {
                tracing::warn!(error = %cause, "database unavailable");
                Self::unavailable("database_unavailable", "The database is not reachable; try again shortly.")
            }
            E::SessionStoreUnavailable(cause) => {
                tracing::warn!(error = %cause, "session store unavailable");
                Self::unavailable("session_store_unavailable", "The session store is not reachable; try again shortly.")
            }
            E::Busy => Self::unavailable("busy", "The server has too much work queued; try again in a moment.")
                .retry_after(BUSY_RETRY_AFTER_SECS),
            E::UnstorableText(cause) => {
                tracing::info!(error = %cause, "refused a value the database cannot store");
                Self::bad_request("invalid_characters", "A value holds a character that is not allowed (such as NUL).")
            }
            E::Invalid(message) => Self::validation("body", message),
            other => Self::internal(&other),
        }
    }
}

impl From<ponte_linking::Error> for Problem {
    fn from(e: ponte_linking::Error) -> Self {
        use ponte_linking::Error as E;
        match e {
            E::NotFound("account") => Self::not_found("account_not_found", "No such account."),
            E::NotFound("user") => Self::not_found("user_not_found", "No such user in this account."),
            E::NotFound("company") => Self::not_found("company_not_found", "No such company in this account."),
            E::NotFound(what) => Self::not_found("not_found", format!("No such {what}.")),
            E::EmailTaken => Self::new(StatusCode::CONFLICT, "email_taken", "Conflict")
                .detail("A user with this email already exists."),
            E::Invalid { field, message } => Self::validation(field, message),
            E::InvalidFields(errors) => {
                let detail = ponte_linking::company::describe(&errors);
                let first = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "validation_failed", "Validation failed");
                errors.into_iter().fold(first.detail(detail), |p, e| p.field(e.field, e.message))
            }
            E::Conflict { code, message } => Self::new(StatusCode::CONFLICT, code, "Conflict").detail(message),
            E::Identity(inner) => inner.into(),
        }
    }
}

impl From<ponte_linking::integration::store::Refused> for Problem {
    fn from(r: ponte_linking::integration::store::Refused) -> Self {
        use ponte_linking::integration::store::Refused as R;
        let conflict = |code, detail: String| Self::new(StatusCode::CONFLICT, code, "Conflict").detail(detail);
        match r {
            R::NoCompany => Self::not_found("company_not_found", "No such company in this account."),
            R::Illegal(illegal) => conflict(illegal.code(), illegal.to_string()),
            R::Invite(refusal) => {
                let detail = format!("The invite cannot be used ({}).", refusal.code());
                match refusal {
                    ponte_linking::invite::InviteRefusal::Unknown => Self::not_found("invite_unknown", detail),
                    other => conflict(other.code(), detail),
                }
            }
            R::NoInvitee => conflict("invitee_missing", r.to_string()),
            R::InviteeNotAllowed => conflict("invitee_not_allowed", r.to_string()),
            R::InviteeWithoutExternalId => conflict("external_id_missing", r.to_string()),
            R::PlatformUnavailable(cause) => {
                tracing::warn!(%cause, "invoicing platform unavailable");
                Self::unavailable(
                    "platform_unavailable",
                    "The invoicing platform cannot be reached; try again shortly.",
                )
                .retry_after(30)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ponte_linking::Error as L;

    fn status_and_code(p: Problem) -> (u16, &'static str) {
        (p.status.as_u16(), p.code)
    }

    #[test]
    fn domain_errors_map_to_stable_statuses_and_codes() {
        assert_eq!(status_and_code(L::NotFound("user").into()), (404, "user_not_found"));
        assert_eq!(status_and_code(L::NotFound("account").into()), (404, "account_not_found"));
        assert_eq!(status_and_code(L::EmailTaken.into()), (409, "email_taken"));
        assert_eq!(status_and_code(L::invalid("email", "bad").into()), (422, "validation_failed"));
        assert_eq!(
            status_and_code(L::Conflict { code: "owner_cannot_be_deleted", message: String::new() }.into()),
            (409, "owner_cannot_be_deleted")
        );
        let away = ponte_identity::Error::SessionStoreUnavailable("refused".into());
        assert_eq!(status_and_code(away.into()), (503, "session_store_unavailable"));
        let away = ponte_identity::Error::DatabaseUnavailable(sqlx::Error::PoolTimedOut);
        assert_eq!(status_and_code(away.into()), (503, "database_unavailable"));
        let busy: Problem = ponte_identity::Error::Busy.into();
        assert_eq!(busy.error_response().headers().get(header::RETRY_AFTER).unwrap(), "1");
        assert_eq!(status_and_code(busy), (503, "busy"));
    }

    #[test]
    fn several_invalid_fields_become_one_422_naming_each() {
        use ponte_linking::company::FieldError as F;
        let e: L = vec![F::new("vat_number", "the check digit is wrong"), F::new("pec", "email must contain @")].into();
        let p: Problem = e.into();
        let body = serde_json::to_value(p.body()).unwrap();
        assert_eq!(status_and_code(p), (422, "validation_failed"));
        assert_eq!(body["detail"], "vat_number: the check digit is wrong; pec: email must contain @");
        assert_eq!(
            body["errors"],
            serde_json::json!([
                {"field": "vat_number", "message": "the check digit is wrong"},
                {"field": "pec", "message": "email must contain @"},
            ])
        );
    }

    #[test]
    fn integration_refusals_name_the_state_or_the_missing_piece() {
        use ponte_linking::integration::store::Refused as R;
        use ponte_linking::integration::{Illegal, IntegrationState};
        let illegal = R::Illegal(Illegal { state: IntegrationState::Disabled, event: "confirm" });
        assert_eq!(status_and_code(illegal.into()), (409, "integration_is_disabled"));
        assert_eq!(status_and_code(R::NoCompany.into()), (404, "company_not_found"));
        assert_eq!(status_and_code(R::InviteeWithoutExternalId.into()), (409, "external_id_missing"));
        let away: Problem = R::PlatformUnavailable("connection refused to 10.0.0.1".into()).into();
        let body = serde_json::to_string(&away.body()).unwrap();
        assert!(!body.contains("10.0.0.1"), "the cause stays in the log: {body}");
        assert_eq!(status_and_code(away), (503, "platform_unavailable"));
        let expired = R::Invite(ponte_linking::invite::InviteRefusal::Expired);
        assert_eq!(status_and_code(expired.into()), (409, "invite_expired"));
    }

    #[test]
    fn database_text_never_reaches_the_body() {
        let e = ponte_identity::Error::Database(sqlx::Error::Protocol("relation \"users\" secret detail".into()));
        let p: Problem = e.into();
        let body = serde_json::to_string(&p.body()).unwrap();
        assert_eq!(p.status.as_u16(), 500);
        assert!(!body.contains("relation"), "{body}");
    }

    #[test]
    fn response_is_problem_json_with_headers() {
        let p = Problem::new(StatusCode::UNAUTHORIZED, "invalid_token", "Unauthorized")
            .www_authenticate("Bearer realm=\"ponte\"");
        let r = p.error_response();
        assert_eq!(r.headers().get(header::CONTENT_TYPE).unwrap(), PROBLEM_JSON);
        assert_eq!(r.headers().get(header::WWW_AUTHENTICATE).unwrap(), "Bearer realm=\"ponte\"");
    }
}
