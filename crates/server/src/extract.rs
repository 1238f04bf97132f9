//! Turning every way a request can be malformed into a problem document.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::error::{JsonPayloadError, UrlencodedError};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, ResponseError, web};

use crate::forwarded;
use crate::problem::Problem;
use crate::state::AppState;

/// JSON bodies: size limit, `application/json` only, serde's message in the detail.
pub fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(limit).error_handler(|err, _req| {
        let problem = match &err {
            JsonPayloadError::ContentType => {
                Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type")
                    .detail("Send the body as application/json.")
            }
            JsonPayloadError::Overflow { .. } | JsonPayloadError::OverflowKnownLength { .. } => too_large(),
            JsonPayloadError::Deserialize(e) => {
                Problem::bad_request("invalid_json", format!("The body is not valid: {e}"))
            }
            _ => Problem::bad_request("invalid_json", "The body could not be read as JSON."),
        };
        problem.into()
    })
}

/// Form bodies (pages and the token endpoint).
pub fn form_config(limit: usize) -> web::FormConfig {
    web::FormConfig::default().limit(limit).error_handler(|err, _req| {
        let problem = match &err {
            UrlencodedError::Overflow { .. } => too_large(),
            UrlencodedError::ContentType => {
                Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Unsupported media type")
                    .detail("Send the body as application/x-www-form-urlencoded.")
            }
            other => Problem::bad_request("invalid_form", format!("The form is not valid: {other}")),
        };
        problem.into()
    })
}

/// Path segments such as ids.
pub fn path_config() -> web::PathConfig {
    web::PathConfig::default().error_handler(|err, req| {
        Problem::bad_request("invalid_path", format!("{} is not a valid path here: {err}", req.path())).into()
    })
}

/// Query strings.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        Problem::bad_request("invalid_query", format!("The query is not valid: {err}")).into()
    })
}

/// Longest query string accepted (longer: 414). An authorization request needs about 2 KiB.
pub const MAX_QUERY_BYTES: usize = 8 * 1024;
/// Most header bytes (names and values) accepted in one request (more: 431).
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The problem document for a query string or headers beyond the limits above, checked
/// before any handler runs (by [`crate::telemetry::Observe`], which every request passes).
/// What actix-web refuses while parsing, before the application sees the request, stays a
/// bare status: see the README's limits.
pub fn head_problem(req: &ServiceRequest) -> Option<Problem> {
    if req.query_string().len() > MAX_QUERY_BYTES {
        return Some(
            Problem::new(StatusCode::URI_TOO_LONG, "uri_too_long", "URI too long")
                .detail(format!("The query string is longer than {MAX_QUERY_BYTES} bytes.")),
        );
    }
    let header_bytes: usize = req.headers().iter().map(|(name, value)| name.as_str().len() + value.len()).sum();
    (header_bytes > MAX_HEADER_BYTES).then(|| {
        Problem::new(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large", "Headers too large")
            .detail(format!("The request headers take more than {MAX_HEADER_BYTES} bytes."))
    })
}

fn too_large() -> Problem {
    Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "Payload too large")
        .detail("The request body is larger than this server accepts.")
}

/// A safety net: an error response that is not already a problem document or a page
/// (actix's own 404/405/413, a panic's 500) is rewritten as one; any other passes as it is
/// (left). Called by [`crate::telemetry::Observe`] for every 4xx and 5xx answer.
pub fn problem_for_bare_error<B: MessageBody + 'static>(res: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    let typed = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| !ct.starts_with("text/plain"));
    if typed {
        return res.map_into_left_body();
    }
    let status = res.status();
    let allow = res.headers().get(header::ALLOW).cloned();
    let problem = match status {
        StatusCode::NOT_FOUND => Problem::not_found("not_found", "Nothing here."),
        StatusCode::METHOD_NOT_ALLOWED => Problem::new(status, "method_not_allowed", "Method not allowed")
            .detail("This path does not accept that method."),
        StatusCode::PAYLOAD_TOO_LARGE => too_large(),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => Problem::new(status, "unsupported_media_type", "Unsupported media type"),
        s if s.is_server_error() => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "Internal error"),
        s => Problem::new(s, "bad_request", "Bad request"),
    };
    let (req, _) = res.into_parts();
    let mut response = problem.error_response();
    if let Some(allow) = allow {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    ServiceResponse::new(req, response).map_into_right_body()
}

/// The client address for audit and rate limits: the TCP peer, or, when the peer is one
/// of `trusted_proxies`, the client their forwarding header names (see [`crate::forwarded`]).
pub fn client_ip(req: &HttpRequest) -> Option<String> {
    let peer = req.peer_addr()?.ip();
    let config = req.app_data::<web::Data<AppState>>().map(|s| s.config.clone());
    let Some(config) = config.filter(|c| !c.trusted_proxies.is_empty()) else {
        return Some(peer.to_canonical().to_string());
    };
    let header = config.forwarded_header;
    let lines: Vec<_> = req.headers().get_all(header.name()).map(|v| String::from_utf8_lossy(v.as_bytes())).collect();
    let value = (!lines.is_empty()).then(|| lines.join(","));
    Some(forwarded::client_addr(peer, &config.trusted_proxies, header, value.as_deref()).to_string())
}

/// Sets the headers every server-rendered page carries.
pub fn page_headers(response: &mut actix_web::HttpResponse) {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
}
