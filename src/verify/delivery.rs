//! A whole delivery verified without a framework: its headers, its
//! signature, then its envelope, in that order.

use std::fmt;
use std::sync::Arc;

use super::{Verifier, VerifyError};
use crate::model::{Envelope, EventId, JsonError, MalformedEvent, ParseError};
use crate::protocol::{is_valid_delivery_id, is_valid_event_type};

/// The protocol headers of one delivery, as text.
///
/// Build it by hand from any framework's request, or with
/// [`from_header_map`](Self::from_header_map) (feature `layer`). `Debug`
/// leaves the signature out.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct DeliveryHeaders<'a> {
    /// `X-Cariosan-Delivery`.
    pub delivery_id: &'a str,
    /// `X-Cariosan-Event`.
    pub event_type: &'a str,
    /// `X-Cariosan-Signature`; empty when the header is absent.
    pub signature: &'a str,
    /// `X-Cariosan-Attempt`, when present and a number.
    pub attempt: Option<u32>,
}

impl<'a> DeliveryHeaders<'a> {
    /// The headers from their values.
    pub fn new(delivery_id: &'a str, event_type: &'a str, signature: &'a str) -> Self {
        Self {
            delivery_id,
            event_type,
            signature,
            attempt: None,
        }
    }

    /// With this `X-Cariosan-Attempt`.
    #[must_use]
    pub fn attempt(mut self, attempt: Option<u32>) -> Self {
        self.attempt = attempt;
        self
    }

    /// Picks the protocol's headers out of an `http::HeaderMap`, in the
    /// order the layer answers: each must be present at most once and be
    /// text, and the delivery id and event type must follow the grammar.
    #[cfg(feature = "layer")]
    pub fn from_header_map(headers: &'a http::HeaderMap) -> Result<Self, DeliveryError> {
        use crate::protocol::header;

        let delivery_id = match single(headers, &header::DELIVERY) {
            Ok(None) => return Err(DeliveryError::MissingDeliveryId),
            Ok(Some(value)) => value
                .filter(|id| is_valid_delivery_id(id))
                .ok_or(DeliveryError::InvalidDeliveryId)?,
            Err(()) => return Err(DeliveryError::InvalidDeliveryId),
        };
        let event_type = match single(headers, &header::EVENT) {
            Ok(None) => return Err(DeliveryError::MissingEventType),
            Ok(Some(value)) => value
                .filter(|t| is_valid_event_type(t))
                .ok_or(DeliveryError::InvalidEventType)?,
            Err(()) => return Err(DeliveryError::InvalidEventType),
        };
        let malformed = || {
            DeliveryError::Signature(VerifyError::MalformedSignature(
                super::MalformedSignature::BadElement,
            ))
        };
        let signature = match single(headers, &header::SIGNATURE) {
            Ok(None) => "",
            Ok(Some(value)) => value.ok_or_else(malformed)?,
            Err(()) => return Err(malformed()),
        };
        let attempt = headers
            .get(&header::ATTEMPT)
            .and_then(|v| v.to_str().ok()?.parse::<u32>().ok());
        Ok(Self {
            delivery_id,
            event_type,
            signature,
            attempt,
        })
    }

    /// Checks what can be checked before the body arrives: the delivery id
    /// and the event type follow the grammar, and a signature is present.
    pub fn check(&self) -> Result<(), DeliveryError> {
        if self.delivery_id.is_empty() {
            return Err(DeliveryError::MissingDeliveryId);
        }
        if !is_valid_delivery_id(self.delivery_id) {
            return Err(DeliveryError::InvalidDeliveryId);
        }
        if self.event_type.is_empty() {
            return Err(DeliveryError::MissingEventType);
        }
        if !is_valid_event_type(self.event_type) {
            return Err(DeliveryError::InvalidEventType);
        }
        if self.signature.trim_matches([' ', '\t']).is_empty() {
            return Err(DeliveryError::Signature(VerifyError::MissingSignature));
        }
        Ok(())
    }
}

/// The header's only value, as text (`None` inside when it is not text);
/// `Err` when it is repeated.
#[cfg(feature = "layer")]
#[allow(clippy::type_complexity)]
fn single<'a>(
    headers: &'a http::HeaderMap,
    name: &http::HeaderName,
) -> Result<Option<Option<&'a str>>, ()> {
    let mut values = headers.get_all(name).iter();
    match (values.next(), values.next()) {
        (first, None) => Ok(first.map(|value| value.to_str().ok())),
        _ => Err(()),
    }
}

impl fmt::Debug for DeliveryHeaders<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeliveryHeaders")
            .field("delivery_id", &self.delivery_id)
            .field("event_type", &self.event_type)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Which envelope field disagrees with its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnvelopeField {
    /// `id` against `X-Cariosan-Delivery`.
    Id,
    /// `type` against `X-Cariosan-Event`.
    Type,
}

impl EnvelopeField {
    /// The field's name in the envelope.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::Type => "type",
        }
    }
}

impl fmt::Display for EnvelopeField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a delivery is not one the sender signed, framework-free.
///
/// Each variant has the HTTP status and the short code the layer answers
/// with, so any framework can answer the same.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// `X-Cariosan-Delivery` is absent. `400 delivery_header_missing`.
    #[error("Failed to accept the delivery: X-Cariosan-Delivery is missing")]
    MissingDeliveryId,
    /// `X-Cariosan-Delivery` is repeated, not text, or not 1 to 128 of
    /// `A-Z a-z 0-9 _ -`. `400 delivery_header_invalid`.
    #[error("Failed to accept the delivery: X-Cariosan-Delivery is invalid")]
    InvalidDeliveryId,
    /// `X-Cariosan-Event` is absent. `400 event_header_missing`.
    #[error("Failed to accept the delivery: X-Cariosan-Event is missing")]
    MissingEventType,
    /// `X-Cariosan-Event` is repeated or not a plain token.
    /// `400 event_header_invalid`.
    #[error("Failed to accept the delivery: X-Cariosan-Event is invalid")]
    InvalidEventType,
    /// The signature or its timestamp did not verify: `401` with the
    /// [`VerifyError::code`].
    #[error(transparent)]
    Signature(#[from] VerifyError),
    /// The signed body is not an event envelope. `400 envelope_invalid`.
    #[error("Failed to parse the body as an event envelope: {0}")]
    InvalidEnvelope(JsonError),
    /// The envelope's `id` or `type` disagrees with its header.
    /// `400 envelope_mismatch`.
    #[error("Failed to accept the delivery: the envelope's {0} disagrees with its header")]
    EnvelopeMismatch(EnvelopeField),
}

impl DeliveryError {
    /// The HTTP status to answer with: 400 or 401.
    pub fn status_code(&self) -> u16 {
        match self {
            Self::Signature(VerifyError::InvalidDeliveryId) => 400,
            Self::Signature(_) => 401,
            _ => 400,
        }
    }

    /// A short, stable code: the whole answer's body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingDeliveryId => "delivery_header_missing",
            Self::InvalidDeliveryId => "delivery_header_invalid",
            Self::MissingEventType => "event_header_missing",
            Self::InvalidEventType => "event_header_invalid",
            Self::Signature(error) => error.code(),
            Self::InvalidEnvelope(_) => "envelope_invalid",
            Self::EnvelopeMismatch(_) => "envelope_mismatch",
        }
    }
}

impl Verifier {
    /// Verifies a whole delivery as of the verifier's clock: the headers,
    /// then the signature over the raw `body`, then the envelope, which is
    /// parsed only once the signature holds and must carry the headers' `id`
    /// and `type`.
    ///
    /// This is what the verification layer runs; call it from any framework
    /// and pass the result to [`Webhooks::handle`](crate::Webhooks::handle).
    ///
    /// ```
    /// use cariosan_webhooks::verify::{sign, DeliveryHeaders, FixedClock, Secret, Verifier};
    ///
    /// let secret = Secret::new("whsec_example")?;
    /// let body = br#"{"id":"evt_1","type":"webhook.ping","created_at":"2026-11-22T10:00:00Z","workspace_id":"ws_1","data":{"webhook_id":"wh_1","url":"https://example.test/hook"}}"#;
    /// let signature = sign(&[secret.clone()], "evt_1", 1_795_000_000, body);
    /// let verifier = Verifier::from_secret(secret).clock(FixedClock(1_795_000_010));
    ///
    /// let headers = DeliveryHeaders::new("evt_1", "webhook.ping", &signature);
    /// let delivery = verifier.verify_delivery(&headers, body)?;
    /// assert_eq!(delivery.event_type(), "webhook.ping");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn verify_delivery(
        &self,
        headers: &DeliveryHeaders<'_>,
        body: &[u8],
    ) -> Result<VerifiedDelivery, DeliveryError> {
        headers.check()?;
        let verified = self.verify(headers.delivery_id, headers.signature, body)?;
        let payload: Result<Envelope, Arc<MalformedEvent>> = match Envelope::from_slice(body) {
            Ok(envelope) => Ok(envelope),
            Err(ParseError::MalformedData(malformed)) => Err(Arc::from(malformed)),
            Err(ParseError::InvalidEnvelope(error)) => {
                return Err(DeliveryError::InvalidEnvelope(error))
            }
        };
        let (id, event_type) = match &payload {
            Ok(envelope) => (envelope.id.as_str(), envelope.event_type()),
            Err(malformed) => (malformed.id().as_str(), malformed.event_type()),
        };
        if id != headers.delivery_id {
            return Err(DeliveryError::EnvelopeMismatch(EnvelopeField::Id));
        }
        if event_type != headers.event_type {
            return Err(DeliveryError::EnvelopeMismatch(EnvelopeField::Type));
        }
        Ok(VerifiedDelivery::new(
            headers.attempt,
            verified.timestamp(),
            verified.secret_index(),
            payload,
        ))
    }

    /// [`verify_delivery`](Self::verify_delivery) over an `http::HeaderMap`
    /// (feature `layer`), for any framework built on the `http` crate.
    #[cfg(feature = "layer")]
    pub fn verify_http(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<VerifiedDelivery, DeliveryError> {
        self.verify_delivery(&DeliveryHeaders::from_header_map(headers)?, body)
    }
}

/// A delivery whose signature verified and whose envelope parsed: the proof
/// that the verification layer inserts into the request it passes on.
///
/// Only [`Verifier::verify_delivery`] (and the test kit) make one, so code
/// that finds it knows the delivery was signed;
/// [`Webhooks`](crate::Webhooks), the delivery layer and the extractors
/// refuse requests that lack it. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct VerifiedDelivery(Arc<Inner>);

#[derive(Debug, Clone)]
struct Inner {
    tenant: Option<Arc<str>>,
    attempt: Option<u32>,
    signed_at: i64,
    secret_index: usize,
    payload: Result<Envelope, Arc<MalformedEvent>>,
}

impl VerifiedDelivery {
    pub(crate) fn new(
        attempt: Option<u32>,
        signed_at: i64,
        secret_index: usize,
        payload: Result<Envelope, Arc<MalformedEvent>>,
    ) -> Self {
        Self(Arc::new(Inner {
            tenant: None,
            attempt,
            signed_at,
            secret_index,
            payload,
        }))
    }

    /// A delivery verified before and stored (by the inbox): its body is
    /// parsed again, its signature is not checked again (the secret may
    /// have rotated since). `None` when the body is not an envelope.
    #[cfg(feature = "postgres")]
    pub(crate) fn from_stored(
        tenant: Option<Arc<str>>,
        attempt: Option<u32>,
        signed_at: i64,
        body: &[u8],
    ) -> Option<Self> {
        let payload = match Envelope::from_slice(body) {
            Ok(envelope) => Ok(envelope),
            Err(ParseError::MalformedData(malformed)) => Err(Arc::from(malformed)),
            Err(ParseError::InvalidEnvelope(_)) => return None,
        };
        Some(Self(Arc::new(Inner {
            tenant,
            attempt,
            signed_at,
            secret_index: 0,
            payload,
        })))
    }

    /// This delivery, of `tenant` (a workspace, when one receiver serves
    /// several).
    #[cfg(feature = "layer")]
    pub(crate) fn with_tenant(mut self, tenant: Option<Arc<str>>) -> Self {
        if tenant.is_some() {
            // Fresh from verification, so not shared: no copy is made.
            Arc::make_mut(&mut self.0).tenant = tenant;
        }
        self
    }

    /// The tenant this delivery came for, when the verification layer serves
    /// several workspaces: it joins the delivery id in every store's key.
    pub fn tenant(&self) -> Option<&str> {
        self.0.tenant.as_deref()
    }

    #[cfg(feature = "layer")]
    pub(crate) fn shared_tenant(&self) -> Option<&Arc<str>> {
        self.0.tenant.as_ref()
    }

    /// The delivery id (`X-Cariosan-Delivery`, equal to the envelope's
    /// `id`), the same on every retry: de-duplicate on it.
    pub fn id(&self) -> &EventId {
        match &self.0.payload {
            Ok(envelope) => &envelope.id,
            Err(malformed) => malformed.id(),
        }
    }

    /// `X-Cariosan-Attempt`: 1 on the first try. Informational and unsigned;
    /// `None` when absent or not a number.
    pub fn attempt(&self) -> Option<u32> {
        self.0.attempt
    }

    /// When the sender signed this attempt (the signature's `t`), in Unix
    /// seconds.
    pub fn signed_at(&self) -> i64 {
        self.0.signed_at
    }

    /// Which of the verifier's secrets matched, in the order they were added
    /// (0 is the first); 0 for a delivery an inbox worker runs, which is not
    /// verified again.
    pub fn secret_index(&self) -> usize {
        self.0.secret_index
    }

    /// The event type, as in the envelope and the header.
    pub fn event_type(&self) -> &str {
        match &self.0.payload {
            Ok(envelope) => envelope.event_type(),
            Err(malformed) => malformed.event_type(),
        }
    }

    /// The typed envelope, or `None` when its data did not fit the model.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.0.payload.as_ref().ok()
    }

    /// The envelope whose data did not fit the model, if that is the case.
    pub fn malformed(&self) -> Option<&Arc<MalformedEvent>> {
        self.0.payload.as_ref().err()
    }
}
