//! The catalogue of hostile requests, each through real HTTP on 127.0.0.1
//! with its documented status and code (README, "Hostile requests"). The
//! server must answer every one, quickly, and keep serving; no handler runs
//! for any of them unless the row says so.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::CariosanWebhookLayer;
use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ID: &str = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
const TYPE: &str = "message.created";

struct Server {
    addr: SocketAddr,
    runs: Arc<AtomicUsize>,
}

async fn server() -> Server {
    let (webhooks, runs) = counting_webhooks();
    // Mounted the documented way: the layer guards the webhook route, and
    // wraps its method fallback too, so a GET gets the layer's own 405.
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks)
            .layer(CariosanWebhookLayer::new(SECRET).body_timeout(Duration::from_secs(1))),
    );
    Server {
        addr: serve(app).await,
        runs,
    }
}

fn body() -> Vec<u8> {
    fixture("events/message.created.json")
}

fn signed_headers(id: &str, event_type: &str, body: &[u8]) -> Vec<(String, String)> {
    delivery_headers(
        id,
        event_type,
        &independent_signature(SECRET, id, now(), body),
    )
}

fn head(headers: &[(String, String)], extra: &str) -> Vec<u8> {
    let mut out = String::from("POST /webhooks/cariosan HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(extra);
    out.push_str("\r\n");
    out.into_bytes()
}

fn check(name: &str, reply: &Reply, status: u16, code: &str) {
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (status, code),
        "{name}"
    );
}

/// The server still handles a good (new) delivery after whatever came
/// before.
async fn still_serving(server: &Server) {
    let before = server.runs.load(Ordering::SeqCst);
    let reply = send_signed(
        server.addr,
        "evt_afterwards",
        TYPE,
        &with_id(&body(), "evt_afterwards"),
    )
    .await;
    check("a good delivery afterwards", &reply, 200, "handled");
    assert_eq!(server.runs.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn duplicated_headers() {
    let server = server().await;
    let mut two_signatures = signed_headers(ID, TYPE, &body());
    two_signatures.push(two_signatures[5].clone());
    check(
        "two signature headers",
        &send(server.addr, &two_signatures, &body()).await,
        401,
        "signature_malformed",
    );
    let mut two_ids = signed_headers(ID, TYPE, &body());
    two_ids.push(("X-Cariosan-Delivery".into(), "evt_other".into()));
    check(
        "two delivery ids",
        &send(server.addr, &two_ids, &body()).await,
        400,
        "delivery_header_invalid",
    );
    let mut two_types = signed_headers(ID, TYPE, &body());
    two_types.push(("X-Cariosan-Event".into(), TYPE.into()));
    check(
        "two event types",
        &send(server.addr, &two_types, &body()).await,
        400,
        "event_header_invalid",
    );
    assert_eq!(server.runs.load(Ordering::SeqCst), 0);
    still_serving(&server).await;
}

#[tokio::test]
async fn non_ascii_and_over_long_headers() {
    let server = server().await;
    let body = body();
    let mut headers = signed_headers(ID, TYPE, &body);
    headers[2].1 = "évt_1".into();
    check(
        "non-ASCII delivery id",
        &send(server.addr, &headers, &body).await,
        400,
        "delivery_header_invalid",
    );
    let mut headers = signed_headers(ID, TYPE, &body);
    headers[5].1.push_str(",x=ü");
    check(
        "non-ASCII in the signature",
        &send(server.addr, &headers, &body).await,
        401,
        "signature_malformed",
    );
    let long = "a".repeat(64 * 1024);
    let mut headers = signed_headers(ID, TYPE, &body);
    headers[2].1 = long.clone();
    check(
        "64 KiB delivery id",
        &send(server.addr, &headers, &body).await,
        400,
        "delivery_header_invalid",
    );
    let mut headers = signed_headers(ID, TYPE, &body);
    headers[5].1.push_str(&format!(",x={long}"));
    check(
        "64 KiB signature header",
        &send(server.addr, &headers, &body).await,
        401,
        "signature_malformed",
    );
    let mut headers = signed_headers(ID, TYPE, &body);
    headers.push(("X-Padding".into(), long));
    check(
        "64 KiB unrelated header",
        &send(server.addr, &headers, &body).await,
        200,
        "handled",
    );
    assert_eq!(server.runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn thousands_of_signatures_are_refused_with_bounded_work() {
    let server = server().await;
    let body = body();
    let mut headers = signed_headers(ID, TYPE, &body);
    let one = headers[5].1.split_once(',').unwrap().1.to_owned();
    headers[5].1 = format!("t={}{}", now(), format!(",{one}").repeat(2000));
    let started = Instant::now();
    check(
        "2,000 v1 entries",
        &send(server.addr, &headers, &body).await,
        401,
        "signature_malformed",
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let mut headers = signed_headers(ID, TYPE, &body);
    headers[5].1.push_str(&",v1=00".repeat(20));
    check(
        "20 short v1 beside a good one",
        &send(server.addr, &headers, &body).await,
        200,
        "handled",
    );
}

#[tokio::test]
async fn lying_content_lengths() {
    let server = server().await;
    let body = body();
    let headers = signed_headers(ID, TYPE, &body);

    // Declares more than it sends, then waits: the read times out.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut request = head(
        &headers,
        &format!("Content-Length: {}\r\n", body.len() + 100),
    );
    request.extend_from_slice(&body);
    stream.write_all(&request).await.unwrap();
    let started = Instant::now();
    check(
        "Content-Length larger than the body",
        &read_reply(&mut stream).await,
        408,
        "body_timeout",
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // Declares less than it sends: the body is cut at the declared length
    // and no longer matches its signature.
    let mut request = head(&headers, "Content-Length: 10\r\n");
    request.extend_from_slice(&body);
    check(
        "Content-Length smaller than the body",
        &raw(server.addr, &request).await,
        401,
        "signature_mismatch",
    );

    // Declares more than the limit: refused before any byte is read.
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = head(&headers, "Content-Length: 2097152\r\n");
    stream.write_all(&request).await.unwrap();
    check(
        "Content-Length over the limit, no body sent",
        &read_reply(&mut stream).await,
        413,
        "body_too_large",
    );
    assert_eq!(server.runs.load(Ordering::SeqCst), 0);
    still_serving(&server).await;
}

#[tokio::test]
async fn a_slow_body_is_given_up_on_within_the_read_timeout() {
    let server = server().await;
    let body = body();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let headers = signed_headers(ID, TYPE, &body);
    stream
        .write_all(&head(
            &headers,
            &format!("Content-Length: {}\r\n", body.len()),
        ))
        .await
        .unwrap();
    let started = Instant::now();
    // Drip for three seconds at most (the timeout is one); the server may
    // close the connection meanwhile.
    for byte in body.iter().take(8) {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let reply = read_reply(&mut stream).await;
    check("a byte every 400 ms", &reply, 408, "body_timeout");
    assert!(started.elapsed() < Duration::from_secs(6));
    assert_eq!(server.runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_body_leaves_the_server_serving() {
    let server = server().await;
    let body = body();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let mut request = head(
            &signed_headers(ID, TYPE, &body),
            &format!("Content-Length: {}\r\n", body.len()),
        );
        request.extend_from_slice(&body[..body.len() / 2]);
        stream.write_all(&request).await.unwrap();
        drop(stream);
    }
    assert_eq!(server.runs.load(Ordering::SeqCst), 0);
    still_serving(&server).await;
}

fn signed_body_case(
    name: &str,
    id: &str,
    event_type: &str,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
) -> (String, String, String, Vec<u8>, u16, &'static str) {
    (
        name.to_owned(),
        id.to_owned(),
        event_type.to_owned(),
        body,
        status,
        code,
    )
}

#[tokio::test]
async fn hostile_signed_bodies() {
    let server = server().await;
    let text = String::from_utf8(body()).unwrap();
    let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let unknown = |data: &str| {
        format!(r#"{{"id":"evt_h1","type":"poll.closed","created_at":"2026-11-22T03:15:02Z","workspace_id":"ws_1","data":{data}}}"#)
            .into_bytes()
    };
    let channel = |member_count: &str| {
        format!(
            r#"{{"id":"evt_h2","type":"channel.updated","created_at":"2026-11-22T03:15:02Z","workspace_id":"ws_1","data":{{"channel":{{"id":"ch_1","type":"group","created_at":"2026-11-22T03:00:00Z","member_count":{member_count}}}}}}}"#
        )
        .into_bytes()
    };
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(text.as_bytes());
    let mut non_utf8 = text.clone().into_bytes();
    non_utf8[100] = 0xC3;
    let cases = vec![
        signed_body_case("empty body", ID, TYPE, Vec::new(), 400, "envelope_invalid"),
        signed_body_case("invalid UTF-8", ID, TYPE, non_utf8, 400, "envelope_invalid"),
        signed_body_case(
            "a BOM before the JSON",
            ID,
            TYPE,
            bom,
            400,
            "envelope_invalid",
        ),
        signed_body_case(
            "trailing bytes",
            ID,
            TYPE,
            format!("{text}{{}}").into_bytes(),
            400,
            "envelope_invalid",
        ),
        signed_body_case(
            "10,000-deep nesting as the body",
            ID,
            TYPE,
            deep(10_000).into_bytes(),
            400,
            "envelope_invalid",
        ),
        // Unknown data is kept raw, skipped without recursion: bounded by
        // the body limit, not the stack.
        signed_body_case(
            "500,000-deep nesting in unknown data",
            "evt_h1",
            "poll.closed",
            unknown(&deep(500_000)),
            200,
            "ignored",
        ),
        signed_body_case(
            "10,000-deep nesting in known data",
            ID,
            TYPE,
            text.replacen(
                r#""mentions":[]"#,
                &format!(r#""mentions":{}"#, deep(10_000)),
                1,
            )
            .into_bytes(),
            500,
            "event_malformed",
        ),
        signed_body_case(
            "duplicate envelope key",
            ID,
            TYPE,
            text.replacen(r#""id":"#, &format!(r#""id":"{ID}","id":"#), 1)
                .into_bytes(),
            400,
            "envelope_invalid",
        ),
        signed_body_case(
            "member_count over u64",
            "evt_h2",
            "channel.updated",
            channel("18446744073709551616"),
            500,
            "event_malformed",
        ),
        signed_body_case(
            "member_count 1e400",
            "evt_h2",
            "channel.updated",
            channel("1e400"),
            500,
            "event_malformed",
        ),
        signed_body_case(
            "member_count negative",
            "evt_h2",
            "channel.updated",
            channel("-1"),
            500,
            "event_malformed",
        ),
        signed_body_case(
            "duplicate key inside data",
            ID,
            TYPE,
            text.replacen(r#""content":"#, r#""content":"x","content":"#, 1)
                .into_bytes(),
            500,
            "event_malformed",
        ),
        signed_body_case(
            "moderately nested unknown data",
            "evt_h3",
            "poll.closed",
            with_id(&unknown(&deep(100)), "evt_h3"),
            200,
            "ignored",
        ),
    ];
    for (name, id, event_type, body, status, code) in cases {
        let reply = send_signed(server.addr, &id, &event_type, &body).await;
        check(&name, &reply, status, code);
    }
    assert_eq!(
        server.runs.load(Ordering::SeqCst),
        0,
        "on_any sees known types only"
    );
    still_serving(&server).await;
}

#[tokio::test]
async fn encodings_content_types_and_attempts() {
    let server = server().await;
    // Each accepted case is a distinct delivery, not a duplicate.
    let delivery = |n: u32| {
        let id = format!("evt_enc_{n}");
        let body = with_id(&body(), &id);
        let headers = signed_headers(&id, TYPE, &body);
        (headers, body)
    };
    let (mut gzip, body) = delivery(1);
    gzip.push(("Content-Encoding".into(), "gzip".into()));
    check(
        "Content-Encoding: gzip",
        &send(server.addr, &gzip, &body).await,
        415,
        "content_encoding_unsupported",
    );
    let (mut identity, body) = delivery(2);
    identity.push(("Content-Encoding".into(), "identity".into()));
    check(
        "Content-Encoding: identity",
        &send(server.addr, &identity, &body).await,
        200,
        "handled",
    );
    let (mut text_plain, body) = delivery(3);
    text_plain[0].1 = "text/plain".into();
    check(
        "the wrong Content-Type",
        &send(server.addr, &text_plain, &body).await,
        200,
        "handled",
    );
    let (mut no_type, body) = delivery(4);
    no_type.remove(0);
    check(
        "no Content-Type",
        &send(server.addr, &no_type, &body).await,
        200,
        "handled",
    );
    let (mut attempt, body) = delivery(5);
    attempt[4].1 = "not-a-number".into();
    check(
        "a non-numeric attempt",
        &send(server.addr, &attempt, &body).await,
        200,
        "handled",
    );
    let get = raw(
        server.addr,
        b"GET /webhooks/cariosan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    check("GET", &get, 405, "method_not_allowed");
    assert_eq!(server.runs.load(Ordering::SeqCst), 4);
}
