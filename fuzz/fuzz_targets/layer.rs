//! The whole layer as a tower service, driven with `oneshot` over arbitrary
//! requests (method, headers, a body split at arbitrary points): no panic, a
//! response always comes back, and only requests whose signature really
//! matches reach the inner service.
#![no_main]

use std::convert::Infallible;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::Bytes;
use cariosan_webhooks::verify::FixedClock;
use cariosan_webhooks::{BytesBody, CariosanWebhookLayer, VerifiedDelivery, Webhooks};
use hmac::{Hmac, Mac};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;
use tower::{Layer, ServiceExt};

const SECRET: &str = "whsec_fuzz";
const NOW: i64 = 1_795_000_000;
const NAMES: [&str; 8] = [
    "x-cariosan-delivery",
    "x-cariosan-event",
    "x-cariosan-signature",
    "x-cariosan-attempt",
    "content-length",
    "content-encoding",
    "content-type",
    "x-other",
];

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    headers: Vec<(u8, Vec<u8>)>,
    /// Sign the body truly, taking the delivery id and type from it when it
    /// has them.
    sign: bool,
    body: Vec<u8>,
    splits: Vec<u16>,
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fn mac_hex(id: &[u8], t: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    for part in [id, b".", t, b".", body] {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

/// The inner service: asserts that what reaches it was truly signed, then
/// dispatches.
async fn inner(request: http::Request<BytesBody>) -> Result<http::Response<BytesBody>, Infallible> {
    let delivery = request
        .extensions()
        .get::<VerifiedDelivery>()
        .cloned()
        .expect("only verified requests reach the inner service");
    let header = request.headers()["x-cariosan-signature"].to_str().unwrap().to_ascii_lowercase();
    let (parts, body) = request.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    let t = delivery.signed_at().to_string();
    let expected = mac_hex(delivery.id().as_str().as_bytes(), t.as_bytes(), &body);
    assert!(header.contains(&expected), "an unsigned request reached the inner service");
    let webhooks = Webhooks::new()
        .on_any(|_| async { Ok(()) })
        .on_unknown(|_| async { Ok(()) })
        .on_malformed(|_| async { Ok(()) });
    webhooks.oneshot(http::Request::from_parts(parts, body)).await
}

fuzz_target!(|input: Input| {
    let method = match input.method % 4 {
        0 | 1 => http::Method::POST,
        2 => http::Method::GET,
        _ => http::Method::PUT,
    };
    let mut builder = http::Request::builder().method(method).uri("/");
    for (name, value) in input.headers.iter().take(16) {
        let Ok(value) = http::HeaderValue::from_bytes(value) else { continue };
        builder = builder.header(NAMES[usize::from(*name) % NAMES.len()], value);
    }
    if input.sign {
        #[derive(serde::Deserialize)]
        struct Frame<'a> {
            id: Option<&'a str>,
            #[serde(rename = "type")]
            event_type: Option<&'a str>,
        }
        let frame = serde_json::from_slice::<Frame>(&input.body).ok();
        let id = frame.as_ref().and_then(|f| f.id).unwrap_or("evt_fuzz").to_owned();
        let event_type = frame.as_ref().and_then(|f| f.event_type).unwrap_or("message.created").to_owned();
        let t = NOW.to_string();
        let signature = format!("t={t},v1={}", mac_hex(id.as_bytes(), t.as_bytes(), &input.body));
        for (name, value) in [("x-cariosan-delivery", id), ("x-cariosan-event", event_type), ("x-cariosan-signature", signature)] {
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                builder = builder.header(name, value);
            }
        }
    }
    let mut chunks = Vec::new();
    let mut rest = &input.body[..];
    for split in input.splits.iter().take(32) {
        let at = usize::from(*split).min(rest.len());
        let (chunk, tail) = rest.split_at(at);
        chunks.push(Ok::<_, Infallible>(Frame::data(Bytes::copy_from_slice(chunk))));
        rest = tail;
    }
    chunks.push(Ok(Frame::data(Bytes::copy_from_slice(rest))));
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let Ok(request) = builder.body(body) else { return };

    let layer = CariosanWebhookLayer::new(SECRET).clock(FixedClock(NOW)).body_limit(64 * 1024);
    let service = layer.layer(tower::service_fn(inner));
    let response = runtime().block_on(service.oneshot(request)).expect("the layer never fails");
    let status = response.status().as_u16();
    assert!(
        matches!(status, 200 | 400 | 401 | 405 | 408 | 413 | 415),
        "undefined status {status}"
    );
});
