//! Receive Cariosan webhooks in Rust: verify, type and route every
//! delivery.
//! - [`verify`]: HMAC-SHA256 signature and timestamp verification, in
//!   constant time, with several secrets for rotation and an injectable
//!   clock. No framework, no runtime.
//! - [`model`]: the typed [`Event`](model::Event) enum over every event type,
//!   parsed in one pass from the verified bytes, and built not to break when
//!   the server adds fields, enum values or event types.
//! - [`CariosanWebhookLayer`]: a tower layer that answers everything that is
//!   not a signed, well-formed delivery before your code runs.
//! - [`Webhooks`]: a registry of async handlers per event type, mounted as a
//!   service behind the layer.
//!
//!
//! # Example
//!
//! ```no_run
//! use axum::{routing::post_service, Router};
//! use cariosan_webhooks::model::ChannelCreated;
//! use cariosan_webhooks::{CariosanWebhookLayer, Delivery, HandlerResult, Webhooks};
//!
//! async fn handle_channel_created(event: Delivery<ChannelCreated>) -> HandlerResult {
//!     println!("new channel {}", event.channel.id);
//!     Ok(())
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let webhooks = Webhooks::new()
//!         .on_message_created(|event| async move {
//!             if let Some(quoted) = &event.message.quoted_message {
//!                 println!("a reply to {}", quoted.id);
//!             }
//!             for user in &event.message.mentions {
//!                 println!("mentions {}", user.external_id);
//!             }
//!             Ok(())
//!         })
//!         .on_channel_created(handle_channel_created)
//!         .on_unknown(|raw| async move {
//!             println!("unknown event type {}", raw.event_type());
//!             Ok(())
//!         });
//!
//!     let app = Router::new()
//!         .route("/webhooks/cariosan", post_service(webhooks))
//!         .layer(CariosanWebhookLayer::new(std::env::var("CARIOSAN_WEBHOOK_SECRET")?));
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! Handlers reach application state by capturing a clone of it (an `Arc`, or
//! a database pool): see [`dispatch`] and the `app_state` example. If you
//! prefer one axum handler with a `match`, use the `VerifiedEvent`
//! extractor (feature `axum`).
//!
//! # What the sender sees
//!
//! | status | when |
//! |---|---|
//! | `200 handled` / `200 ignored` | the handlers succeeded / no handler matched |
//! | `200 duplicate` / `200 given_up` | the delivery was handled before / a handler gave up on it |
//! | `400` | a malformed `X-Cariosan-Delivery` or `X-Cariosan-Event`, a signed body that is not an envelope, or an `id`/`type` that disagrees with the headers |
//! | `401` | a missing or malformed signature, a stale or future timestamp, no matching signature |
//! | `405` | not a `POST` |
//! | `408` | the body did not arrive within the read timeout |
//! | `413` | the body is over the limit (1 MiB by default) |
//! | `415` | the body has a `Content-Encoding` |
//! | `500` | a handler failed or panicked, the data did not fit the model, or the layer is missing |
//! | `503` + `Retry-After` | a copy is running, the handlers passed the budget, a handler asked for a later retry, too many runs, shutting down, or the store is unreachable |
//!
//! Handlers never run twice for one delivery, and nothing is acknowledged
//! before they succeeded: see [`store`] for how.
//!
//! Every non-2xx answer has a short code as its body: see [`Rejection`].
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `layer` | yes | [`CariosanWebhookLayer`], [`Webhooks`], [`VerifiedDelivery`], [`Rejection`], the in-memory idempotency [`store`] (tower, http, tokio) |
//! | `axum` | no | the `VerifiedEvent` and [`VerifiedDelivery`] extractors and `IntoResponse` for [`Rejection`] (axum-core) |
//! | `redis` | no | `store::RedisStore`, an idempotency store shared by several replicas |
//! | `ring` | no | HMAC-SHA256 from `ring`'s assembly instead of `hmac` + `sha2`: 1.6 to 1.8× faster on CPUs without SHA extensions (needs a C compiler to build) |
//! | `test-util` | no | `test_util`: signed test requests for any event, sample events of every type |
//! | `cli` | no | the `cariosan-webhooks` command: `send`, `sign`, `verify`, `listen` |
//!
//! With `default-features = false`, only [`verify`] and [`model`] remain:
//! no HTTP stack and no async runtime.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod model;
pub mod verify;

#[cfg(feature = "layer")]
mod body;
#[cfg(feature = "layer")]
mod delivery;
#[cfg(feature = "layer")]
pub mod dispatch;
#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "layer")]
pub mod layer;
#[cfg(feature = "layer")]
mod rejection;
#[cfg(feature = "layer")]
pub mod store;
#[cfg(feature = "test-util")]
pub mod test_util;

#[cfg(feature = "layer")]
pub use body::BytesBody;
#[cfg(feature = "layer")]
pub use delivery::VerifiedDelivery;
#[cfg(feature = "layer")]
pub use dispatch::{Delivery, GivenUp, HandlerError, HandlerResult, Webhooks};
#[cfg(feature = "axum")]
pub use extract::VerifiedEvent;
#[cfg(feature = "layer")]
pub use layer::{CariosanWebhookLayer, CariosanWebhookService};
#[cfg(feature = "layer")]
pub use rejection::Rejection;

/// The answer, and the loud log, for a request that reached a handler
/// without passing the layer.
#[cfg(feature = "layer")]
fn not_verified() -> Rejection {
    tracing::error!(
        "a Cariosan webhook handler was reached by a request that CariosanWebhookLayer did not \
         verify: add the layer to this route; answering 500"
    );
    Rejection::NotVerified
}

/// The README's examples use every feature; `.ci/run` tests them.
#[cfg(all(doctest, feature = "axum", feature = "redis"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
