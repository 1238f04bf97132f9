//! The bare ceiling for `bench/load.sh`: a minimal actix-web server that only signs or
//! only verifies an ES256 access token with Ponte's own key ring, so the load script can
//! compare `/oauth2/token` and `/oauth2/introspect` against what the crypto alone allows.
//!
//! No database, no sessions, no middleware, no logging.
//!
//! ```sh
//! cargo run --release --example ceiling -p ponte-server -- 127.0.0.1:9090
//! curl -s -X POST http://127.0.0.1:9090/sign          # prints a token
//! curl -s -d "token=$TOKEN" http://127.0.0.1:9090/verify   # {"active":true,...}
//! ```
//!
//! The bind address comes from the first argument, else `CEILING_BIND`, else
//! `127.0.0.1:9090`. `CEILING_WORKERS` sets the worker count (default: actix's, one per
//! core, the same default as Ponte's `workers`).

use actix_web::http::header;
use actix_web::{App, HttpResponse, HttpServer, web};
use ponte_identity::keys::{KeyRing, KeyStatus, SigningAlg, generate};
use ponte_identity::seal::MasterKeys;
use ponte_identity::token::{API_AUDIENCE, AccessTokenClaims};
use serde::Deserialize;
use serde_json::json;
use time::{Duration, OffsetDateTime};

/// A client id of the same length as the ones `ponte client create` makes.
const CLIENT_ID: &str = "cl_ceilingbenchclient0000";
const SCOPE: &str = "ponte.admin";
const TTL: Duration = Duration::minutes(10);

#[derive(Debug)]
struct Ceiling {
    ring: KeyRing,
    issuer: String,
}

#[derive(Debug, Deserialize)]
struct VerifyForm {
    token: String,
}

async fn sign(state: web::Data<Ceiling>) -> HttpResponse {
    let claims = AccessTokenClaims::for_client(&state.issuer, CLIENT_ID, SCOPE, OffsetDateTime::now_utc(), TTL);
    match state.ring.sign_access_token(&claims) {
        Ok(token) => HttpResponse::Ok().content_type("text/plain").body(token),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}

async fn verify(state: web::Data<Ceiling>, form: web::Form<VerifyForm>) -> HttpResponse {
    match state.ring.verify_access_token(&form.token, &state.issuer, API_AUDIENCE, OffsetDateTime::now_utc()) {
        Ok(claims) => HttpResponse::Ok()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({"active": true, "sub": claims.sub, "exp": claims.exp})),
        Err(e) => HttpResponse::BadRequest().json(json!({"active": false, "error": e.to_string()})),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let bind = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("CEILING_BIND").ok())
        .unwrap_or_else(|| "127.0.0.1:9090".to_owned());
    let workers = match std::env::var("CEILING_WORKERS") {
        Ok(n) => Some(n.parse::<usize>().map_err(|e| std::io::Error::other(format!("CEILING_WORKERS: {e}")))?),
        Err(_) => None,
    };

    let master = MasterKeys::generate();
    let key = generate(&master, SigningAlg::ES256, KeyStatus::Current, OffsetDateTime::now_utc())
        .map_err(|e| std::io::Error::other(format!("cannot generate a key: {e}")))?;
    let ring = KeyRing::from_stored(&[key], &master)
        .map_err(|e| std::io::Error::other(format!("cannot build the key ring: {e}")))?;
    let state = web::Data::new(Ceiling { ring, issuer: format!("http://{bind}") });

    let mut server = HttpServer::new(move || {
        App::new().app_data(state.clone()).route("/sign", web::post().to(sign)).route("/verify", web::post().to(verify))
    })
    .bind(&bind)?;
    if let Some(n) = workers {
        server = server.workers(n.max(1));
    }
    eprintln!("ceiling listening on http://{bind}");
    server.run().await
}
