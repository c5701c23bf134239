//! axum extractors for handlers that prefer one function with a `match`.

use std::fmt;

use axum_core::extract::FromRequestParts;
use axum_core::response::IntoResponse;
use http::request::Parts;
use http::StatusCode;

use crate::model::Envelope;
use crate::response::answer;
use crate::verify::VerifiedDelivery;

/// Why an extractor refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExtractRejection {
    /// The request did not pass a verification layer. `500 not_verified`,
    /// logged as an error.
    NotVerified,
    /// The envelope's data does not fit the model (extract
    /// [`VerifiedDelivery`] to handle those). `500 event_malformed`.
    Malformed,
}

impl ExtractRejection {
    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    /// A short, stable code: the whole answer's body.
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotVerified => "not_verified",
            Self::Malformed => "event_malformed",
        }
    }

    /// The body of the answer: the code.
    pub fn body_text(&self) -> &'static str {
        self.code()
    }
}

impl fmt::Display for ExtractRejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotVerified => "Failed to extract the delivery: the request was not verified",
            Self::Malformed => "Failed to extract the event: its data does not fit the model",
        })
    }
}

impl std::error::Error for ExtractRejection {}

impl IntoResponse for ExtractRejection {
    fn into_response(self) -> axum_core::response::Response {
        match self {
            Self::NotVerified => crate::delivery::not_verified(),
            Self::Malformed => answer(self.status(), self.code(), None),
        }
        .map(axum_core::body::Body::new)
    }
}

/// The verified, typed envelope of a delivery, as an axum extractor.
///
/// It only ever yields what a verification layer verified: without one it
/// rejects with `500 not_verified` and an error log, and an envelope whose
/// data did not fit the model is `500 event_malformed` (extract
/// [`VerifiedDelivery`] to handle those).
///
/// ```
/// use axum::{routing::post, Router};
/// use cariosan_webhooks::{model::Event, CariosanWebhookLayer, VerifiedEvent};
///
/// async fn webhook(VerifiedEvent(envelope): VerifiedEvent) -> &'static str {
///     match envelope.event {
///         Event::MessageCreated(created) => println!("{}", created.message.content),
///         Event::ChannelDeleted(deleted) => println!("{}", deleted.channel.id),
///         _ => {}
///     }
///     "ok"
/// }
///
/// let app: Router = Router::new()
///     .route("/webhooks/cariosan", post(webhook).layer(CariosanWebhookLayer::new("whsec_example")));
/// ```
#[derive(Debug, Clone)]
pub struct VerifiedEvent(pub Envelope);

impl<S: Send + Sync> FromRequestParts<S> for VerifiedEvent {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ExtractRejection> {
        let delivery = VerifiedDelivery::from_request_parts(parts, state).await?;
        match delivery.envelope() {
            Some(envelope) => Ok(Self(envelope.clone())),
            None => Err(ExtractRejection::Malformed),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for VerifiedDelivery {
    type Rejection = ExtractRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ExtractRejection> {
        parts
            .extensions
            .get::<VerifiedDelivery>()
            .cloned()
            .ok_or(ExtractRejection::NotVerified)
    }
}
