//! Secrets at rest: XChaCha20-Poly1305 under the master key.
//!
//! A sealed value reads `v1.<key id>.<base64url(nonce ‖ ciphertext)>`. The key id (first
//! 8 bytes of SHA-256 of the key, hex) travels with the data so the master key can be
//! rotated and old rows re-sealed, and so a wrong key gives a clear error.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

use crate::secret::random_bytes;
use crate::{Error, Result};

/// The 256-bit key that seals every secret Ponte stores.
#[derive(Clone)]
pub struct MasterKey {
    key: [u8; 32],
    id: String,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &self.id).finish_non_exhaustive()
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        Self::from_bytes(random_bytes::<32>())
    }

    /// From raw bytes.
    pub fn from_bytes(key: [u8; 32]) -> Self {
        let digest = Sha256::digest(key);
        let id = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Self { key, id }
    }

    /// Parses the configured form: 32 bytes in standard or URL-safe base64.
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        let bytes = STANDARD
            .decode(text)
            .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
            .map_err(|_| Error::Invalid("master key must be base64".into()))?;
        let key: [u8; 32] =
            bytes.try_into().map_err(|_| Error::Invalid("master key must be exactly 32 bytes".into()))?;
        Ok(Self::from_bytes(key))
    }

    /// The configured form of this key (standard base64).
    pub fn encode(&self) -> String {
        STANDARD.encode(self.key)
    }

    /// The public identifier of this key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Encrypts `plaintext`; `context` (e.g. a row id) is bound as associated data so a
    /// sealed value cannot be moved to another row.
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String> {
        let cipher = XChaCha20Poly1305::new((&self.key).into());
        let nonce = random_bytes::<24>();
        let ct = cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plaintext, aad: context.as_bytes() })
            .map_err(|_| Error::Seal("encryption failed".into()))?;
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ct);
        Ok(format!("v1.{}.{}", self.id, URL_SAFE_NO_PAD.encode(blob)))
    }

    /// Decrypts a value made by [`MasterKey::seal`] with the same `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Error::Seal("unknown sealed format".into()));
        };
        if id != self.id {
            return Err(Error::Seal(format!("sealed with master key {id}, but the configured key is {}", self.id)));
        }
        let blob = URL_SAFE_NO_PAD.decode(body).map_err(|_| Error::Seal("bad encoding".into()))?;
        if blob.len() < 24 {
            return Err(Error::Seal("truncated".into()));
        }
        let (nonce, ct) = blob.split_at(24);
        XChaCha20Poly1305::new((&self.key).into())
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad: context.as_bytes() })
            .map_err(|_| Error::Seal("authentication failed".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_context_binding() {
        let key = MasterKey::generate();
        let sealed = key.seal(b"secret", "row-1").unwrap();
        assert!(sealed.starts_with(&format!("v1.{}.", key.id())));
        assert_eq!(key.open(&sealed, "row-1").unwrap(), b"secret");
        assert!(key.open(&sealed, "row-2").is_err());
    }

    #[test]
    fn another_key_is_refused_by_id() {
        let sealed = MasterKey::generate().seal(b"secret", "").unwrap();
        let err = MasterKey::generate().open(&sealed, "").unwrap_err();
        assert!(err.to_string().contains("sealed with master key"));
    }

    #[test]
    fn parse_accepts_encoded_form_and_rejects_wrong_length() {
        let key = MasterKey::generate();
        assert_eq!(MasterKey::parse(&key.encode()).unwrap().id(), key.id());
        assert!(MasterKey::parse("c2hvcnQ=").is_err());
        assert!(MasterKey::parse("not base64 !!").is_err());
    }
}
