//! The proof that a request was verified.

use std::sync::Arc;

use crate::model::{Envelope, EventId, MalformedEvent};

/// A delivery that [`CariosanWebhookLayer`](crate::CariosanWebhookLayer)
/// verified and parsed, attached to the request it passes on as an
/// extension.
///
/// Only the layer can make one, so a handler that finds it knows the
/// request was signed; [`Webhooks`](crate::Webhooks) and the extractors
/// refuse requests that lack it. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct VerifiedDelivery(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    id: EventId,
    attempt: Option<u32>,
    signed_at: i64,
    payload: Result<Envelope, Box<MalformedEvent>>,
}

impl VerifiedDelivery {
    pub(crate) fn new(
        id: EventId,
        attempt: Option<u32>,
        signed_at: i64,
        payload: Result<Envelope, Box<MalformedEvent>>,
    ) -> Self {
        Self(Arc::new(Inner {
            id,
            attempt,
            signed_at,
            payload,
        }))
    }

    /// The delivery id (`X-Cariosan-Delivery`), the same on every retry:
    /// de-duplicate on it.
    pub fn id(&self) -> &EventId {
        &self.0.id
    }

    /// `X-Cariosan-Attempt`: 1 on the first try. Informational and unsigned;
    /// `None` when absent or not a number.
    pub fn attempt(&self) -> Option<u32> {
        self.0.attempt
    }

    /// When the sender signed this attempt, in Unix seconds.
    pub fn signed_at(&self) -> i64 {
        self.0.signed_at
    }

    /// The event type, as in the envelope.
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
    pub fn malformed(&self) -> Option<&MalformedEvent> {
        self.0.payload.as_ref().err().map(|m| &**m)
    }

    /// The parsed payload, moved out when this is the last handle to it and
    /// cloned otherwise.
    pub(crate) fn into_payload(self) -> Result<Envelope, Box<MalformedEvent>> {
        Arc::try_unwrap(self.0)
            .map(|inner| inner.payload)
            .unwrap_or_else(|shared| shared.payload.clone())
    }
}
