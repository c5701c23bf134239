//! The actix-web example as a process, through `Receiver`: a signed
//! fixture is handled once, its copy is a duplicate, 16 concurrent copies
//! run once, a 1 MiB delivery is accepted, a forged one refused and a GET
//! answered 405, each with the layer's own status and code.

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
    request(addr, "POST", id, event_type, signature, body)
}

fn request(
    addr: SocketAddr,
    method: &str,
    id: &str,
    event_type: &str,
    signature: &str,
    body: &[u8],
) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "{method} /webhooks/cariosan HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
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
fn the_actix_example_through_receiver_deduplicates_accepts_a_mebibyte_and_refuses_what_it_must() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_actix"))
        .env("CARIOSAN_WEBHOOK_SECRET", SECRET)
        .env("CARIOSAN_WEBHOOK_ADDR", addr.to_string())
        .env("CARIOSAN_DEMO_DELAY_MS", "300")
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

    let again = post(
        addr,
        id,
        "message.created",
        &signature(SECRET, id, now, &body),
        &body,
    );
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    assert!(
        again.ends_with("duplicate"),
        "a redelivery runs nothing: {again}"
    );

    // 16 copies at once: one runs, the others wait for nothing.
    let copies_id = "evt_actix_sixteen_copies";
    let copies_body = String::from_utf8(body.clone())
        .unwrap()
        .replace(id, copies_id)
        .into_bytes();
    let replies: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let copies_body = &copies_body;
                scope.spawn(move || {
                    post(
                        addr,
                        copies_id,
                        "message.created",
                        &signature(SECRET, copies_id, now, copies_body),
                        copies_body,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let handled = replies.iter().filter(|r| r.ends_with("handled")).count();
    assert_eq!(handled, 1, "{replies:#?}");
    assert!(
        replies.iter().all(|r| r.ends_with("handled")
            || r.ends_with("delivery_in_progress")
            || r.ends_with("duplicate")),
        "{replies:#?}"
    );

    // The protocol's largest body, over actix's 256 KiB default.
    let large_id = "evt_actix_one_mebibyte";
    let small = String::from_utf8(body.clone())
        .unwrap()
        .replace(id, large_id);
    let filler = "x".repeat(1024 * 1024 - small.len());
    let large = small.replacen("\"content\": \"", &format!("\"content\": \"{filler}"), 1);
    assert_eq!(large.len(), 1024 * 1024);
    let reply = post(
        addr,
        large_id,
        "message.created",
        &signature(SECRET, large_id, now, large.as_bytes()),
        large.as_bytes(),
    );
    assert!(
        reply.starts_with("HTTP/1.1 200"),
        "{}",
        &reply[..reply.len().min(300)]
    );
    assert!(
        reply.ends_with("handled"),
        "{}",
        &reply[..reply.len().min(300)]
    );

    let get = request(addr, "GET", id, "message.created", "", b"");
    assert!(get.starts_with("HTTP/1.1 405"), "{get}");
    assert!(get.ends_with("method_not_allowed"), "{get}");
    assert!(get.to_ascii_lowercase().contains("allow: post"), "{get}");

    let _ = child.kill();
    let _ = child.wait();
    let lines: Vec<String> = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .collect();
    assert_eq!(
        lines,
        [
            format!("handled message.created {id}"),
            format!("handled message.created {copies_id}"),
            format!("handled message.created {large_id}"),
        ],
        "one run each; the forged, mismatched and copied ones ran nothing"
    );
}
