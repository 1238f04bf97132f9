//! Bearer-token authentication for the REST API.

use std::future::{Ready, ready};

use actix_web::dev::Payload;
use actix_web::http::StatusCode;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use ponte_identity::token::{API_AUDIENCE, AccessTokenClaims};

use crate::problem::Problem;
use crate::state::AppState;

/// The scope that lets a client administer every account (the POS backend).
pub const ADMIN_SCOPE: &str = "ponte.admin";

/// A verified bearer token carrying the `ponte.admin` scope.
#[derive(Debug, Clone)]
pub struct AdminToken(pub AccessTokenClaims);

fn unauthorized(error: Option<&str>, detail: &str) -> Problem {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"ponte\", error=\"{e}\""),
        None => "Bearer realm=\"ponte\"".to_owned(),
    };
    Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Unauthorized")
        .detail(detail)
        .www_authenticate(challenge)
}

fn authenticate(req: &HttpRequest) -> Result<AdminToken, Problem> {
    let state = req
        .app_data::<web::Data<AppState>>()
        .ok_or_else(|| Problem::internal(&std::io::Error::other("application state missing")))?;
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            None,
            "Send an access token as 'Authorization: Bearer <token>'.",
        ));
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            unauthorized(
                Some("invalid_request"),
                "The Authorization header must use the Bearer scheme.",
            )
        })?;
    let claims = state
        .keys
        .verify_access_token(token, &state.issuer, API_AUDIENCE, state.now())
        .map_err(|_| {
            unauthorized(
                Some("invalid_token"),
                "The access token is invalid or expired.",
            )
        })?;
    if !claims.has_scope(ADMIN_SCOPE) {
        return Err(
            Problem::new(StatusCode::FORBIDDEN, "insufficient_scope", "Forbidden")
                .detail(format!("This operation needs the {ADMIN_SCOPE} scope."))
                .www_authenticate(format!(
                    "Bearer realm=\"ponte\", error=\"insufficient_scope\", scope=\"{ADMIN_SCOPE}\""
                )),
        );
    }
    Ok(AdminToken(claims))
}

impl FromRequest for AdminToken {
    type Error = Problem;
    type Future = Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        ready(authenticate(req))
    }
}
