//! The actix-web example as a process: a signed fixture is handled, a
//! forged one refused with the layer's own status and code.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET: &str = "whsec_frameworks_test";

fn signature(secret: &str, id: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{id}.{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn post(addr: SocketAddr, id: &str, event_type: &str, signature: &str, body: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /webhooks/cariosan HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         X-Cariosan-Delivery: {id}\r\nX-Cariosan-Event: {event_type}\r\nX-Cariosan-Attempt: 1\r\n\
         X-Cariosan-Signature: {signature}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply
}

#[test]
fn the_actix_example_handles_a_signed_fixture_and_refuses_a_forged_one() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_actix"))
        .env("CARIOSAN_WEBHOOK_SECRET", SECRET)
        .env("CARIOSAN_WEBHOOK_ADDR", addr.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the example did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../src/test_util/fixtures/events/message.created.reply.json"
    ))
    .unwrap();
    let id = "evt_01JDB7R0AAAAAAAAAAAAAAAAAA";
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    let reply = post(
        addr,
        id,
        "message.created",
        &signature(SECRET, id, now, &body),
        &body,
    );
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.ends_with("handled"), "{reply}");
    let forged = post(
        addr,
        id,
        "message.created",
        &signature("whsec_forger", id, now, &body),
        &body,
    );
    assert!(forged.starts_with("HTTP/1.1 401"), "{forged}");
    assert!(forged.ends_with("signature_mismatch"), "{forged}");
    let mismatched = post(
        addr,
        id,
        "message.updated",
        &signature(SECRET, id, now, &body),
        &body,
    );
    assert!(mismatched.starts_with("HTTP/1.1 400"), "{mismatched}");
    assert!(mismatched.ends_with("envelope_mismatch"), "{mismatched}");

    let _ = child.kill();
    let _ = child.wait();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = lines.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(line, format!("handled message.created {id}"));
    assert!(
        lines.next().is_none(),
        "the forged and mismatched ones ran nothing"
    );
}
