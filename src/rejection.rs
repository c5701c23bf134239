//! Every answer the crate gives other than success: a status and a short,
//! stable code.

use std::error::Error;
use std::fmt;
use std::time::Duration;

use http::{header, HeaderValue, Response, StatusCode};

use crate::body::BytesBody;
use crate::model::ParseError;
use crate::verify::VerifyError;

/// Why a delivery was not acknowledged.
///
/// Each variant has a fixed [`status`](Rejection::status) and
/// [`code`](Rejection::code); the response body is the code alone, so it
/// tells a sender what failed and nothing more.
#[derive(Debug)]
#[non_exhaustive]
pub enum Rejection {
    /// The method was not `POST`. `405 method_not_allowed`.
    MethodNotAllowed,
    /// `X-Cariosan-Delivery` was absent. `400 delivery_header_missing`.
    MissingDeliveryId,
    /// `X-Cariosan-Delivery` was repeated, not text, or not 1 to 128
    /// characters of `A-Z a-z 0-9 _ -`. `400 delivery_header_invalid`.
    InvalidDeliveryId,
    /// `X-Cariosan-Event` was absent. `400 event_header_missing`.
    MissingEventType,
    /// `X-Cariosan-Event` was repeated or not a plain token.
    /// `400 event_header_invalid`.
    InvalidEventType,
    /// The body was compressed or otherwise encoded; the signature covers
    /// the bytes as sent, which the protocol never encodes.
    /// `415 content_encoding_unsupported`.
    UnsupportedEncoding,
    /// The signature or its timestamp did not verify. `401` with the
    /// [`VerifyError::code`].
    Verification(VerifyError),
    /// The body is larger than the limit. `413 body_too_large`.
    BodyTooLarge,
    /// The body did not arrive within the read timeout. `408 body_timeout`.
    BodyTimeout,
    /// Reading the body failed (the client went away, say).
    /// `400 body_read_failed`.
    BodyReadFailed,
    /// The signed body is not a valid envelope. `400 envelope_invalid`.
    InvalidEnvelope(ParseError),
    /// The envelope's `id` or `type` disagrees with its header.
    /// `400 envelope_mismatch`.
    EnvelopeMismatch {
        /// `"id"` or `"type"`.
        field: &'static str,
    },
    /// A handler or extractor was reached by a request that
    /// [`CariosanWebhookLayer`](crate::CariosanWebhookLayer) did not verify:
    /// the layer is missing. `500 not_verified`.
    NotVerified,
    /// The signed envelope's `data` does not fit the typed model and no
    /// `on_malformed` handler took it. `500 event_malformed`, so the sender
    /// keeps retrying while the receiver is fixed.
    MalformedEvent,
    /// A handler returned an error. `500 handler_failed`.
    HandlerFailed,
    /// A handler panicked. `500 handler_panicked`.
    HandlerPanicked,
    /// Another copy of this delivery is being handled right now.
    /// `503 delivery_in_progress` with `Retry-After`.
    DeliveryInProgress {
        /// When to try again.
        retry_after: Duration,
    },
    /// The handlers are still running past the time budget; they go on, and
    /// their outcome answers the sender's retry. `503 handler_still_running`
    /// with `Retry-After`.
    HandlerStillRunning {
        /// When to try again.
        retry_after: Duration,
    },
    /// A handler asked for the delivery to be retried later.
    /// `503 retry_later` with `Retry-After`.
    RetryLater {
        /// When to try again.
        retry_after: Duration,
    },
    /// As many handler runs as allowed are under way. `503 overloaded` with
    /// `Retry-After`.
    Overloaded {
        /// When to try again.
        retry_after: Duration,
    },
    /// The receiver is shutting down. `503 shutting_down` with `Retry-After`.
    ShuttingDown {
        /// When to try again.
        retry_after: Duration,
    },
    /// The idempotency store could not be reached. `503 store_unavailable`
    /// with `Retry-After`.
    StoreUnavailable {
        /// When to try again.
        retry_after: Duration,
    },
}

impl Rejection {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Verification(VerifyError::InvalidDeliveryId)
            | Self::MissingDeliveryId
            | Self::InvalidDeliveryId
            | Self::MissingEventType
            | Self::InvalidEventType
            | Self::BodyReadFailed
            | Self::InvalidEnvelope(_)
            | Self::EnvelopeMismatch { .. } => StatusCode::BAD_REQUEST,
            Self::UnsupportedEncoding => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Verification(_) => StatusCode::UNAUTHORIZED,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::NotVerified
            | Self::MalformedEvent
            | Self::HandlerFailed
            | Self::HandlerPanicked => StatusCode::INTERNAL_SERVER_ERROR,
            Self::DeliveryInProgress { .. }
            | Self::HandlerStillRunning { .. }
            | Self::RetryLater { .. }
            | Self::Overloaded { .. }
            | Self::ShuttingDown { .. }
            | Self::StoreUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A short, stable, machine-readable code: the whole response body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MethodNotAllowed => "method_not_allowed",
            Self::MissingDeliveryId => "delivery_header_missing",
            Self::InvalidDeliveryId => "delivery_header_invalid",
            Self::MissingEventType => "event_header_missing",
            Self::InvalidEventType => "event_header_invalid",
            Self::UnsupportedEncoding => "content_encoding_unsupported",
            Self::Verification(error) => error.code(),
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::BodyReadFailed => "body_read_failed",
            Self::InvalidEnvelope(_) => "envelope_invalid",
            Self::EnvelopeMismatch { .. } => "envelope_mismatch",
            Self::NotVerified => "not_verified",
            Self::MalformedEvent => "event_malformed",
            Self::HandlerFailed => "handler_failed",
            Self::HandlerPanicked => "handler_panicked",
            Self::DeliveryInProgress { .. } => "delivery_in_progress",
            Self::HandlerStillRunning { .. } => "handler_still_running",
            Self::RetryLater { .. } => "retry_later",
            Self::Overloaded { .. } => "overloaded",
            Self::ShuttingDown { .. } => "shutting_down",
            Self::StoreUnavailable { .. } => "store_unavailable",
        }
    }

    /// How long the sender should wait before retrying, on a `503`.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::DeliveryInProgress { retry_after }
            | Self::HandlerStillRunning { retry_after }
            | Self::RetryLater { retry_after }
            | Self::Overloaded { retry_after }
            | Self::ShuttingDown { retry_after }
            | Self::StoreUnavailable { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The answer as an HTTP response: the status, the code as
    /// `text/plain`, `Allow: POST` on a 405 and `Retry-After` (whole seconds,
    /// rounded up) on a 503.
    pub fn to_response(&self) -> Response<BytesBody> {
        let mut response = Response::new(BytesBody::from(self.code()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if matches!(self, Self::MethodNotAllowed) {
            headers.insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        if let Some(retry_after) = self.retry_after() {
            let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response.extensions_mut().insert(Outcome(self.code()));
        response
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MethodNotAllowed => f.write_str("Failed to accept the delivery: not a POST"),
            Self::MissingDeliveryId => f.write_str("Failed to accept the delivery: X-Cariosan-Delivery is missing"),
            Self::InvalidDeliveryId => f.write_str("Failed to accept the delivery: X-Cariosan-Delivery is invalid"),
            Self::MissingEventType => f.write_str("Failed to accept the delivery: X-Cariosan-Event is missing"),
            Self::InvalidEventType => f.write_str("Failed to accept the delivery: X-Cariosan-Event is invalid"),
            Self::UnsupportedEncoding => f.write_str("Failed to accept the delivery: the body has a content encoding"),
            Self::Verification(error) => fmt::Display::fmt(error, f),
            Self::BodyTooLarge => f.write_str("Failed to read the body: it is over the limit"),
            Self::BodyTimeout => f.write_str("Failed to read the body in time"),
            Self::BodyReadFailed => f.write_str("Failed to read the body"),
            Self::InvalidEnvelope(error) => fmt::Display::fmt(error, f),
            Self::EnvelopeMismatch { field } => write!(f, "Failed to accept the delivery: the envelope's {field} disagrees with its header"),
            Self::NotVerified => f.write_str("Failed to handle the request: it was not verified by CariosanWebhookLayer"),
            Self::MalformedEvent => f.write_str("Failed to handle the event: its data does not fit the model and no on_malformed handler took it"),
            Self::HandlerFailed => f.write_str("Failed to handle the event: a handler returned an error"),
            Self::HandlerPanicked => f.write_str("Failed to handle the event: a handler panicked"),
            Self::DeliveryInProgress { .. } => f.write_str("Failed to start the handlers: another copy of this delivery is being handled"),
            Self::HandlerStillRunning { .. } => f.write_str("Failed to finish the handlers within the time budget; they go on running"),
            Self::RetryLater { .. } => f.write_str("Failed to handle the event now: a handler asked for a retry later"),
            Self::Overloaded { .. } => f.write_str("Failed to start the handlers: too many are running"),
            Self::ShuttingDown { .. } => f.write_str("Failed to start the handlers: the receiver is shutting down"),
            Self::StoreUnavailable { .. } => f.write_str("Failed to reach the idempotency store"),
        }
    }
}

impl Error for Rejection {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            Self::Verification(error) => Some(error),
            Self::InvalidEnvelope(error) => Some(error),
            _ => None,
        }
    }
}

#[cfg(feature = "axum")]
impl axum_core::response::IntoResponse for Rejection {
    fn into_response(self) -> axum_core::response::Response {
        self.to_response().map(axum_core::body::Body::new)
    }
}

/// A `200` acknowledgement whose body is the outcome: `handled`, `ignored`,
/// `given_up` or `duplicate`.
pub(crate) fn acknowledge(outcome: &'static str) -> Response<BytesBody> {
    let mut response = Response::new(BytesBody::from(outcome));
    response.extensions_mut().insert(Outcome(outcome));
    response
}

/// The outcome code of a delivery, set as a response extension by the crate
/// (`handled`, `ignored`, or a [`Rejection::code`]) so the layer can record
/// it on the delivery's span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome(pub(crate) &'static str);
