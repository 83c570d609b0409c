//! The signing secret, the signature header's value, and the delivery ID of a transition.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

use crate::store::DeliveryKey;

/// The secret callbacks are signed with. Never shown: its `Debug` says only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

/// Why a secret was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must hold at least {MIN_SECRET_BYTES} bytes (after trimming the final newline)")]
pub struct SecretTooShort;

/// Shortest secret accepted: 128 bits of hex.
pub const MIN_SECRET_BYTES: usize = 16;

impl SigningSecret {
    /// A secret from its text; a final newline (of a file) is not part of it.
    pub fn parse(raw: &str) -> Result<Self, SecretTooShort> {
        let trimmed = raw.strip_suffix('\n').unwrap_or(raw);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        if trimmed.len() < MIN_SECRET_BYTES {
            return Err(SecretTooShort);
        }
        Ok(Self(trimmed.as_bytes().to_vec()))
    }

    /// `sha256=<lowercase hex HMAC-SHA256 of body>`.
    pub fn signature(&self, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes keys of any size");
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(set)")
    }
}

/// The ID of a transition's delivery: the same for every attempt and every replay, different
/// for every transition (a batch ends at most once per microsecond).
pub fn delivery_id(key: &DeliveryKey) -> String {
    let mut hasher = Sha256::new();
    hasher.update(key.batch_id.as_str().as_bytes());
    hasher.update(b"\n");
    hasher.update(key.completed_at.0.to_string().as_bytes());
    hex::encode(&hasher.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{BatchId, Timestamp};

    #[test]
    fn the_signature_is_rfc_4231_hmac_sha256() {
        // RFC 4231, test case 2.
        let secret = SigningSecret(b"Jefe".to_vec());
        assert_eq!(
            secret.signature(b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_short_secret_is_refused_and_a_final_newline_dropped() {
        assert_eq!(SigningSecret::parse("short\n").unwrap_err(), SecretTooShort);
        let secret = SigningSecret::parse("0123456789abcdef\n").unwrap();
        assert_eq!(secret.0, b"0123456789abcdef");
        assert_eq!(format!("{secret:?}"), "SigningSecret(set)");
    }

    #[test]
    fn delivery_ids_differ_per_transition_and_repeat_per_key() {
        let key = |at| DeliveryKey {
            batch_id: BatchId::parse("b").unwrap(),
            completed_at: Timestamp(at),
        };
        assert_eq!(delivery_id(&key(1)), delivery_id(&key(1)));
        assert_ne!(delivery_id(&key(1)), delivery_id(&key(2)));
        assert_eq!(delivery_id(&key(1)).len(), 32);
    }
}
