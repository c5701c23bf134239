//! The layer on a plain tower service, driven with `oneshot`: only signed
//! requests reach the inner service, and they arrive with the raw body and
//! the parsed delivery.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cariosan_webhooks::verify::FixedClock;
use cariosan_webhooks::{BytesBody, CariosanWebhookLayer, VerifiedDelivery};
use common::*;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody};
use tower::{Layer, ServiceExt};

const ID: &str = "evt_01JDB844PINGPINGPINGPIN01";
const T: i64 = 1_795_000_000;

fn inner(
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    http::Request<BytesBody>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |request: http::Request<BytesBody>| {
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            let delivery = request
                .extensions()
                .get::<VerifiedDelivery>()
                .cloned()
                .unwrap();
            let raw = request.into_body().collect().await.unwrap().to_bytes();
            let text = format!(
                "{} {} {} {}",
                delivery.id(),
                delivery.event_type(),
                delivery.signed_at(),
                raw.len()
            );
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from(text))))
        }
    })
}

fn request<B>(signature: &str, body: B) -> http::Request<B> {
    http::Request::post("/")
        .header("x-cariosan-delivery", ID)
        .header("x-cariosan-event", "webhook.ping")
        .header("x-cariosan-signature", signature)
        .body(body)
        .unwrap()
}

async fn text<B: http_body::Body>(response: http::Response<B>) -> (u16, String)
where
    B::Error: std::fmt::Debug,
{
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

#[tokio::test]
async fn only_signed_requests_reach_the_inner_service() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = CariosanWebhookLayer::new(SECRET).clock(FixedClock(T));
    let service = layer.layer(inner(calls.clone()));
    let body = fixture("events/webhook.ping.json");
    let good = independent_signature(SECRET, ID, T, &body);

    let response = service
        .clone()
        .oneshot(request(&good, Full::new(Bytes::from(body.clone()))))
        .await
        .unwrap();
    assert_eq!(
        text(response).await,
        (200, format!("{ID} webhook.ping {T} {}", body.len()))
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    let forged = independent_signature("whsec_x", ID, T, &body);
    let response = service
        .clone()
        .oneshot(request(&forged, Full::new(Bytes::from(body.clone()))))
        .await
        .unwrap();
    assert_eq!(text(response).await, (401, "signature_mismatch".to_owned()));
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a forgery never reaches the inner service"
    );
}

#[tokio::test]
async fn a_body_split_into_many_chunks_verifies_like_a_whole_one() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CariosanWebhookLayer::new(SECRET)
        .clock(FixedClock(T))
        .layer(inner(calls.clone()));
    let body = fixture("events/webhook.ping.json");
    let good = independent_signature(SECRET, ID, T, &body);
    let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = body
        .chunks(7)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let streamed = StreamBody::new(futures_util::stream::iter(chunks));
    let (status, _) = text(service.oneshot(request(&good, streamed)).await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_body_limit_applies_to_streamed_bodies_and_declared_lengths() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CariosanWebhookLayer::new(SECRET)
        .body_limit(100)
        .layer(inner(calls.clone()));
    let body = fixture("events/webhook.ping.json");
    let good = independent_signature(SECRET, ID, now(), &body);
    let chunks: Vec<Result<http_body::Frame<Bytes>, Infallible>> = body
        .chunks(10)
        .map(|c| Ok(http_body::Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let streamed = StreamBody::new(futures_util::stream::iter(chunks));
    let response = service
        .clone()
        .oneshot(request(&good, streamed))
        .await
        .unwrap();
    assert_eq!(text(response).await, (413, "body_too_large".to_owned()));
    let mut declared = request(&good, Full::new(Bytes::from(body)));
    declared
        .headers_mut()
        .insert("content-length", "5000".parse().unwrap());
    let response = service.oneshot(declared).await.unwrap();
    assert_eq!(text(response).await, (413, "body_too_large".to_owned()));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_body_that_never_finishes_times_out() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = CariosanWebhookLayer::new(SECRET)
        .body_timeout(Duration::from_millis(200))
        .layer(inner(calls.clone()));
    let first: Result<http_body::Frame<Bytes>, Infallible> =
        Ok(http_body::Frame::data(Bytes::from_static(b"{")));
    let stalled =
        StreamBody::new(futures_util::stream::iter([first]).chain(futures_util::stream::pending()));
    let started = std::time::Instant::now();
    let response = service
        .oneshot(request("t=1,v1=00", stalled))
        .await
        .unwrap();
    assert_eq!(text(response).await, (408, "body_timeout".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// An inner service whose first call panics, at once or after waiting
/// `wait` (so that the run has left the request's task), and whose later
/// calls succeed.
fn panics_once(
    wait: Option<Duration>,
    calls: Arc<AtomicUsize>,
) -> impl tower::Service<
    http::Request<BytesBody>,
    Response = http::Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_request: http::Request<BytesBody>| {
        let calls = calls.clone();
        async move {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
                panic!("the inner service panicked");
            }
            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from("done"))))
        }
    })
}

#[tokio::test]
async fn a_panic_answers_500_and_frees_the_delivery_whether_or_not_the_run_waited() {
    for wait in [None, Some(Duration::from_millis(30))] {
        let calls = Arc::new(AtomicUsize::new(0));
        let layer = CariosanWebhookLayer::new(SECRET).clock(FixedClock(T));
        let shutdown = layer.shutdown_handle();
        let service = layer.layer(panics_once(wait, calls.clone()));
        let body = fixture("events/webhook.ping.json");
        let signature = independent_signature(SECRET, ID, T, &body);
        let send = || {
            service
                .clone()
                .oneshot(request(&signature, Full::new(Bytes::from(body.clone()))))
        };

        let response = send().await.unwrap();
        assert_eq!(
            text(response).await,
            (500, "handler_panicked".to_owned()),
            "{wait:?}"
        );
        assert_eq!(shutdown.running(), 0, "{wait:?}: nothing left running");
        let response = send().await.unwrap();
        assert_eq!(text(response).await, (200, "done".to_owned()), "{wait:?}");
        let response = send().await.unwrap();
        assert_eq!(
            text(response).await,
            (200, "duplicate".to_owned()),
            "{wait:?}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 2, "{wait:?}");
    }
}
