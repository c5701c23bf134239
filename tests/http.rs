//! The receiver through real HTTP on 127.0.0.1, tried as a new user would,
//! with a signer written independently of the crate.

mod common;

use std::sync::{Arc, Mutex};

use axum::routing::{post, post_service};
use axum::Router;
use cariosan_webhooks::model::Event;
use cariosan_webhooks::verify::FixedClock;
use cariosan_webhooks::{CariosanWebhookLayer, Delivery, HandlerError, VerifiedEvent, Webhooks};
use common::*;
use serde_json::Value;

type Log = Arc<Mutex<Vec<String>>>;

const ID: &str = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
const TYPE: &str = "message.created";

fn body() -> Vec<u8> {
    fixture("events/message.created.json")
}

/// Handlers that record what they saw; a message whose content is `fail`
/// or `panic` makes its handler fail or panic.
fn webhooks(log: &Log) -> Webhooks {
    let any = log.clone();
    let created = log.clone();
    let unknown = log.clone();
    Webhooks::new()
        .on_any(move |event: Delivery<Event>| {
            let log = any.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push(format!("any {} {}", event.event_type(), event.id));
                Ok(())
            }
        })
        .on_message_created(move |event| {
            let log = created.clone();
            async move {
                match event.message.content.as_str() {
                    "fail" => return Err(HandlerError::msg("the database is down")),
                    "panic" => panic!("handler bug"),
                    _ => {}
                }
                log.lock()
                    .unwrap()
                    .push(format!("created {}", event.message.id));
                Ok(())
            }
        })
        .on_unknown(move |event| {
            let log = unknown.clone();
            async move {
                log.lock().unwrap().push(format!(
                    "unknown {} {}",
                    event.event_type(),
                    event.data_json()
                ));
                Ok(())
            }
        })
}

fn app(log: &Log, layer: CariosanWebhookLayer) -> Router {
    Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks(log)).layer(layer),
    )
}

async fn receiver() -> (std::net::SocketAddr, Log) {
    let log = Log::default();
    (
        serve(app(&log, CariosanWebhookLayer::new(SECRET))).await,
        log,
    )
}

fn entries(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[tokio::test]
async fn every_fixture_as_signed_by_the_independent_sender_is_handled_once() {
    let log = Log::default();
    let layer = CariosanWebhookLayer::new(SECRET).clock(FixedClock(1_795_000_000));
    let addr = serve(app(&log, layer)).await;
    let index: Value = serde_json::from_slice(&fixture("events/index.json")).unwrap();
    let deliveries = index["deliveries"].as_array().unwrap();
    for delivery in deliveries {
        let field = |k: &str| delivery[k].as_str().unwrap().to_owned();
        let body = fixture(&format!("events/{}", field("file")));
        let headers = delivery_headers(&field("delivery"), &field("type"), &field("signature"));
        let reply = send(addr, &headers, &body).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "handled"),
            "{}",
            field("name")
        );
    }
    let seen = entries(&log);
    for delivery in deliveries {
        let line = format!(
            "any {} {}",
            delivery["type"].as_str().unwrap(),
            delivery["delivery"].as_str().unwrap()
        );
        assert_eq!(
            seen.iter().filter(|l| **l == line).count(),
            1,
            "{line} in {seen:?}"
        );
    }
    let created = seen.iter().filter(|l| l.starts_with("created ")).count();
    assert_eq!(created, 5, "five message.created fixtures: {seen:?}");
}

#[tokio::test]
async fn a_delivery_signed_now_is_handled_and_the_handler_sees_its_fields() {
    let (addr, log) = receiver().await;
    let reply = send_signed(addr, ID, TYPE, &body()).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    assert_eq!(
        entries(&log),
        [
            format!("any {TYPE} {ID}"),
            "created msg_01JDB7Q3M0".to_owned()
        ]
    );
}

#[tokio::test]
async fn forged_and_stale_deliveries_are_401_and_reach_no_handler() {
    let (addr, log) = receiver().await;
    let body = body();
    let t = now();
    let good = independent_signature(SECRET, ID, t, &body);
    let mut tampered = body.clone();
    let at = tampered.iter().position(|&b| b == b'H').unwrap();
    tampered[at] = b'J';
    let cases: Vec<(&str, String, Vec<u8>, &str)> = vec![
        (
            "tampered body",
            good.clone(),
            tampered,
            "signature_mismatch",
        ),
        (
            "wrong secret",
            independent_signature("whsec_other", ID, t, &body),
            body.clone(),
            "signature_mismatch",
        ),
        (
            "301 s old",
            independent_signature(SECRET, ID, t - 301, &body),
            body.clone(),
            "timestamp_too_old",
        ),
        (
            "301 s ahead",
            independent_signature(SECRET, ID, t + 301, &body),
            body.clone(),
            "timestamp_too_new",
        ),
        (
            "truncated",
            good[..good.len() - 1].to_owned(),
            body.clone(),
            "signature_malformed",
        ),
        (
            "truncated to 32 bytes",
            good[..good.len() - 32].to_owned(),
            body.clone(),
            "signature_malformed",
        ),
        ("empty", String::new(), body.clone(), "signature_missing"),
        (
            "other delivery's MAC",
            independent_signature(SECRET, "evt_other", t, &body),
            body.clone(),
            "signature_mismatch",
        ),
    ];
    for (name, signature, body, code) in cases {
        let reply = send(addr, &delivery_headers(ID, TYPE, &signature), &body).await;
        assert_eq!((reply.status, reply.body.as_str()), (401, code), "{name}");
    }
    let mut headers = delivery_headers(ID, TYPE, "");
    headers.retain(|(k, _)| k != "X-Cariosan-Signature");
    let reply = send(addr, &headers, &body).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (401, "signature_missing")
    );
    assert!(entries(&log).is_empty(), "{:?}", entries(&log));
}

#[tokio::test]
async fn signed_bodies_that_are_not_valid_envelopes_are_400() {
    let (addr, log) = receiver().await;
    let body = body();
    let text = String::from_utf8(body.clone()).unwrap();
    let mut non_utf8 = body.clone();
    let at = non_utf8.iter().position(|&b| b == b'H').unwrap();
    non_utf8[at] = 0xff;
    let cases: Vec<(&str, &str, &str, Vec<u8>, &str)> = vec![
        (
            "invalid JSON",
            ID,
            TYPE,
            b"{\"id\":".to_vec(),
            "envelope_invalid",
        ),
        ("non-UTF-8 body", ID, TYPE, non_utf8, "envelope_invalid"),
        (
            "not an object",
            ID,
            TYPE,
            b"[1,2]".to_vec(),
            "envelope_invalid",
        ),
        (
            "id disagrees",
            "evt_someone_else",
            TYPE,
            body.clone(),
            "envelope_mismatch",
        ),
        (
            "type disagrees",
            ID,
            "message.updated",
            body.clone(),
            "envelope_mismatch",
        ),
        (
            "trailing bytes",
            ID,
            TYPE,
            format!("{text} x").into_bytes(),
            "envelope_invalid",
        ),
    ];
    for (name, id, event_type, body, code) in cases {
        let reply = send_signed(addr, id, event_type, &body).await;
        assert_eq!((reply.status, reply.body.as_str()), (400, code), "{name}");
    }
    assert!(entries(&log).is_empty());
}

#[tokio::test]
async fn malformed_headers_are_400() {
    let (addr, _log) = receiver().await;
    let body = body();
    let signature = independent_signature(SECRET, ID, now(), &body);
    let mut missing_id = delivery_headers(ID, TYPE, &signature);
    missing_id.retain(|(k, _)| k != "X-Cariosan-Delivery");
    let mut missing_type = delivery_headers(ID, TYPE, &signature);
    missing_type.retain(|(k, _)| k != "X-Cariosan-Event");
    let mut two_ids = delivery_headers(ID, TYPE, &signature);
    two_ids.push(("X-Cariosan-Delivery".into(), ID.into()));
    let cases = vec![
        ("missing delivery id", missing_id, "delivery_header_missing"),
        (
            "bad delivery id",
            delivery_headers("evt 1", TYPE, &signature),
            "delivery_header_invalid",
        ),
        ("two delivery ids", two_ids, "delivery_header_invalid"),
        ("missing event type", missing_type, "event_header_missing"),
        (
            "event type with a space",
            delivery_headers(ID, "message created", &signature),
            "event_header_invalid",
        ),
    ];
    for (name, headers, code) in cases {
        let reply = send(addr, &headers, &body).await;
        assert_eq!((reply.status, reply.body.as_str()), (400, code), "{name}");
    }
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_with_or_without_content_length() {
    let (addr, log) = receiver().await;
    let big = vec![b' '; 1024 * 1024 + 1];
    let signature = independent_signature(SECRET, ID, now(), &big);
    let reply = send(addr, &delivery_headers(ID, TYPE, &signature), &big).await;
    assert_eq!((reply.status, reply.body.as_str()), (413, "body_too_large"));

    let mut chunked = String::from(
        "POST /webhooks/cariosan HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n",
    );
    for (k, v) in delivery_headers(ID, TYPE, &signature) {
        chunked.push_str(&format!("{k}: {v}\r\n"));
    }
    chunked.push_str("\r\n");
    let mut request = chunked.into_bytes();
    for piece in big.chunks(64 * 1024) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let reply = raw(addr, &request).await;
    assert_eq!((reply.status, reply.body.as_str()), (413, "body_too_large"));

    // Exactly at the limit is read and verified (and is not an envelope).
    let limit = vec![b' '; 1024 * 1024];
    let reply = send_signed(addr, ID, TYPE, &limit).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, "envelope_invalid")
    );
    assert!(entries(&log).is_empty());
}

#[tokio::test]
async fn unknown_event_types_are_acknowledged_and_reach_on_unknown() {
    let (addr, log) = receiver().await;
    let body = br#"{"id":"evt_new1","type":"poll.closed","created_at":"2026-11-22T03:15:02Z","workspace_id":"ws_1","data":{"poll":"p1"}}"#;
    let reply = send_signed(addr, "evt_new1", "poll.closed", body).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    assert_eq!(entries(&log), [r#"unknown poll.closed {"poll":"p1"}"#]);

    // With no on_unknown handler, still acknowledged.
    let plain = Router::new().route(
        "/webhooks/cariosan",
        post_service(Webhooks::new()).layer(CariosanWebhookLayer::new(SECRET)),
    );
    let addr = serve(plain).await;
    let reply = send_signed(addr, "evt_new1", "poll.closed", body).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "ignored"));
}

fn with_content(content: &str) -> Vec<u8> {
    String::from_utf8(body())
        .unwrap()
        .replace("Halo, pesanan saya sudah dikirim?", content)
        .into_bytes()
}

#[tokio::test]
async fn handler_errors_and_panics_are_500_and_the_server_keeps_serving() {
    let (addr, log) = receiver().await;
    let reply = send_signed(addr, ID, TYPE, &with_content("fail")).await;
    assert_eq!((reply.status, reply.body.as_str()), (500, "handler_failed"));
    let reply = send_signed(addr, ID, TYPE, &with_content("panic")).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "handler_panicked")
    );
    let reply = send_signed(addr, ID, TYPE, &body()).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    // on_any ran before the failing handler each time: handlers run in
    // registration order and the run stops at the first failure.
    let created = entries(&log)
        .iter()
        .filter(|l| l.starts_with("created"))
        .count();
    assert_eq!(created, 1);
    assert_eq!(entries(&log).len(), 4);
}

#[tokio::test]
async fn several_handlers_for_one_type_all_run_in_registration_order() {
    let log = Log::default();
    let (first, second) = (log.clone(), log.clone());
    let webhooks = Webhooks::new()
        .on_message_created(move |_| {
            let log = first.clone();
            async move {
                log.lock().unwrap().push("first".into());
                Ok(())
            }
        })
        .on_message_created(move |event| {
            let log = second.clone();
            async move {
                log.lock()
                    .unwrap()
                    .push(format!("second attempt {:?}", event.attempt));
                Ok(())
            }
        });
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks).layer(CariosanWebhookLayer::new(SECRET)),
    );
    let addr = serve(app).await;
    assert_eq!(send_signed(addr, ID, TYPE, &body()).await.status, 200);
    assert_eq!(entries(&log), ["first", "second attempt Some(1)"]);
}

#[tokio::test]
async fn malformed_data_is_500_unless_on_malformed_takes_it() {
    let body = String::from_utf8(body())
        .unwrap()
        .replace(r#""content":"Halo, pesanan saya sudah dikirim?","#, "")
        .into_bytes();
    let (addr, log) = receiver().await;
    let reply = send_signed(addr, ID, TYPE, &body).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (500, "event_malformed")
    );
    assert!(entries(&log).is_empty());

    let taken = Log::default();
    let record = taken.clone();
    let webhooks = Webhooks::new().on_malformed(move |malformed| {
        let log = record.clone();
        async move {
            log.lock()
                .unwrap()
                .push(format!("{} {}", malformed.event_type(), malformed.id()));
            Ok(())
        }
    });
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks).layer(CariosanWebhookLayer::new(SECRET)),
    );
    let addr = serve(app).await;
    let reply = send_signed(addr, ID, TYPE, &body).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    assert_eq!(entries(&taken), [format!("{TYPE} {ID}")]);
}

#[tokio::test]
async fn a_route_without_the_layer_refuses_even_a_validly_signed_delivery() {
    let log = Log::default();
    let forgot_layer = Router::new()
        .route("/webhooks/cariosan", post_service(webhooks(&log)))
        .route(
            "/extract",
            post(|VerifiedEvent(_): VerifiedEvent| async { "reached" }),
        );
    let addr = serve(forgot_layer).await;
    let reply = send_signed(addr, ID, TYPE, &body()).await;
    assert_eq!((reply.status, reply.body.as_str()), (500, "not_verified"));
    let signature = independent_signature(SECRET, ID, now(), &body());
    let headers: Vec<(String, String)> = delivery_headers(ID, TYPE, &signature);
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let request = String::from_utf8(request(&headers, &body()))
        .unwrap()
        .replacen("/webhooks/cariosan", "/extract", 1);
    let reply = raw(addr, request.as_bytes()).await;
    assert_eq!((reply.status, reply.body.as_str()), (500, "not_verified"));
    assert!(entries(&log).is_empty());
}

#[tokio::test]
async fn the_extractor_yields_the_verified_event() {
    let app = Router::new().route(
        "/webhooks/cariosan",
        post(|VerifiedEvent(envelope): VerifiedEvent| async move {
            match envelope.event {
                Event::MessageCreated(created) => created.message.content.clone(),
                _ => "other".to_owned(),
            }
        })
        .layer(CariosanWebhookLayer::new(SECRET)),
    );
    let addr = serve(app).await;
    let reply = send_signed(addr, ID, TYPE, &body()).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "Halo, pesanan saya sudah dikirim?")
    );
    let forged = send(addr, &delivery_headers(ID, TYPE, "t=1,v1=00"), &body()).await;
    assert_eq!(forged.status, 401);
}

#[tokio::test]
async fn wrong_method_is_405_where_the_router_does_not_answer_it() {
    let app = Router::new().route_service(
        "/webhooks/cariosan",
        tower::Layer::layer(&CariosanWebhookLayer::new(SECRET), Webhooks::new()),
    );
    let addr = serve(app).await;
    let reply = raw(
        addr,
        b"GET /webhooks/cariosan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (405, "method_not_allowed")
    );
    assert!(
        reply.head.to_ascii_lowercase().contains("allow: post"),
        "{}",
        reply.head
    );
}

#[tokio::test]
async fn rotation_accepts_old_and_new_secrets_and_both_signatures() {
    let log = Log::default();
    let layer = CariosanWebhookLayer::new("whsec_new").secret(SECRET);
    let addr = serve(app(&log, layer)).await;
    let body = body();
    let t = now();
    let by_old = independent_signature(SECRET, ID, t, &body);
    let by_new = independent_signature("whsec_new", ID, t, &body);
    let both = format!("{by_new},v1={}", by_old.rsplit("v1=").next().unwrap());
    for signature in [by_old, by_new, both] {
        let reply = send(addr, &delivery_headers(ID, TYPE, &signature), &body).await;
        assert_eq!(reply.status, 200, "{signature}");
    }
}

#[tokio::test]
async fn compressed_bodies_are_415() {
    let (addr, _log) = receiver().await;
    let body = body();
    let mut headers = delivery_headers(ID, TYPE, &independent_signature(SECRET, ID, now(), &body));
    headers.push(("Content-Encoding".into(), "gzip".into()));
    let reply = send(addr, &headers, &body).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (415, "content_encoding_unsupported")
    );
}

#[test]
#[should_panic(expected = "secret is empty")]
fn an_empty_secret_is_refused_at_start_up() {
    let _ = CariosanWebhookLayer::new("");
}

#[test]
fn try_new_reports_an_empty_secret() {
    assert!(CariosanWebhookLayer::try_new("").is_err());
    assert!(CariosanWebhookLayer::try_new(SECRET).is_ok());
}
