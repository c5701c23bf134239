//! Receive Cariosan webhooks in Rust: verify, type and route every
//! delivery, and give it delivery semantics you can rely on.
//!
//! The path of a delivery through the crate:
//!
//! - [`protocol`]: the wire contract in constants (header names, limits,
//!   validators).
//! - [`verify`]: HMAC-SHA256 signature and timestamp verification, in
//!   constant time, with several secrets for rotation and an injectable
//!   clock; [`Verifier::verify_delivery`](verify::Verifier::verify_delivery)
//!   checks a whole delivery for any framework. No framework, no runtime.
//! - [`model`]: the typed [`Event`](model::Event) enum over every event type,
//!   parsed in one pass from the verified bytes, and built not to break when
//!   the server adds fields, enum values or event types.
//! - [`verification`]: a tower layer that answers everything that is not a
//!   signed, well-formed delivery before your code runs.
//! - [`delivery`]: a tower layer that runs each verified delivery at most
//!   once at a time and, while its store remembers it, never again after it
//!   was handled, recorded in a [`store`] (memory, Redis, PostgreSQL in the
//!   handlers' own transaction, or a durable PostgreSQL inbox that answers
//!   `202` at once and runs the handlers from workers) or any
//!   [`DeliveryBackend`](delivery::DeliveryBackend). What each store keeps
//!   through a crash, a restart or a pause is in the README's guarantee
//!   table.
//! - [`dispatch`]: [`Webhooks`], async handlers per event type, mounted as
//!   a service behind the layers or called directly.
//!
//! [`CariosanWebhookLayer`] stacks the two layers with the defaults;
//! [`Receiver`] gives a framework that is not tower-based the same contract,
//! from a request's method, path, headers and body to an [`Answer`].
//!
//! # Example
//!
//! ```no_run
//! use axum::{routing::get, Router};
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
//!     tracing_subscriber::fmt::init(); // every delivery's outcome is logged at `info`
//!
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
//!     let layer = CariosanWebhookLayer::new(std::env::var("CARIOSAN_WEBHOOK_SECRET")?);
//!     // The layer guards the webhook route only: other routes answer as
//!     // usual, and a GET on the webhook path gets the layer's own 405.
//!     // `route` (feature `axum`) refuses, at start-up, handlers that take
//!     // a resource the layer's backend does not provide.
//!     let app = Router::new()
//!         .route("/webhooks/cariosan", layer.route(webhooks))
//!         .route("/healthz", get(|| async { "ok" }));
//!
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! Handlers reach application state with [`Webhooks::with_state`] and a
//! [`State`](dispatch::State) argument, or by capturing a clone of it (an
//! `Arc`, or a database pool): see [`dispatch`] and the `app_state`
//! example. If you prefer one axum handler with a `match`, use the
//! `VerifiedEvent` extractor (feature `axum`).
//!
//! # What the sender sees
//!
//! Cariosan reads only the status, and retries anything but a 2xx for about
//! two days. Every answer's body is its code.
//!
//! | status | code | from | when |
//! |---|---|---|---|
//! | 200 | `handled` | [`Outcome`] | every matching handler returned `Ok(())` |
//! | 200 | `ignored` | [`Outcome`] | no handler matched |
//! | 200 | `given_up` | [`Outcome`] | a handler returned `HandlerError::give_up` |
//! | 200 | `duplicate` | [`delivery`] | the delivery was handled before: nothing ran |
//! | 202 | `queued` | the PostgreSQL inbox (`store::postgres::Inbox`) | stored and committed, to be handled by the inbox's workers |
//! | 400 | `delivery_header_missing`, `delivery_header_invalid`, `event_header_missing`, `event_header_invalid` | [`verification`] | a protocol header is absent, repeated or malformed |
//! | 400 | `envelope_invalid`, `envelope_mismatch` | [`verification`] | the signed body is not an envelope, or its `id`/`type` disagree with the headers |
//! | 400 | `body_read_failed` | [`verification`] | the client broke off the body |
//! | 401 | `signature_missing`, `signature_malformed`, `timestamp_too_old`, `timestamp_too_new`, `signature_mismatch` | [`verification`] | the signature did not verify |
//! | 404 | `unknown_tenant` | [`verification`] | with several workspaces, the resolver knows no tenant for the request |
//! | 405 | `method_not_allowed` | [`verification`] | not a `POST` (with `Allow: POST`) |
//! | 408 | `body_timeout` | [`verification`] | the body did not arrive within the read timeout |
//! | 413 | `body_too_large` | [`verification`] | the body is over the limit (1 MiB by default) |
//! | 415 | `content_encoding_unsupported` | [`verification`] | the body has a `Content-Encoding` |
//! | 500 | `handler_failed`, `handler_panicked` | [`Outcome`] | a handler failed or panicked |
//! | 500 | `event_malformed` | [`Outcome`] | the data does not fit the model and no `on_malformed` handler took it |
//! | 500 | `resource_missing` | [`Outcome`] | a handler takes a resource (a `Tx`) that nothing in front of it provides: no handler ran (mount with [`CariosanWebhookLayer::route`] to have this refused at start-up) |
//! | 500 | `not_verified` | [`delivery`], [`dispatch`] | reached without a verification layer (logged as an error) |
//! | 503 | `retry_later` | [`Outcome`] | a handler returned `HandlerError::retry_later` (its `Retry-After`) |
//! | 503 | `delivery_in_progress` | [`delivery`] | another copy of the delivery is running now |
//! | 503 | `handler_still_running` | [`delivery`] | the handlers passed the budget (9 s); they go on |
//! | 503 | `run_cancelled` | [`delivery`] | the run passed `max_run_time`, or lost its lease: dropped, the delivery freed |
//! | 503 | `overloaded` | [`delivery`] | as many runs as allowed (256) are under way |
//! | 503 | `shutting_down` | [`delivery`] | the receiver is draining |
//! | 503 | `store_unavailable` | [`delivery`], [`verification`] | the backend (Redis, a pool) or the tenant resolver failed or did not answer in time |
//!
//! Every `503` carries `Retry-After`. The rejections are typed per
//! audience: [`verification::Rejection`], [`delivery::Rejection`], the
//! dispatcher's [`Outcome`], and the extractors' `ExtractRejection`.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `layer` | yes | the two layers, [`CariosanWebhookLayer`], [`Webhooks`], the in-memory [`store`] (tower, http, tokio, tokio-util) |
//! | `axum` | no | [`CariosanWebhookLayer::route`], which mounts [`Webhooks`] behind the layer and checks their resources at start-up; the `VerifiedEvent` and [`VerifiedDelivery`] extractors and `IntoResponse` for the rejections (axum without its default features) |
//! | `redis` | no | `store::RedisStore`, an idempotency store shared by several replicas |
//! | `postgres` | no | `store::postgres`: deliveries recorded in the handlers' own PostgreSQL transaction, for exactly-once database effects, inline (`PostgresBackend`) or from a durable inbox with retries and dead letters (`Inbox`) (sqlx) |
//! | `postgres-rustls` | no | `postgres`, with TLS to the database through sqlx's rustls (ring, webpki roots): a managed PostgreSQL that requires SSL (`?sslmode=require` in the URL) needs it; without it the crate's sqlx speaks plain TCP only. Build sqlx with `tls-native-tls` yourself for the system's OpenSSL |
//! | `ring` | no | HMAC-SHA256 from `ring`'s assembly instead of `hmac` + `sha2`: 1.6 to 1.8× faster on CPUs without SHA extensions (needs a C compiler) |
//! | `metrics` | no | counters, gauges and histograms through the `metrics` facade: see [`metrics`] |
//! | `test-util` | no | `test_util`: signed test requests, a [`Delivery`] for unit tests, sample events of every type |
//!
//! With `default-features = false`, only [`protocol`], [`verify`] and
//! [`model`] remain: no HTTP stack and no async runtime. The
//! `cariosan-webhooks` command is the `cariosan-webhooks-cli` crate.
//!
//! # Stability
//!
//! The crate follows semantic versioning. [`Event`](model::Event), the
//! event types and the open string enums are `#[non_exhaustive]`, and the
//! sender may add event types at any time: a minor release may add a
//! variant, which moves that event type from `on_unknown` (and
//! `Event::Unknown`) to its own `on_*` method and `on_any`. Compare event
//! types with [`EventType::as_str`](model::EventType::as_str) (or the wire
//! string) where your code must not change with such a release.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod model;
pub mod protocol;
pub mod verify;

#[cfg(feature = "layer")]
pub mod delivery;
#[cfg(feature = "layer")]
pub mod dispatch;
#[cfg(feature = "axum")]
mod extract;
#[cfg(feature = "layer")]
mod future;
#[cfg(feature = "layer")]
mod layer;
#[cfg(feature = "layer")]
mod macros;
#[cfg(feature = "layer")]
pub mod metrics;
#[cfg(feature = "layer")]
mod receiver;
#[cfg(feature = "layer")]
mod response;
#[cfg(feature = "layer")]
pub mod store;
#[cfg(feature = "test-util")]
pub mod test_util;
#[cfg(feature = "layer")]
pub mod verification;

#[cfg(feature = "layer")]
pub use dispatch::{Delivery, HandlerError, HandlerResult, Outcome, Webhooks};
#[cfg(feature = "axum")]
pub use extract::{ExtractRejection, VerifiedEvent};
#[cfg(feature = "layer")]
pub use future::ResponseFuture;
#[cfg(feature = "layer")]
pub use layer::{CariosanWebhookLayer, CariosanWebhookService};
#[cfg(feature = "layer")]
pub use receiver::{Answer, Receiver};
#[cfg(feature = "layer")]
pub use response::{BytesBody, ResponseBody};
pub use verify::VerifiedDelivery;

/// The README's examples use every feature; `.ci/run` tests them.
#[cfg(all(doctest, feature = "axum", feature = "redis", feature = "postgres"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

/// `text`, cut to at most `max` bytes on a character boundary: what a log
/// line or a stored error keeps of a text of unbounded length.
#[cfg(feature = "layer")]
pub(crate) fn truncated(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
