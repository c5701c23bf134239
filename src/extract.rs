//! axum extractors for handlers that prefer one function with a `match`.

use axum_core::extract::FromRequestParts;
use http::request::Parts;

use crate::delivery::VerifiedDelivery;
use crate::model::Envelope;
use crate::rejection::Rejection;

/// The verified, typed envelope of a delivery, as an axum extractor.
///
/// It only ever yields what [`CariosanWebhookLayer`](crate::CariosanWebhookLayer)
/// verified: without the layer it rejects with `500 not_verified` and an
/// error log, and an envelope whose data did not fit the model is
/// `500 event_malformed` (extract [`VerifiedDelivery`] to handle those).
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
///     .route("/webhooks/cariosan", post(webhook))
///     .layer(CariosanWebhookLayer::new("whsec_example"));
/// ```
#[derive(Debug, Clone)]
pub struct VerifiedEvent(pub Envelope);

impl<S: Send + Sync> FromRequestParts<S> for VerifiedEvent {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Rejection> {
        let delivery = VerifiedDelivery::from_request_parts(parts, state).await?;
        match delivery.envelope() {
            Some(envelope) => Ok(Self(envelope.clone())),
            None => Err(Rejection::MalformedEvent),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for VerifiedDelivery {
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Rejection> {
        parts
            .extensions
            .get::<VerifiedDelivery>()
            .cloned()
            .ok_or_else(crate::not_verified)
    }
}
