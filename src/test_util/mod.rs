//! Build correctly signed deliveries for your own tests (feature
//! `test-util`).
//!
//! [`TestDelivery`] signs any event, a fixture, or raw bytes the way
//! Cariosan does, with control over the secrets, the timestamp, the delivery
//! id and the attempt, and turns it into an `http::Request` you can drive
//! your `Router` with through `tower::ServiceExt::oneshot`, no network
//! needed, or into a [`VerifiedDelivery`] for
//! [`Webhooks::handle`](crate::Webhooks::handle). [`delivery`] builds the
//! [`Delivery`] a handler function takes, to unit-test it directly.
//! [`samples`] has a realistic event of every type.
//!
//! ```
//! use axum::routing::post_service;
//! use cariosan_webhooks::test_util::{samples, TestDelivery};
//! use cariosan_webhooks::{CariosanWebhookLayer, Webhooks};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = axum::Router::new()
//!     .route("/webhooks/cariosan", post_service(Webhooks::new().on_message_created(|event| async move {
//!         assert_eq!(event.message.mentions.len(), 2);
//!         Ok(())
//!     })).layer(CariosanWebhookLayer::new("whsec_test")));
//!
//! let request = TestDelivery::event(samples::message_created_reply())
//!     .secret("whsec_test")
//!     .into_request("/webhooks/cariosan");
//! let response = app.oneshot(request).await.unwrap();
//! assert_eq!(response.status(), 200);
//! # }
//! ```

pub mod samples;

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::Request;

use crate::dispatch::Delivery;
use crate::model::{Envelope, Payload};
use crate::protocol::{ATTEMPT_HEADER, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER};
use crate::response::BytesBody;
pub use crate::verify::FixedClock;
use crate::verify::{sign, DeliveryError, DeliveryHeaders, Secret, VerifiedDelivery, Verifier};

/// The secret a [`TestDelivery`] signs with unless told otherwise.
pub const TEST_SECRET: &str = "whsec_test";

/// A delivery to sign and send in a test.
#[derive(Debug, Clone)]
#[must_use]
pub struct TestDelivery {
    id: String,
    event_type: String,
    body: Bytes,
    secrets: Vec<String>,
    timestamp: Option<i64>,
    attempt: u32,
}

impl TestDelivery {
    /// A delivery of this envelope: its id and type become the headers.
    pub fn event(envelope: Envelope) -> Self {
        let body = serde_json::to_vec(&envelope).expect("an envelope serialises");
        Self::bytes(envelope.id.as_str(), envelope.event_type(), body)
    }

    /// A delivery of a JSON envelope as text (a fixture, say): its `id` and
    /// `type` become the headers, and the bytes are sent exactly as given.
    ///
    /// # Panics
    ///
    /// If the text has no string `id` and `type`: use
    /// [`bytes`](Self::bytes) for bodies that are not envelopes.
    pub fn json(json: impl Into<Bytes>) -> Self {
        #[derive(serde::Deserialize)]
        struct Head {
            id: String,
            #[serde(rename = "type")]
            event_type: String,
        }
        let body = json.into();
        let head: Head =
            serde_json::from_slice(&body).expect("a JSON envelope with an id and a type");
        Self::bytes(head.id, head.event_type, body)
    }

    /// A delivery of any bytes, with these headers: for testing what your
    /// receiver does with bodies that are not valid envelopes.
    pub fn bytes(
        id: impl Into<String>,
        event_type: impl Into<String>,
        body: impl Into<Bytes>,
    ) -> Self {
        Self {
            id: id.into(),
            event_type: event_type.into(),
            body: body.into(),
            secrets: vec![TEST_SECRET.to_owned()],
            timestamp: None,
            attempt: 1,
        }
    }

    /// Signs with this secret only (default [`TEST_SECRET`]).
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secrets = vec![secret.into()];
        self
    }

    /// Signs with each of these secrets, newest first, as during a rotation.
    pub fn secrets<S: Into<String>>(mut self, secrets: impl IntoIterator<Item = S>) -> Self {
        self.secrets = secrets.into_iter().map(Into::into).collect();
        self
    }

    /// Signs at this Unix time (default: now).
    pub fn timestamp(mut self, timestamp: i64) -> Self {
        self.timestamp = Some(timestamp);
        self
    }

    /// Sends this `X-Cariosan-Delivery` (default: the envelope's id), to
    /// test a header that disagrees with the body, say.
    pub fn delivery_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sends this `X-Cariosan-Event` (default: the envelope's type).
    pub fn event_type(mut self, event_type: impl Into<String>) -> Self {
        self.event_type = event_type.into();
        self
    }

    /// Sends this `X-Cariosan-Attempt` (default 1).
    pub fn attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// The body that is signed and sent.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The `X-Cariosan-Signature` value.
    ///
    /// # Panics
    ///
    /// If a secret is empty.
    pub fn signature(&self) -> String {
        let secrets: Vec<Secret> = self
            .secrets
            .iter()
            .map(|s| Secret::new(s).expect("a non-empty test secret"))
            .collect();
        let timestamp = self.timestamp.unwrap_or_else(now);
        sign(&secrets, &self.id, timestamp, &self.body)
    }

    /// The headers Cariosan sends, in order.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        vec![
            ("content-type", "application/json".to_owned()),
            ("user-agent", "Cariosan-Webhook/1".to_owned()),
            (DELIVERY_HEADER, self.id.clone()),
            (EVENT_HEADER, self.event_type.clone()),
            (ATTEMPT_HEADER, self.attempt.to_string()),
            (SIGNATURE_HEADER, self.signature()),
        ]
    }

    /// A signed `POST` to `path`, ready for `oneshot`.
    pub fn into_request(self, path: &str) -> Request<BytesBody> {
        let mut request = Request::post(path);
        for (name, value) in self.headers() {
            request = request.header(name, value);
        }
        request
            .body(BytesBody::new(self.body))
            .expect("a valid request")
    }
}

impl TestDelivery {
    /// Signs the delivery and verifies it as a receiver holding the first
    /// of its secrets would, with [`Verifier::verify_delivery`]: the
    /// [`VerifiedDelivery`] to pass to
    /// [`Webhooks::handle`](crate::Webhooks::handle), or why it does not
    /// verify.
    ///
    /// # Panics
    ///
    /// If a secret is empty.
    pub fn verify(&self) -> Result<VerifiedDelivery, DeliveryError> {
        let secret = self.secrets.first().map_or(TEST_SECRET, String::as_str);
        let verifier = Verifier::new(secret).expect("a non-empty test secret");
        let signature = self.signature();
        let headers = DeliveryHeaders::new(&self.id, &self.event_type, &signature)
            .attempt(Some(self.attempt));
        let verifier = match self.timestamp {
            Some(t) => verifier.clock(FixedClock(t)),
            None => verifier,
        };
        verifier.verify_delivery(&headers, &self.body)
    }
}

/// The [`Delivery`] a handler of `T` receives for `envelope`, on its first
/// attempt, signed now: call your handler function with it directly.
///
/// ```
/// use cariosan_webhooks::model::MessageCreated;
/// use cariosan_webhooks::test_util::{delivery, samples};
/// use cariosan_webhooks::{Delivery, HandlerResult};
///
/// async fn on_reply(event: Delivery<MessageCreated>) -> HandlerResult {
///     assert!(event.message.quoted_message.is_some());
///     Ok(())
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// on_reply(delivery(samples::message_created_reply())).await.unwrap();
/// # }
/// ```
///
/// # Panics
///
/// If the envelope's event does not carry a `T`.
pub fn delivery<T: Payload>(envelope: Envelope) -> Delivery<T> {
    Delivery::of(&envelope, Some(1), now()).unwrap_or_else(|| {
        panic!(
            "a {} event does not carry a {}",
            envelope.event_type(),
            std::any::type_name::<T>()
        )
    })
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}
