//! Signature verification, framework-agnostic.
//!
//! A delivery is authentic when one `v1` MAC of its `X-Cariosan-Signature`
//! header equals `HMAC-SHA256(secret, delivery_id + "." + t + "." + body)`
//! under one of the secrets the receiver holds, and `t` is within the
//! tolerance of the receiver's clock, in either direction.
//!
//! This module needs no HTTP framework and no async runtime:
//!
//! ```
//! use cariosan_webhooks::verify::{sign, FixedClock, Secret, Verifier};
//!
//! let secret = Secret::new("whsec_2CfBq8m1ZbLr0v5yHkQ7tE9uXw3aJs6N")?;
//! let body = br#"{"id":"evt_1","type":"webhook.ping"}"#;
//! let header = sign(&[secret.clone()], "evt_1", 1_795_000_000, body);
//!
//! let verifier = Verifier::from_secret(secret).clock(FixedClock(1_795_000_120));
//! let verified = verifier.verify("evt_1", &header, body)?;
//! assert_eq!(verified.timestamp(), 1_795_000_000);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod delivery;
mod error;
mod header;
mod secrets;

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[cfg(not(feature = "ring"))]
use hmac::{Hmac, Mac};
#[cfg(not(feature = "ring"))]
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

pub use delivery::{DeliveryError, DeliveryHeaders, EnvelopeField, VerifiedDelivery};
pub use error::{ConfigError, MalformedSignature, VerifyError};
pub use header::{MAX_HEADER_LEN, MAX_SIGNATURES};
pub use secrets::Secrets;

use crate::protocol::{is_valid_delivery_id, DEFAULT_TOLERANCE};
use header::{SignatureHeader, MAC_LEN};

/// HMAC-SHA256 with its key absorbed: `hmac` + `sha2` by default, `ring`'s
/// assembly (AVX2 or SHA extensions, detected at run time) with feature
/// `ring`.
#[cfg(not(feature = "ring"))]
type PreparedKey = Hmac<Sha256>;
#[cfg(feature = "ring")]
type PreparedKey = ring::hmac::Key;

/// A signing secret, with its HMAC key schedule prepared once.
///
/// The key is the secret string's bytes as given, `whsec_` prefix included.
/// `Debug` never shows it.
#[derive(Clone)]
pub struct Secret {
    prepared: PreparedKey,
    /// SHA-256 of the secret's bytes: tells secrets apart for
    /// [`Secrets::remove`] without keeping them.
    fingerprint: [u8; 32],
}

impl Secret {
    /// Prepares a secret. An empty secret is a configuration error.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        let bytes = secret.as_ref();
        if bytes.is_empty() {
            return Err(ConfigError::EmptySecret);
        }
        #[cfg(not(feature = "ring"))]
        let prepared =
            PreparedKey::new_from_slice(bytes).expect("HMAC-SHA256 accepts keys of any length");
        #[cfg(feature = "ring")]
        let prepared = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes);
        Ok(Self {
            prepared,
            fingerprint: fingerprint(bytes),
        })
    }

    /// The MAC of one delivery: the 32 bytes a `v1` element encodes, over
    /// the signed content fed in parts (never concatenated).
    fn mac(&self, delivery_id: &[u8], timestamp_text: &[u8], body: &[u8]) -> [u8; MAC_LEN] {
        let parts = [delivery_id, b".", timestamp_text, b".", body];
        #[cfg(not(feature = "ring"))]
        {
            let mut mac = self.prepared.clone();
            for part in parts {
                mac.update(part);
            }
            mac.finalize().into_bytes().into()
        }
        #[cfg(feature = "ring")]
        {
            let mut mac = ring::hmac::Context::with_key(&self.prepared);
            for part in parts {
                mac.update(part);
            }
            let mut out = [0; MAC_LEN];
            out.copy_from_slice(mac.sign().as_ref());
            out
        }
    }

    /// The lowercase hexadecimal `v1` value for a delivery signed at
    /// `timestamp`.
    pub fn sign(&self, delivery_id: &str, timestamp: i64, body: &[u8]) -> String {
        let t = timestamp.to_string();
        hex::encode(self.mac(delivery_id.as_bytes(), t.as_bytes(), body))
    }
}

/// Constant time over the decoded MACs, as four 64-bit words: subtle's
/// `ct_eq` on each, never a branch on the bytes. A word at a time costs an
/// eighth of comparing byte by byte.
fn macs_equal(a: &[u8; MAC_LEN], b: &[u8; MAC_LEN]) -> Choice {
    let word = |mac: &[u8; MAC_LEN], at: usize| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(&mac[at * 8..at * 8 + 8]);
        u64::from_ne_bytes(bytes)
    };
    (0..MAC_LEN / 8).fold(Choice::from(1), |equal, at| {
        equal & word(a, at).ct_eq(&word(b, at))
    })
}

fn fingerprint(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Verifies one delivery with one secret, the protocol's default tolerance
/// and the system clock: the simplest case, in one call. `signature_header`
/// is the `X-Cariosan-Signature` value; see [`Verifier`] for several
/// secrets, another tolerance or the whole delivery.
pub fn verify(
    secret: impl AsRef<[u8]>,
    delivery_id: &str,
    signature_header: &str,
    body: &[u8],
) -> Result<Verified, VerifyError> {
    Verifier::new(secret)
        .map_err(|_| VerifyError::NoMatchingSignature)?
        .verify(delivery_id, signature_header, body)
}

/// Builds an `X-Cariosan-Signature` value the way the sender does: the
/// timestamp, then one `v1` per secret, in the order given (newest first
/// during a rotation).
///
/// Meant for tests and tools: sign a body, send it to your receiver.
pub fn sign(secrets: &[Secret], delivery_id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&secret.sign(delivery_id, timestamp, body));
    }
    header
}

/// The source of "now" for timestamp checks, in Unix seconds.
///
/// Any `Fn() -> i64` is a clock; [`SystemClock`] is the default and
/// [`FixedClock`] pins the time for tests.
pub trait Clock: Send + Sync + 'static {
    /// The current time in Unix seconds.
    fn now(&self) -> i64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
            Err(before) => i64::try_from(before.duration().as_secs()).map_or(i64::MIN, |s| -s),
        }
    }
}

/// A clock that always answers the same Unix time: verification "as of" a
/// given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedClock(pub i64);

impl Clock for FixedClock {
    fn now(&self) -> i64 {
        self.0
    }
}

impl<F> Clock for F
where
    F: Fn() -> i64 + Send + Sync + 'static,
{
    fn now(&self) -> i64 {
        self()
    }
}

/// What a successful verification established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Verified {
    timestamp: i64,
    secret_index: usize,
}

impl Verified {
    /// The signing time from the header, in Unix seconds.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// Which of the verifier's secrets matched, in the order they were
    /// added (0 is the first).
    pub fn secret_index(&self) -> usize {
        self.secret_index
    }
}

/// Verifies deliveries against one or more secrets.
///
/// Cheap to clone: the secrets and the clock are shared.
#[derive(Clone)]
pub struct Verifier {
    secrets: Secrets,
    /// `None` until set: the protocol's default, or a tenant layer's.
    tolerance: Option<Duration>,
    /// `None` until set: the system clock, or a tenant layer's.
    clock: Option<Arc<dyn Clock>>,
}

impl Verifier {
    /// A verifier for one secret, with the default tolerance and the system
    /// clock. An empty secret is a configuration error.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, ConfigError> {
        Secret::new(secret).map(Self::from_secret)
    }

    /// A verifier for one prepared secret.
    pub fn from_secret(secret: Secret) -> Self {
        Self::from_secrets(Secrets::one(secret))
    }

    /// A verifier that holds a shared, changeable set of secrets: what the
    /// handle does to the set, the verifier sees on its next delivery.
    pub fn from_secrets(secrets: Secrets) -> Self {
        Self {
            secrets,
            tolerance: None,
            clock: None,
        }
    }

    /// Also accepts deliveries signed with `secret`, after the ones it has:
    /// keep the old and the new secret while Cariosan rolls it. The verifier
    /// gets a set of its own; to change secrets while serving, use
    /// [`secrets`](Self::secrets).
    #[must_use]
    pub fn with_secret(mut self, secret: Secret) -> Self {
        self.secrets = self.secrets.with(secret);
        self
    }

    /// The handle to this verifier's secrets, to add, replace and remove
    /// them while it serves (and its clones, the layers' included).
    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// How far `t` may be from now, in either direction. Whole seconds count;
    /// a fraction is dropped.
    #[must_use]
    pub fn tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = Some(tolerance);
        self
    }

    /// Where "now" comes from.
    #[must_use]
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Some(Arc::new(clock));
        self
    }

    /// This verifier, with the tolerance and the clock of `defaults` where
    /// it set none of its own: a tenant's verifier under a tenant layer.
    #[cfg(feature = "layer")]
    pub(crate) fn inheriting(&self, defaults: &Verifier) -> Verifier {
        Verifier {
            secrets: self.secrets.clone(),
            tolerance: self.tolerance.or(defaults.tolerance),
            clock: self.clock.clone().or_else(|| defaults.clock.clone()),
        }
    }

    fn now(&self) -> i64 {
        match &self.clock {
            Some(clock) => clock.now(),
            None => SystemClock.now(),
        }
    }

    /// The number of secrets held.
    pub fn secret_count(&self) -> usize {
        self.secrets.len()
    }

    /// Verifies a delivery as of the verifier's clock.
    ///
    /// `delivery_id` is the `X-Cariosan-Delivery` value, `signature_header`
    /// the `X-Cariosan-Signature` value (empty means missing), `body` the raw
    /// bytes as received.
    pub fn verify(
        &self,
        delivery_id: &str,
        signature_header: &str,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        self.verify_at(self.now(), delivery_id, signature_header, body)
    }

    /// Verifies a delivery as of `now`, in Unix seconds: the signature
    /// header alone, for a caller that checks the rest itself (see
    /// [`verify_delivery`](Self::verify_delivery) for the whole delivery).
    pub fn verify_at(
        &self,
        now: i64,
        delivery_id: &str,
        signature_header: &str,
        body: &[u8],
    ) -> Result<Verified, VerifyError> {
        if !is_valid_delivery_id(delivery_id) {
            return Err(VerifyError::InvalidDeliveryId);
        }
        if signature_header.trim_matches([' ', '\t']).is_empty() {
            return Err(VerifyError::MissingSignature);
        }
        let header = SignatureHeader::parse(signature_header.as_bytes())
            .map_err(VerifyError::MalformedSignature)?;
        self.check_timestamp(now, header.timestamp)?;
        let secrets = self.secrets.load();
        for (secret_index, secret) in secrets.iter().enumerate() {
            let expected = secret.mac(delivery_id.as_bytes(), header.timestamp_text, body);
            // Every candidate is compared in full; only the final verdict
            // branches.
            let matched = header
                .macs()
                .iter()
                .fold(Choice::from(0), |acc, mac| acc | macs_equal(mac, &expected));
            if bool::from(matched) {
                return Ok(Verified {
                    timestamp: header.timestamp,
                    secret_index,
                });
            }
        }
        Err(VerifyError::NoMatchingSignature)
    }

    fn check_timestamp(&self, now: i64, timestamp: i64) -> Result<(), VerifyError> {
        let tolerance = i128::from(self.tolerance.unwrap_or(DEFAULT_TOLERANCE).as_secs());
        let diff = i128::from(now) - i128::from(timestamp);
        let secs = |d: i128| u64::try_from(d).unwrap_or(u64::MAX);
        if diff > tolerance {
            Err(VerifyError::TimestampTooOld {
                age_secs: secs(diff),
            })
        } else if -diff > tolerance {
            Err(VerifyError::TimestampTooNew {
                ahead_secs: secs(-diff),
            })
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("secrets", &self.secrets.len())
            .field("tolerance", &self.tolerance.unwrap_or(DEFAULT_TOLERANCE))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test";

    #[test]
    fn macs_are_equal_only_when_every_byte_is() {
        let mac: [u8; MAC_LEN] = std::array::from_fn(|at| at as u8 * 7);
        assert!(bool::from(macs_equal(&mac, &mac)));
        for at in 0..MAC_LEN {
            for bit in 0..8 {
                let mut other = mac;
                other[at] ^= 1 << bit;
                assert!(!bool::from(macs_equal(&mac, &other)), "byte {at} bit {bit}");
            }
        }
    }

    fn verifier() -> Verifier {
        Verifier::new(SECRET).unwrap().clock(FixedClock(1_000))
    }

    #[test]
    fn empty_secret_is_a_configuration_error() {
        assert_eq!(Secret::new("").unwrap_err(), ConfigError::EmptySecret);
        assert_eq!(Verifier::new(b"").unwrap_err(), ConfigError::EmptySecret);
    }

    #[test]
    fn debug_redacts_secrets() {
        let shown = format!("{:?} {:?}", Secret::new(SECRET).unwrap(), verifier());
        assert!(!shown.contains("whsec_test"), "{shown}");
        assert!(shown.contains("redacted"));
    }

    #[test]
    fn round_trip_and_tolerance_edges() {
        let secret = Secret::new(SECRET).unwrap();
        let header = sign(&[secret], "evt_1", 1_000, b"{}");
        assert!(verifier().verify("evt_1", &header, b"{}").is_ok());
        let v = verifier();
        assert!(v.verify_at(1_300, "evt_1", &header, b"{}").is_ok());
        assert!(v.verify_at(700, "evt_1", &header, b"{}").is_ok());
        assert_eq!(
            v.verify_at(1_301, "evt_1", &header, b"{}"),
            Err(VerifyError::TimestampTooOld { age_secs: 301 })
        );
        assert_eq!(
            v.verify_at(699, "evt_1", &header, b"{}"),
            Err(VerifyError::TimestampTooNew { ahead_secs: 301 })
        );
    }

    #[test]
    fn custom_tolerance_and_extreme_clocks_do_not_overflow() {
        let header = sign(&[Secret::new(SECRET).unwrap()], "evt_1", i64::MAX, b"");
        let v = verifier().tolerance(Duration::from_secs(u64::MAX));
        assert!(v.verify_at(i64::MIN, "evt_1", &header, b"").is_ok());
        let strict = verifier().tolerance(Duration::ZERO);
        assert!(matches!(
            strict.verify_at(i64::MIN, "evt_1", &header, b""),
            Err(VerifyError::TimestampTooNew {
                ahead_secs: u64::MAX
            })
        ));
    }

    #[test]
    fn rejects_bad_delivery_ids_before_anything_else() {
        for id in ["", "evt 1", "evt.1", "évt", &"a".repeat(129)] {
            assert_eq!(
                verifier().verify(id, "t=1000,v1=00", b""),
                Err(VerifyError::InvalidDeliveryId),
                "{id:?}"
            );
        }
        let longest = "a".repeat(128);
        let header = sign(&[Secret::new(SECRET).unwrap()], &longest, 1_000, b"");
        assert!(verifier().verify(&longest, &header, b"").is_ok());
    }

    #[test]
    fn reports_which_secret_matched() {
        let old = Secret::new("whsec_old").unwrap();
        let new = Secret::new("whsec_new").unwrap();
        let v = Verifier::from_secret(new.clone())
            .with_secret(old.clone())
            .clock(FixedClock(5));
        assert_eq!(v.secret_count(), 2);
        let by_old = sign(&[old], "e", 5, b"x");
        assert_eq!(v.verify("e", &by_old, b"x").unwrap().secret_index(), 1);
        let by_new = sign(&[new], "e", 5, b"x");
        assert_eq!(v.verify("e", &by_new, b"x").unwrap().secret_index(), 0);
    }

    #[test]
    fn empty_or_blank_header_is_missing() {
        assert_eq!(
            verifier().verify("e", " \t", b""),
            Err(VerifyError::MissingSignature)
        );
    }

    #[test]
    fn a_function_is_a_clock() {
        let v = Verifier::new(SECRET).unwrap().clock(|| 42);
        let header = sign(&[Secret::new(SECRET).unwrap()], "e", 42, b"");
        assert!(v.verify("e", &header, b"").is_ok());
        assert!(SystemClock.now() > 1_700_000_000);
    }
}
