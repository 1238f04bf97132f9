//! Secrets at rest: XChaCha20-Poly1305 under the master key.
//!
//! A sealed value reads `v1.<key id>.<base64url(nonce ‖ ciphertext)>`. The key id (first
//! 8 bytes of SHA-256 of the key, hex) travels with the data so the master key can be
//! rotated and old rows re-sealed, and so a wrong key gives a clear error.
//!
//! [`MasterKeys`] is the ring every store uses: new values are sealed with the active
//! key; a value sealed with a retired key still opens (by the id it carries) until
//! `ponte keys reseal` has moved it to the active one.

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

/// The master-key ring: the active key, which seals, and retired keys, which only open
/// what was sealed before a rotation until it is re-sealed.
#[derive(Clone)]
pub struct MasterKeys {
    active: MasterKey,
    retired: Vec<MasterKey>,
}

impl std::fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let retired: Vec<&str> = self.retired.iter().map(MasterKey::id).collect();
        f.debug_struct("MasterKeys").field("active", &self.active.id).field("retired", &retired).finish()
    }
}

impl From<MasterKey> for MasterKeys {
    fn from(active: MasterKey) -> Self {
        Self { active, retired: Vec::new() }
    }
}

impl MasterKeys {
    /// The ring of `active` and the `retired` keys (a retired key equal to the active one
    /// is dropped).
    pub fn new(active: MasterKey, retired: impl IntoIterator<Item = MasterKey>) -> Self {
        let mut ring = Self::from(active);
        for key in retired {
            if key.id != ring.active.id && !ring.retired.iter().any(|k| k.id == key.id) {
                ring.retired.push(key);
            }
        }
        ring
    }

    /// A ring of one fresh random key.
    pub fn generate() -> Self {
        MasterKey::generate().into()
    }

    /// A ring of the one key in its configured form.
    pub fn parse(text: &str) -> Result<Self> {
        MasterKey::parse(text).map(Into::into)
    }

    /// Parses a comma- or whitespace-separated list of retired keys (empty: none).
    pub fn parse_list(text: &str) -> Result<Vec<MasterKey>> {
        text.split([',', ' ', '\n', '\t', '\r']).filter(|t| !t.is_empty()).map(MasterKey::parse).collect()
    }

    /// The key that seals.
    pub fn active(&self) -> &MasterKey {
        &self.active
    }

    /// The retired keys, which only open.
    pub fn retired(&self) -> &[MasterKey] {
        &self.retired
    }

    /// The active key's id.
    pub fn id(&self) -> &str {
        &self.active.id
    }

    /// The active key in its configured form.
    pub fn encode(&self) -> String {
        self.active.encode()
    }

    /// Seals with the active key (see [`MasterKey::seal`]).
    pub fn seal(&self, plaintext: &[u8], context: &str) -> Result<String> {
        self.active.seal(plaintext, context)
    }

    /// Opens with whichever key of the ring the sealed value names.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>> {
        let id = key_id(sealed).ok_or_else(|| Error::Seal("unknown sealed format".into()))?;
        let key = std::iter::once(&self.active).chain(&self.retired).find(|k| k.id == id).ok_or_else(|| {
            Error::Seal(format!(
                "sealed with master key {id}, but the configured key is {} and no retired key (master_keys_retired) has that id",
                self.active.id
            ))
        })?;
        key.open(sealed, context)
    }

    /// The value re-sealed with the active key, or `None` when it already is.
    pub fn reseal(&self, sealed: &str, context: &str) -> Result<Option<String>> {
        if key_id(sealed) == Some(self.active.id.as_str()) {
            return Ok(None);
        }
        let plain = self.open(sealed, context)?;
        self.seal(&plain, context).map(Some)
    }
}

/// The id of the key that sealed `sealed`, if it is a sealed value.
pub fn key_id(sealed: &str) -> Option<&str> {
    let mut parts = sealed.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(id), Some(_)) => Some(id),
        _ => None,
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

    #[test]
    fn a_ring_seals_with_the_active_key_and_opens_with_retired_ones() {
        let old = MasterKey::generate();
        let before = old.seal(b"secret", "row-1").unwrap();
        let ring = MasterKeys::new(MasterKey::generate(), [old.clone()]);
        assert_eq!(ring.open(&before, "row-1").unwrap(), b"secret");
        let after = ring.seal(b"secret", "row-1").unwrap();
        assert_eq!(key_id(&after), Some(ring.id()));
        assert_ne!(ring.id(), old.id());
    }

    #[test]
    fn reseal_moves_a_value_to_the_active_key_once() {
        let old = MasterKey::generate();
        let before = old.seal(b"secret", "row-1").unwrap();
        let ring = MasterKeys::new(MasterKey::generate(), [old]);
        let moved = ring.reseal(&before, "row-1").unwrap().expect("sealed with a retired key");
        assert_eq!(key_id(&moved), Some(ring.id()));
        assert_eq!(ring.open(&moved, "row-1").unwrap(), b"secret");
        assert_eq!(ring.reseal(&moved, "row-1").unwrap(), None);
        assert!(ring.reseal(&before, "row-2").is_err(), "the context still binds");
    }

    #[test]
    fn a_dropped_retired_key_gives_a_clear_error() {
        let old = MasterKey::generate();
        let before = old.seal(b"secret", "").unwrap();
        let ring = MasterKeys::from(MasterKey::generate());
        let err = ring.open(&before, "").unwrap_err().to_string();
        assert!(err.contains(old.id()) && err.contains("master_keys_retired"), "{err}");
    }

    #[test]
    fn retired_lists_parse_comma_separated_and_skip_the_active_key() {
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let list = MasterKeys::parse_list(&format!("{}, {}", a.encode(), b.encode())).unwrap();
        assert_eq!(list.len(), 2);
        assert!(MasterKeys::parse_list("").unwrap().is_empty());
        assert!(MasterKeys::parse_list("nope").is_err());
        let ring = MasterKeys::new(a.clone(), list);
        assert_eq!(ring.retired().len(), 1);
        assert!(!format!("{ring:?}").contains(&a.encode()));
    }
}
