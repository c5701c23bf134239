//! Shared by the benchmarks: the limit they compare against, the sample
//! body and signed requests.
#![allow(dead_code)]

use std::convert::Infallible;

use bytes::Bytes;
use cariosan_webhooks::protocol::{
    ATTEMPT_HEADER, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER,
};
use cariosan_webhooks::verify::{sign, FixedClock, Secret};
use cariosan_webhooks::{BytesBody, CariosanWebhookLayer, CariosanWebhookService, Webhooks};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use sha2::Sha256;
use tower::Layer;

pub mod interleave;
mod json;
pub mod load;

pub const SECRET: &str = "whsec_2CfBq8m1ZbLr0v5yHkQ7tE9uXw3aJs6N";
pub const T: i64 = 1_795_000_000;
/// The envelope id of the reply fixture, replaced to make new deliveries.
pub const REPLY_ID: &str = "evt_01JDB7R0AAAAAAAAAAAAAAAAAA";

/// The limit: HMAC-SHA256 with the key schedule prepared once, over the
/// signed content in parts, as any verifier must compute it. Written here
/// on `hmac` and `sha2` directly, independently of the crate.
pub fn raw_hmac(key: &Hmac<Sha256>, id: &[u8], t: &[u8], body: &[u8]) -> [u8; 32] {
    let mut mac = key.clone();
    for part in [id, b".", t, b".", body] {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

pub fn key() -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap()
}

/// The `message.created` reply fixture, compact and in its own key order
/// (1,142 bytes): what a sender emits.
pub fn compact_reply() -> Vec<u8> {
    let reply = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../src/test_util/fixtures/events/message.created.reply.json"
    ))
    .unwrap();
    let compact = json::compact(&reply);
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&compact).unwrap(),
        serde_json::from_slice::<serde_json::Value>(&reply).unwrap()
    );
    compact
}

/// A new signed delivery of the compact reply under delivery id `id`.
pub fn signed_request(secret: &Secret, template: &str, id: &str) -> http::Request<BytesBody> {
    let body = template.replace(REPLY_ID, id);
    let signature = sign(std::slice::from_ref(secret), id, T, body.as_bytes());
    http::Request::post("/webhooks/cariosan")
        .header(DELIVERY_HEADER, id)
        .header(EVENT_HEADER, "message.created")
        .header(ATTEMPT_HEADER, "1")
        .header(SIGNATURE_HEADER, signature)
        .header("content-length", body.len())
        .body(BytesBody::new(Bytes::from(body)))
        .unwrap()
}

/// The receiver under measurement: the layer (clock fixed at [`T`]) over
/// one `message.created` handler that touches the payload.
pub fn receiver() -> CariosanWebhookService<Webhooks> {
    let webhooks = Webhooks::new().on_message_created(|event| async move {
        std::hint::black_box(&event.message.mentions);
        Ok(())
    });
    CariosanWebhookLayer::new(SECRET)
        .clock(FixedClock(T))
        .layer(webhooks)
}

/// The baseline: a bare service that reads the body and answers 200.
pub fn bare() -> impl tower::Service<
    http::Request<BytesBody>,
    Response = http::Response<BytesBody>,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<http::Response<BytesBody>, Infallible>> + Send,
> + Copy {
    tower::service_fn(|request: http::Request<BytesBody>| async move {
        std::hint::black_box(request.into_body().collect().await.unwrap().to_bytes());
        Ok::<_, Infallible>(http::Response::new(BytesBody::from("ok")))
    })
}
