use std::fmt;

/// Why a delivery failed verification.
///
/// Every variant is a short, fixed answer: none carries the expected MAC, the
/// secret or the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// The request carried no `X-Cariosan-Signature` header.
    #[error("Failed to verify the delivery: the signature header is missing")]
    MissingSignature,
    /// The `X-Cariosan-Signature` header does not follow the grammar.
    #[error("Failed to verify the delivery: the signature header is malformed ({0})")]
    MalformedSignature(MalformedSignature),
    /// The delivery id is absent, empty, over 128 characters or has a
    /// character outside `A-Z a-z 0-9 _ -`.
    #[error("Failed to verify the delivery: the delivery id is invalid")]
    InvalidDeliveryId,
    /// The signature's timestamp is older than the tolerance allows.
    #[error(
        "Failed to verify the delivery: the timestamp is {age_secs} s old, over the tolerance"
    )]
    TimestampTooOld {
        /// How many seconds before `now` the delivery was signed.
        age_secs: u64,
    },
    /// The signature's timestamp is further in the future than the tolerance
    /// allows.
    #[error(
        "Failed to verify the delivery: the timestamp is {ahead_secs} s ahead, over the tolerance"
    )]
    TimestampTooNew {
        /// How many seconds after `now` the delivery claims to be signed.
        ahead_secs: u64,
    },
    /// No `v1` signature matches the content under any secret.
    #[error("Failed to verify the delivery: no signature matches")]
    NoMatchingSignature,
}

impl VerifyError {
    /// A short, stable, machine-readable code, such as `signature_mismatch`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingSignature => "signature_missing",
            Self::MalformedSignature(_) => "signature_malformed",
            Self::InvalidDeliveryId => "delivery_id_invalid",
            Self::TimestampTooOld { .. } => "timestamp_too_old",
            Self::TimestampTooNew { .. } => "timestamp_too_new",
            Self::NoMatchingSignature => "signature_mismatch",
        }
    }
}

/// The grammar rule a `X-Cariosan-Signature` header broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MalformedSignature {
    /// An element is not `key=value` (an empty header or element included).
    BadElement,
    /// No `t` element.
    MissingTimestamp,
    /// More than one `t` element.
    DuplicateTimestamp,
    /// `t` is not a plain non-negative decimal integer of at most 19 digits
    /// that fits an `i64`.
    BadTimestamp,
    /// No `v1` element.
    MissingSignature,
    /// `v1` elements are present but none is 64 hexadecimal digits.
    BadSignature,
    /// More `v1` elements than [`MAX_SIGNATURES`](super::MAX_SIGNATURES).
    TooManySignatures,
    /// Longer than [`MAX_HEADER_LEN`](super::MAX_HEADER_LEN) bytes.
    TooLong,
}

impl fmt::Display for MalformedSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::BadElement => "an element is not key=value",
            Self::MissingTimestamp => "no t element",
            Self::DuplicateTimestamp => "more than one t element",
            Self::BadTimestamp => "t is not a non-negative decimal integer",
            Self::MissingSignature => "no v1 element",
            Self::BadSignature => "no v1 element is 64 hexadecimal digits",
            Self::TooManySignatures => "too many v1 elements",
            Self::TooLong => "the header is too long",
        })
    }
}

impl std::error::Error for MalformedSignature {}

/// A configuration mistake, reported when a verifier or layer is built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A signing secret was empty.
    #[error("Failed to configure the verifier: a signing secret is empty")]
    EmptySecret,
    /// A set of secrets would have none.
    #[error("Failed to configure the verifier: no signing secret")]
    NoSecret,
}
