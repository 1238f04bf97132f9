//! Token signing keys: ES256, generated here, private half sealed with the master key.
//!
//! Each key has an id (`kid`), a status and a creation time. The ring signs with the
//! current key and verifies with every published one, so rotation (later: `next`,
//! `previous`) never breaks a token still in flight.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::clock::{from_unix, to_unix};
use crate::db::Database;
use crate::seal::MasterKey;
use crate::secret::random_token;
use crate::{Error, Result};

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Signs new tokens.
    Current,
    /// Published ahead of use, so verifiers have it before the first token.
    Next,
    /// No longer signs; published until its tokens have expired.
    Previous,
    /// Gone from the JWKS.
    Retired,
}

impl KeyStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Current => "current",
            Self::Next => "next",
            Self::Previous => "previous",
            Self::Retired => "retired",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        match s {
            "current" => Ok(Self::Current),
            "next" => Ok(Self::Next),
            "previous" => Ok(Self::Previous),
            "retired" => Ok(Self::Retired),
            other => Err(Error::Corrupt(format!("key status {other:?}"))),
        }
    }
}

/// The public half of a key, as published in the JWKS (RFC 7517).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// Key type: `EC`.
    pub kty: String,
    /// Curve: `P-256`.
    pub crv: String,
    /// X coordinate, base64url.
    pub x: String,
    /// Y coordinate, base64url.
    pub y: String,
    /// Key id.
    pub kid: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// `ES256`.
    pub alg: String,
}

/// A key as stored.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// Where it is in its life.
    pub status: KeyStatus,
    /// PKCS#8 private key, sealed with the master key (context: the kid).
    pub private_sealed: String,
    /// The public JWK.
    pub public: PublicJwk,
    /// When it was made.
    pub created_at: OffsetDateTime,
}

/// Where keys are kept.
#[async_trait]
pub trait KeyRepo: Send + Sync + std::fmt::Debug {
    /// Every key not retired, oldest first.
    async fn published(&self) -> Result<Vec<StoredKey>>;
    /// Stores a new key.
    async fn insert(&self, key: &StoredKey) -> Result<()>;
}

/// Keys in the relational store.
#[derive(Debug, Clone)]
pub struct SqlKeys {
    db: Database,
}

impl SqlKeys {
    /// Keys kept in `db`.
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait]
impl KeyRepo for SqlKeys {
    async fn published(&self) -> Result<Vec<StoredKey>> {
        let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
            "SELECT kid, status, private_sealed, public_jwk, created_at FROM signing_keys \
             WHERE status <> 'retired' ORDER BY created_at, kid",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .map(|(kid, status, private_sealed, public_jwk, created_at)| {
                Ok(StoredKey {
                    kid,
                    status: KeyStatus::parse(&status)?,
                    private_sealed,
                    public: serde_json::from_str(&public_jwk)
                        .map_err(|e| Error::Corrupt(e.to_string()))?,
                    created_at: from_unix(created_at),
                })
            })
            .collect()
    }

    async fn insert(&self, key: &StoredKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, status, private_sealed, public_jwk, created_at) \
             VALUES ($1, 'ES256', $2, $3, $4, $5)",
        )
        .bind(&key.kid)
        .bind(key.status.as_str())
        .bind(&key.private_sealed)
        .bind(serde_json::to_string(&key.public).map_err(|e| Error::Corrupt(e.to_string()))?)
        .bind(to_unix(key.created_at))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }
}

/// Makes a new ES256 key, sealed under `master`.
pub fn generate(master: &MasterKey, status: KeyStatus, now: OffsetDateTime) -> Result<StoredKey> {
    let crypto = |e: aws_lc_rs::error::Unspecified| Error::Crypto(e.to_string());
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(crypto)?;
    let pkcs8 = pair.to_pkcs8v1().map_err(crypto)?;
    let point = pair.public_key().as_ref();
    // Uncompressed SEC1 point: 0x04 ‖ X (32 bytes) ‖ Y (32 bytes).
    if point.len() != 65 || point[0] != 4 {
        return Err(Error::Crypto("unexpected public key encoding".into()));
    }
    let kid = random_token()[..16].to_owned();
    Ok(StoredKey {
        private_sealed: master.seal(pkcs8.as_ref(), &kid)?,
        public: PublicJwk {
            kty: "EC".into(),
            crv: "P-256".into(),
            x: URL_SAFE_NO_PAD.encode(&point[1..33]),
            y: URL_SAFE_NO_PAD.encode(&point[33..65]),
            kid: kid.clone(),
            use_: "sig".into(),
            alg: "ES256".into(),
        },
        kid,
        status,
        created_at: now,
    })
}

/// The keys in use: one to sign with, all published ones to verify with.
pub struct KeyRing {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, DecodingKey>,
    jwks: Vec<PublicJwk>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("signing_kid", &self.signing_kid)
            .finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads the published keys, creating the first current key if there is none.
    pub async fn load_or_create(
        repo: &dyn KeyRepo,
        master: &MasterKey,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let mut keys = repo.published().await?;
        if !keys.iter().any(|k| k.status == KeyStatus::Current) {
            let key = generate(master, KeyStatus::Current, now)?;
            repo.insert(&key).await?;
            // Another replica may have raced us: re-read and let the oldest current key win.
            keys = repo.published().await?;
        }
        Self::from_stored(&keys, master)
    }

    /// Builds the ring from stored keys; the oldest current key signs.
    pub fn from_stored(keys: &[StoredKey], master: &MasterKey) -> Result<Self> {
        let current = keys
            .iter()
            .find(|k| k.status == KeyStatus::Current)
            .ok_or_else(|| Error::Corrupt("no current signing key".into()))?;
        let pkcs8 = master.open(&current.private_sealed, &current.kid)?;
        let mut verifying = HashMap::new();
        for key in keys {
            let decoding = DecodingKey::from_ec_components(&key.public.x, &key.public.y)
                .map_err(|e| Error::Crypto(e.to_string()))?;
            verifying.insert(key.kid.clone(), decoding);
        }
        Ok(Self {
            signing_kid: current.kid.clone(),
            signing: EncodingKey::from_ec_der(&pkcs8),
            verifying,
            jwks: keys.iter().map(|k| k.public.clone()).collect(),
        })
    }

    /// The key id new tokens carry.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    pub(crate) fn signing_key(&self) -> &EncodingKey {
        &self.signing
    }

    pub(crate) fn verifying_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifying.get(kid)
    }

    /// The public keys to publish at `/oauth2/jwks`.
    pub fn jwks(&self) -> &[PublicJwk] {
        &self.jwks
    }
}
