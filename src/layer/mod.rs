//! The tower layer that verifies deliveries.
//!
//! [`CariosanWebhookLayer`] wraps any `tower::Service<http::Request<BytesBody>>`
//! (an axum `Router` or route, a [`Webhooks`](crate::Webhooks) dispatcher,
//! or a plain service) and lets through only deliveries that verify. It
//! works on a request in this order, answering at the first failure:
//!
//! 1. the method is `POST` (else `405`, with `Allow: POST`);
//! 2. `X-Cariosan-Delivery` and `X-Cariosan-Event` are present once and
//!    well-formed (else `400`), `X-Cariosan-Signature` is present once
//!    (else `401`), and the body has no `Content-Encoding` (else `415`);
//! 3. a `Content-Length` over the limit is answered `413` before any byte
//!    of the body is read;
//! 4. the body is read within the limit (`413`, chunked bodies included)
//!    and the read timeout (`408`);
//! 5. the signature and its timestamp are verified (`401`);
//! 6. the signed body is parsed once into the typed model (`400` when it is
//!    not an envelope) and its `id` and `type` must equal the headers
//!    (`400`);
//! 7. the delivery id is claimed in the [idempotency store](crate::store)
//!    (`200 duplicate` if it was handled, `503` if a copy is running, the
//!    store is down, the layer is shutting down or too many runs are under
//!    way);
//! 8. the inner service is called, detached from the client, with the raw
//!    body and a [`VerifiedDelivery`](crate::VerifiedDelivery) extension; a
//!    2xx answer completes the claim, anything else releases it, and past
//!    the handler budget the sender is answered `503` while the call goes
//!    on.
//!
//! Every rejection is a [`Rejection`](crate::Rejection): a fixed status and
//! a short code as the body. The inner service's response passes through
//! unchanged. Each delivery gets a `cariosan_webhook` tracing span with its
//! delivery id, event type, attempt, status and outcome; bodies, secrets
//! and MACs are never logged.
//!
//! The layer keeps `Error = S::Error`, so it fits `Router::layer` without a
//! `HandleErrorLayer`. It needs a tokio runtime: the inner call runs as a
//! task, and the body read and the budget are timed. Take a
//! [`ShutdownHandle`] after configuring the layer.
//!
//! ```
//! use std::time::Duration;
//! use cariosan_webhooks::{CariosanWebhookLayer, Webhooks};
//! use cariosan_webhooks::verify::FixedClock;
//!
//! let layer = CariosanWebhookLayer::new("whsec_new")
//!     .secret("whsec_old")                 // accept both while rolling
//!     .tolerance(Duration::from_secs(120))
//!     .body_limit(256 * 1024)
//!     .clock(FixedClock(1_795_000_000));  // verify "as of", in tests
//! let app = axum::Router::new()
//!     .route("/webhooks/cariosan", axum::routing::post_service(Webhooks::new()))
//!     .layer(layer);
//! # let _: axum::Router = app;
//! ```

pub(crate) mod future;
#[allow(clippy::module_inception)]
mod layer;
mod run;
mod service;

pub use future::{ResponseBody, ResponseFuture};
pub use layer::{
    CariosanWebhookLayer, DEFAULT_BODY_LIMIT, DEFAULT_BODY_TIMEOUT, DEFAULT_HANDLER_BUDGET,
    DEFAULT_LEASE, DEFAULT_MAX_CONCURRENCY, DEFAULT_RETENTION, DEFAULT_RETRY_AFTER,
};
pub use run::{Drained, ShutdownHandle};
pub use service::{
    CariosanWebhookService, ATTEMPT_HEADER, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER,
};
