//! Token signing keys: generated here, private half sealed with the master key, rotated.
//!
//! Each key has an id (`kid`), an algorithm, a status and the times it became current and
//! stopped being current. The JWKS publishes the current key, the next one (ahead of
//! use, so verifiers cache it before the first token) and previous ones until every token
//! they signed has expired. Rotation promotes next → current and current → previous.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::clock::{from_unix, to_unix};
use crate::db::Database;
use crate::seal::MasterKeys;
use crate::secret::random_token;
use crate::{Error, Result};

/// Where a key is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    /// Signs new tokens.
    Current,
    /// Published ahead of use.
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

/// The signature algorithm a deployment signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SigningAlg {
    /// ECDSA P-256 with SHA-256 (the default).
    ES256,
    /// Ed25519.
    EdDSA,
    /// RSA 2048 with PKCS#1 v1.5 and SHA-256, for verifiers that know nothing else.
    RS256,
}

impl SigningAlg {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
            Self::RS256 => "RS256",
        }
    }

    /// Parses the JOSE name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "ES256" => Ok(Self::ES256),
            "EdDSA" => Ok(Self::EdDSA),
            "RS256" => Ok(Self::RS256),
            other => Err(Error::Invalid(format!("signing algorithm {other:?} (use ES256, EdDSA or RS256)"))),
        }
    }

    fn jose(self) -> Algorithm {
        match self {
            Self::ES256 => Algorithm::ES256,
            Self::EdDSA => Algorithm::EdDSA,
            Self::RS256 => Algorithm::RS256,
        }
    }
}

/// The public half of a key, as published in the JWKS (RFC 7517, RFC 8037).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicJwk {
    /// `EC`, `OKP` or `RSA`.
    pub kty: String,
    /// `P-256` or `Ed25519` (absent for RSA).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub crv: String,
    /// X coordinate (or the Ed25519 public key), base64url (absent for RSA).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub x: String,
    /// Y coordinate (EC only), base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<String>,
    /// RSA modulus, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    /// RSA public exponent, base64url.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    /// Key id.
    pub kid: String,
    /// Always `sig`.
    #[serde(rename = "use")]
    pub use_: String,
    /// `ES256` or `EdDSA`.
    pub alg: String,
}

impl PublicJwk {
    fn decoding_key(&self) -> Result<DecodingKey> {
        let key = match (self.kty.as_str(), &self.y) {
            ("EC", Some(y)) => DecodingKey::from_ec_components(&self.x, y),
            ("OKP", None) => DecodingKey::from_ed_components(&self.x),
            ("RSA", None) => match (&self.n, &self.e) {
                (Some(n), Some(e)) => DecodingKey::from_rsa_components(n, e),
                _ => return Err(Error::Corrupt(format!("key {} lacks n or e", self.kid))),
            },
            _ => return Err(Error::Corrupt(format!("key {} has an unknown shape", self.kid))),
        };
        key.map_err(|e| Error::Crypto(e.to_string()))
    }
}

/// A key as stored.
#[derive(Debug, Clone)]
pub struct StoredKey {
    /// Key id.
    pub kid: String,
    /// Algorithm.
    pub alg: SigningAlg,
    /// Where it is in its life.
    pub status: KeyStatus,
    /// PKCS#8 private key, sealed with the master key (context: the kid).
    pub private_sealed: String,
    /// The public JWK.
    pub public: PublicJwk,
    /// When it was made.
    pub created_at: OffsetDateTime,
    /// When it became current.
    pub activated_at: Option<OffsetDateTime>,
    /// When it stopped being current.
    pub deactivated_at: Option<OffsetDateTime>,
}

/// Where keys are kept.
#[async_trait]
pub trait KeyRepo: Send + Sync + std::fmt::Debug {
    /// Every key not retired, oldest first.
    async fn published(&self) -> Result<Vec<StoredKey>>;
    /// Stores a new key.
    async fn insert(&self, key: &StoredKey) -> Result<()>;
    /// Moves a key from one status to another; `false` if it was not in `from` (another
    /// replica got there first).
    async fn transition(&self, kid: &str, from: KeyStatus, to: KeyStatus, now: OffsetDateTime) -> Result<bool>;
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
        type Row = (String, String, String, String, String, i64, Option<i64>, Option<i64>);
        let rows: Vec<Row> = sqlx::query_as(
            "SELECT kid, alg, status, private_sealed, public_jwk, created_at, activated_at, deactivated_at \
             FROM signing_keys WHERE status <> 'retired' ORDER BY created_at, kid",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.into_iter()
            .map(|(kid, alg, status, private_sealed, public_jwk, created_at, activated_at, deactivated_at)| {
                Ok(StoredKey {
                    kid,
                    alg: SigningAlg::parse(&alg)?,
                    status: KeyStatus::parse(&status)?,
                    private_sealed,
                    public: serde_json::from_str(&public_jwk).map_err(|e| Error::Corrupt(e.to_string()))?,
                    created_at: from_unix(created_at),
                    activated_at: activated_at.map(from_unix),
                    deactivated_at: deactivated_at.map(from_unix),
                })
            })
            .collect()
    }

    async fn insert(&self, key: &StoredKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, alg, status, private_sealed, public_jwk, created_at, activated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&key.kid)
        .bind(key.alg.as_str())
        .bind(key.status.as_str())
        .bind(&key.private_sealed)
        .bind(serde_json::to_string(&key.public).map_err(|e| Error::Corrupt(e.to_string()))?)
        .bind(to_unix(key.created_at))
        .bind(key.activated_at.map(to_unix))
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    async fn transition(&self, kid: &str, from: KeyStatus, to: KeyStatus, now: OffsetDateTime) -> Result<bool> {
        let sql = match to {
            KeyStatus::Current => {
                "UPDATE signing_keys SET status = $1, activated_at = $2 WHERE kid = $3 AND status = $4"
            }
            KeyStatus::Previous => {
                "UPDATE signing_keys SET status = $1, deactivated_at = $2 WHERE kid = $3 AND status = $4"
            }
            _ => {
                "UPDATE signing_keys SET status = $1, deactivated_at = COALESCE(deactivated_at, $2) WHERE kid = $3 AND status = $4"
            }
        };
        let done = sqlx::query(sql)
            .bind(to.as_str())
            .bind(to_unix(now))
            .bind(kid)
            .bind(from.as_str())
            .execute(self.db.pool())
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Makes a new key of `alg`, sealed under `master`.
pub fn generate(master: &MasterKeys, alg: SigningAlg, status: KeyStatus, now: OffsetDateTime) -> Result<StoredKey> {
    let crypto = |e: aws_lc_rs::error::Unspecified| Error::Crypto(e.to_string());
    let kid = random_token()[..16].to_owned();
    let (pkcs8, public) = match alg {
        SigningAlg::ES256 => {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(crypto)?;
            let point = pair.public_key().as_ref().to_vec();
            // Uncompressed SEC1 point: 0x04 ‖ X (32 bytes) ‖ Y (32 bytes).
            if point.len() != 65 || point[0] != 4 {
                return Err(Error::Crypto("unexpected EC public key encoding".into()));
            }
            let jwk = PublicJwk {
                kty: "EC".into(),
                crv: "P-256".into(),
                x: URL_SAFE_NO_PAD.encode(&point[1..33]),
                y: Some(URL_SAFE_NO_PAD.encode(&point[33..65])),
                n: None,
                e: None,
                kid: kid.clone(),
                use_: "sig".into(),
                alg: alg.as_str().into(),
            };
            (pair.to_pkcs8v1().map_err(crypto)?.as_ref().to_vec(), jwk)
        }
        SigningAlg::RS256 => {
            use aws_lc_rs::encoding::AsDer;
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(crypto)?;
            let public = pair.public_key();
            let jwk = PublicJwk {
                kty: "RSA".into(),
                crv: String::new(),
                x: String::new(),
                y: None,
                n: Some(URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero())),
                e: Some(URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())),
                kid: kid.clone(),
                use_: "sig".into(),
                alg: alg.as_str().into(),
            };
            let pkcs8: aws_lc_rs::encoding::Pkcs8V1Der<'_> = pair.as_der().map_err(crypto)?;
            (pkcs8.as_ref().to_vec(), jwk)
        }
        SigningAlg::EdDSA => {
            let pkcs8 = Ed25519KeyPair::generate_pkcs8(&aws_lc_rs::rand::SystemRandom::new()).map_err(crypto)?;
            let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).map_err(|e| Error::Crypto(e.to_string()))?;
            let jwk = PublicJwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                y: None,
                n: None,
                e: None,
                kid: kid.clone(),
                use_: "sig".into(),
                alg: alg.as_str().into(),
            };
            (pkcs8.as_ref().to_vec(), jwk)
        }
    };
    Ok(StoredKey {
        private_sealed: master.seal(&pkcs8, &kid)?,
        public,
        kid,
        alg,
        status,
        created_at: now,
        activated_at: (status == KeyStatus::Current).then_some(now),
        deactivated_at: None,
    })
}

/// How keys are made and how long they live.
#[derive(Debug, Clone, Copy)]
pub struct KeyPolicy {
    /// The algorithm of new keys.
    pub alg: SigningAlg,
    /// The longest lifetime of any token Ponte signs: a previous key stays published
    /// this long (plus a margin) after it stops signing.
    pub max_token_lifetime: Duration,
    /// Rotate when the current key has signed for this long.
    pub rotate_after: Duration,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// The key that signs now.
    pub current: String,
    /// The key published ahead of use.
    pub next: String,
    /// Keys still published for tokens in flight.
    pub previous: Vec<String>,
}

/// Ensures there is a current and a next key, and retires previous keys whose tokens
/// have all expired. Safe to run on every replica at once.
pub async fn maintain(
    repo: &dyn KeyRepo,
    master: &MasterKeys,
    policy: &KeyPolicy,
    now: OffsetDateTime,
) -> Result<Vec<StoredKey>> {
    let mut keys = repo.published().await?;
    if !keys.iter().any(|k| k.status == KeyStatus::Current) {
        repo.insert(&generate(master, policy.alg, KeyStatus::Current, now)?).await?;
        keys = repo.published().await?;
    }
    if !keys.iter().any(|k| k.status == KeyStatus::Next) {
        repo.insert(&generate(master, policy.alg, KeyStatus::Next, now)?).await?;
        keys = repo.published().await?;
    }
    let margin = Duration::minutes(5);
    let mut retired = false;
    for key in keys.iter().filter(|k| k.status == KeyStatus::Previous) {
        let since = key.deactivated_at.unwrap_or(key.created_at);
        if since + policy.max_token_lifetime + margin <= now {
            retired |= repo.transition(&key.kid, KeyStatus::Previous, KeyStatus::Retired, now).await?;
        }
    }
    if retired {
        keys = repo.published().await?;
    }
    Ok(keys)
}

/// Promotes next → current and current → previous, and makes a new next key.
pub async fn rotate(
    repo: &dyn KeyRepo,
    master: &MasterKeys,
    policy: &KeyPolicy,
    now: OffsetDateTime,
) -> Result<Rotation> {
    let keys = maintain(repo, master, policy, now).await?;
    let current = oldest(&keys, KeyStatus::Current)?;
    let next = oldest(&keys, KeyStatus::Next)?;
    // The current key moves first: if another replica rotated meanwhile, we stop here.
    if repo.transition(&current.kid, KeyStatus::Current, KeyStatus::Previous, now).await? {
        repo.transition(&next.kid, KeyStatus::Next, KeyStatus::Current, now).await?;
    }
    let keys = maintain(repo, master, policy, now).await?;
    Ok(Rotation {
        current: oldest(&keys, KeyStatus::Current)?.kid.clone(),
        next: oldest(&keys, KeyStatus::Next)?.kid.clone(),
        previous: keys.iter().filter(|k| k.status == KeyStatus::Previous).map(|k| k.kid.clone()).collect(),
    })
}

fn oldest(keys: &[StoredKey], status: KeyStatus) -> Result<&StoredKey> {
    keys.iter()
        .find(|k| k.status == status)
        .ok_or_else(|| Error::Corrupt(format!("no {} signing key", status.as_str())))
}

/// The current private key, parsed once when the ring is loaded. jsonwebtoken's
/// `EncodingKey` keeps the DER bytes and parses the PKCS#8 again for every signature
/// (about a fifth of a `client_credentials` issuance), so the ring signs with aws-lc-rs
/// key pairs itself.
pub(crate) enum SigningKey {
    /// ES256.
    Ecdsa(EcdsaKeyPair),
    /// EdDSA.
    Ed25519(Ed25519KeyPair),
    /// RS256.
    Rsa(aws_lc_rs::rsa::KeyPair),
}

impl SigningKey {
    fn parse(alg: SigningAlg, pkcs8: &[u8]) -> Result<Self> {
        let rejected = |e: aws_lc_rs::error::KeyRejected| Error::Corrupt(format!("signing key: {e}"));
        Ok(match alg {
            SigningAlg::ES256 => {
                Self::Ecdsa(EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8).map_err(rejected)?)
            }
            SigningAlg::EdDSA => Self::Ed25519(Ed25519KeyPair::from_pkcs8(pkcs8).map_err(rejected)?),
            SigningAlg::RS256 => Self::Rsa(aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8).map_err(rejected)?),
        })
    }

    /// How many bytes [`Self::sign`] returns.
    pub(crate) fn signature_len(&self) -> usize {
        match self {
            // P-256: r ‖ s, 32 bytes each; Ed25519: 64 bytes.
            Self::Ecdsa(_) | Self::Ed25519(_) => 64,
            Self::Rsa(pair) => pair.public_modulus_len(),
        }
    }

    /// The JWS signature of `message` (ECDSA in the fixed `r ‖ s` form JOSE wants).
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        let failed = |_| Error::Crypto("signing failed".into());
        let rng = aws_lc_rs::rand::SystemRandom::new();
        match self {
            Self::Ecdsa(pair) => Ok(pair.sign(&rng, message).map_err(failed)?.as_ref().to_vec()),
            Self::Ed25519(pair) => Ok(pair.try_sign(message).map_err(failed)?.as_ref().to_vec()),
            Self::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, message, &mut signature).map_err(failed)?;
                Ok(signature)
            }
        }
    }
}

/// The keys in use: one to sign with, all published ones to verify with.
pub struct KeyRing {
    signing_kid: String,
    signing_alg: SigningAlg,
    /// The encoded JOSE header of access tokens signed now (`typ: at+jwt`, the kid).
    access_header: String,
    signing: SigningKey,
    activated_at: OffsetDateTime,
    verifying: HashMap<String, (SigningAlg, DecodingKey)>,
    jwks: Vec<PublicJwk>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing").field("signing_kid", &self.signing_kid).finish_non_exhaustive()
    }
}

impl KeyRing {
    /// Loads the published keys, creating the current and next keys if missing.
    pub async fn load_or_create(
        repo: &dyn KeyRepo,
        master: &MasterKeys,
        policy: &KeyPolicy,
        now: OffsetDateTime,
    ) -> Result<Self> {
        let keys = maintain(repo, master, policy, now).await?;
        Self::from_stored(&keys, master)
    }

    /// Builds the ring from stored keys; the oldest current key signs (if two replicas
    /// raced to create the first key, they agree on the same one).
    pub fn from_stored(keys: &[StoredKey], master: &MasterKeys) -> Result<Self> {
        let current = oldest(keys, KeyStatus::Current)?;
        let pkcs8 = master.open(&current.private_sealed, &current.kid)?;
        let signing = SigningKey::parse(current.alg, &pkcs8)?;
        let mut verifying = HashMap::new();
        for key in keys {
            verifying.insert(key.kid.clone(), (key.alg, key.public.decoding_key()?));
        }
        Ok(Self {
            access_header: crate::token::encoded_header(
                current.alg.jose(),
                crate::token::ACCESS_TOKEN_TYP,
                &current.kid,
            )?,
            signing_kid: current.kid.clone(),
            signing_alg: current.alg,
            signing,
            activated_at: current.activated_at.unwrap_or(current.created_at),
            verifying,
            jwks: keys.iter().map(|k| k.public.clone()).collect(),
        })
    }

    /// The key id new tokens carry.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// The algorithm new tokens are signed with.
    pub fn signing_alg(&self) -> SigningAlg {
        self.signing_alg
    }

    /// When the signing key became current.
    pub fn activated_at(&self) -> OffsetDateTime {
        self.activated_at
    }

    /// The encoded header of access tokens signed with the current key.
    pub(crate) fn access_token_header(&self) -> &str {
        &self.access_header
    }

    pub(crate) fn signing_key(&self) -> (&SigningKey, Algorithm) {
        (&self.signing, self.signing_alg.jose())
    }

    pub(crate) fn verifying_key(&self, kid: &str) -> Option<(Algorithm, &DecodingKey)> {
        self.verifying.get(kid).map(|(alg, key)| (alg.jose(), key))
    }

    /// The public keys to publish at `/oauth2/jwks`.
    pub fn jwks(&self) -> &[PublicJwk] {
        &self.jwks
    }
}

/// The live key ring, swapped when keys are rotated (here or by another process).
#[derive(Debug)]
pub struct Keys {
    ring: RwLock<Arc<KeyRing>>,
}

impl Keys {
    /// Starts with `ring`.
    pub fn new(ring: KeyRing) -> Self {
        Self { ring: RwLock::new(Arc::new(ring)) }
    }

    /// The ring in force now.
    pub fn ring(&self) -> Arc<KeyRing> {
        self.ring.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the ring.
    pub fn replace(&self, ring: KeyRing) {
        *self.ring.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(ring);
    }

    /// Reloads from the store: maintains keys, rotates when the current key is older than
    /// the policy allows, and swaps in the result.
    pub async fn refresh(
        &self,
        repo: &dyn KeyRepo,
        master: &MasterKeys,
        policy: &KeyPolicy,
        now: OffsetDateTime,
    ) -> Result<()> {
        let mut keys = maintain(repo, master, policy, now).await?;
        let current = oldest(&keys, KeyStatus::Current)?;
        if current.activated_at.unwrap_or(current.created_at) + policy.rotate_after <= now {
            rotate(repo, master, policy, now).await?;
            keys = repo.published().await?;
        }
        self.replace(KeyRing::from_stored(&keys, master)?);
        Ok(())
    }
}
