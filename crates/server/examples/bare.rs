//! Bare ceilings written with the raw libraries, not with Ponte's code paths: a minimal
//! actix-web server that does only the essential work of what a Ponte route does, so a
//! benchmark can say how close Ponte comes to it.
//!
//! | route | the essential work |
//! | --- | --- |
//! | `POST /sign` | an ES256 access token (`typ: at+jwt`, the claims of a `client_credentials` token) signed with an aws-lc-rs key pair parsed once at start |
//! | `POST /sign-client` | the same, for a `grant_type=client_credentials` form from a client authenticated with HTTP Basic (the secret's SHA-256 compared in constant time with the one kept), as the token endpoint must; 401 otherwise |
//! | `POST /verify` (`token=…`) | jsonwebtoken's ES256 verification of such a token with issuer, audience and expiry |
//! | `GET /session` | one Redis `GET` through a multiplexed connection manager |
//!
//! No database, no middleware, no logging.
//!
//! ```sh
//! cargo run --release -p ponte-server --example bare -- 127.0.0.1:9091 redis://127.0.0.1:6379/
//! ```
//!
//! Without a Redis URL `/session` answers 404. `BARE_WORKERS` sets the worker count
//! (default: actix's, one per core, the same default as Ponte's `workers`).

use std::time::{SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

const ISSUER: &str = "http://127.0.0.1";
const AUDIENCE: &str = "ponte-api";
/// The client `/sign-client` authenticates: `BARE_CLIENT_ID:BARE_CLIENT_SECRET` as HTTP Basic.
pub const BARE_CLIENT_ID: &str = "cl_barebenchclient00000000";
/// Its secret (only its SHA-256 is kept).
pub const BARE_CLIENT_SECRET: &str = "bare-bench-secret-0123456789abcdefghijklmnop";
/// The session key `/session` reads (written once at start).
const SESSION_KEY: &str = "bare:session:0123456789abcdef0123456789abcdef";

struct Bare {
    pair: EcdsaKeyPair,
    header: String,
    decoding: DecodingKey,
    validation: Validation,
    rng: SystemRandom,
    redis: Option<redis::aio::ConnectionManager>,
    secret_digest: aws_lc_rs::digest::Digest,
}

/// The claims of a `client_credentials` access token (RFC 9068).
#[derive(Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    client_id: String,
    scope: String,
    iat: i64,
    exp: i64,
    jti: String,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

#[derive(Deserialize)]
struct GrantForm {
    grant_type: String,
}

/// Whether the request's HTTP Basic credentials are the bare client's.
fn authenticated(req: &HttpRequest, state: &Bare) -> bool {
    let Some(encoded) =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = STANDARD.decode(encoded) else { return false };
    let Some(colon) = decoded.iter().position(|b| *b == b':') else { return false };
    let (id, secret) = (&decoded[..colon], &decoded[colon + 1..]);
    let presented = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret);
    id == BARE_CLIENT_ID.as_bytes() && verify_slices_are_equal(presented.as_ref(), state.secret_digest.as_ref()).is_ok()
}

async fn sign_client(req: HttpRequest, state: web::Data<Bare>, form: web::Form<GrantForm>) -> HttpResponse {
    if form.grant_type != "client_credentials" {
        return HttpResponse::BadRequest().finish();
    }
    if !authenticated(&req, &state) {
        return HttpResponse::Unauthorized().finish();
    }
    sign(state).await
}

async fn sign(state: web::Data<Bare>) -> HttpResponse {
    let iat = now();
    let mut jti = [0u8; 16];
    if getrandom::fill(&mut jti).is_err() {
        return HttpResponse::InternalServerError().finish();
    }
    let claims = Claims {
        iss: ISSUER.into(),
        sub: "cl_barebenchclient00000000".into(),
        aud: AUDIENCE.into(),
        client_id: "cl_barebenchclient00000000".into(),
        scope: "ponte.admin".into(),
        iat,
        exp: iat + 600,
        jti: URL_SAFE_NO_PAD.encode(jti),
    };
    let Ok(json) = serde_json::to_vec(&claims) else { return HttpResponse::InternalServerError().finish() };
    let message = format!("{}.{}", state.header, URL_SAFE_NO_PAD.encode(json));
    match state.pair.sign(&state.rng, message.as_bytes()) {
        Ok(signature) => HttpResponse::Ok()
            .content_type("application/json")
            .body(format!(r#"{{"access_token":"{message}.{}"}}"#, URL_SAFE_NO_PAD.encode(signature))),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

#[derive(Deserialize)]
struct VerifyForm {
    token: String,
}

async fn verify(state: web::Data<Bare>, form: web::Form<VerifyForm>) -> HttpResponse {
    match jsonwebtoken::decode::<Claims>(&form.token, &state.decoding, &state.validation) {
        Ok(data) => HttpResponse::Ok().json(serde_json::json!({"active": true, "sub": data.claims.sub})),
        Err(_) => HttpResponse::Ok().json(serde_json::json!({"active": false})),
    }
}

async fn session(state: web::Data<Bare>) -> HttpResponse {
    let Some(mut redis) = state.redis.clone() else { return HttpResponse::NotFound().finish() };
    match redis::cmd("GET").arg(SESSION_KEY).query_async::<Option<String>>(&mut redis).await {
        Ok(Some(value)) => HttpResponse::Ok().content_type("text/plain").body(value),
        Ok(None) => HttpResponse::NotFound().finish(),
        Err(_) => HttpResponse::ServiceUnavailable().finish(),
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let bind = args.next().unwrap_or_else(|| "127.0.0.1:9091".into());
    let redis_url = args.next();
    let other = |e: String| std::io::Error::other(e);

    let rng = SystemRandom::new();
    let generated = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(|e| other(e.to_string()))?;
    let pkcs8 = generated.to_pkcs8v1().map_err(|e| other(e.to_string()))?;
    // Parsed once, here; every request signs with it.
    let pair =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).map_err(|e| other(e.to_string()))?;
    let point = pair.public_key().as_ref().to_vec();
    let (x, y) = (URL_SAFE_NO_PAD.encode(&point[1..33]), URL_SAFE_NO_PAD.encode(&point[33..65]));
    let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| other(e.to_string()))?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    let header = URL_SAFE_NO_PAD.encode(r#"{"typ":"at+jwt","alg":"ES256","kid":"bare0000bare0000"}"#);

    let redis = match redis_url {
        Some(url) => {
            let client = redis::Client::open(url).map_err(|e| other(e.to_string()))?;
            let mut manager = client.get_connection_manager().await.map_err(|e| other(e.to_string()))?;
            let value = r#"{"user_id":"01J00000000000000000000000","account_id":"01J00000000000000000000000"}"#;
            redis::cmd("SET")
                .arg(SESSION_KEY)
                .arg(value)
                .arg("EX")
                .arg(3600)
                .query_async::<()>(&mut manager)
                .await
                .map_err(|e| other(e.to_string()))?;
            Some(manager)
        }
        None => None,
    };
    let secret_digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, BARE_CLIENT_SECRET.as_bytes());
    let state = web::Data::new(Bare { pair, header, decoding, validation, rng, redis, secret_digest });
    let mut server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .route("/sign", web::post().to(sign))
            .route("/sign-client", web::post().to(sign_client))
            .route("/verify", web::post().to(verify))
            .route("/session", web::get().to(session))
    });
    if let Some(n) = std::env::var("BARE_WORKERS").ok().and_then(|n| n.parse().ok()) {
        server = server.workers(n);
    }
    server.bind(bind)?.run().await
}
