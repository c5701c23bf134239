//! Test helpers: a server on 127.0.0.1, a raw HTTP/1.1 client, and a signer
//! written from the protocol text, independently of the crate.
#![allow(dead_code)]

pub mod postgres_server;
pub mod process;
pub mod redis_server;
pub mod simulation;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const SECRET: &str = "whsec_2CfBq8m1ZbLr0v5yHkQ7tE9uXw3aJs6N";

/// A log writer whose output a test reads back.
#[derive(Clone, Default)]
pub struct Captured(pub std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The protocol's fixtures, which the library's test kit ships; found from
/// the library or from another workspace member such as the CLI.
pub fn fixture(path: &str) -> Vec<u8> {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .ancestors()
        .find(|dir| dir.join("src/test_util/fixtures").is_dir())
        .expect("the library's src/test_util/fixtures");
    let path = root.join("src/test_util/fixtures").join(path);
    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `t=<t>,v1=<hex HMAC-SHA256(secret, id.t.body)>`, from the protocol text.
pub fn independent_signature(secret: &str, id: &str, t: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{id}.{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

/// Serves `app` on a free port of 127.0.0.1 until the test ends.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A response: status and body text; status 0 when the connection closed
/// without one.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
    pub head: String,
}

/// Sends raw request bytes and reads the response until the server closes
/// or the response is complete.
pub async fn raw(addr: SocketAddr, request: &[u8]) -> Reply {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    // A server may answer and close before taking the whole body; what
    // matters is the answer.
    let _ = stream.write_all(request).await;
    read_reply(&mut stream).await
}

pub async fn read_reply(stream: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("the server answered in time");
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if let Some(reply) = parse_reply(&buf) {
            return reply;
        }
    }
    // The connection closed with no complete answer (the server died, say):
    // to a sender that is no response at all, status 0.
    assert!(
        buf.is_empty() || buf.starts_with(b"HTTP/"),
        "garbage reply {:?}",
        String::from_utf8_lossy(&buf)
    );
    parse_reply(&buf).unwrap_or(Reply {
        status: 0,
        body: String::new(),
        head: String::new(),
    })
}

fn parse_reply(buf: &[u8]) -> Option<Reply> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    (body.len() >= length).then(|| Reply {
        status,
        body: body[..length].to_owned(),
        head: head.to_owned(),
    })
}

/// A POST with these headers and body, with a `Content-Length`.
pub fn request(headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = String::from(
        "POST /webhooks/cariosan HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n",
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// The headers Cariosan sends for a delivery.
pub fn delivery_headers(id: &str, event_type: &str, signature: &str) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        ("User-Agent".into(), "Cariosan-Webhook/1".into()),
        ("X-Cariosan-Delivery".into(), id.into()),
        ("X-Cariosan-Event".into(), event_type.into()),
        ("X-Cariosan-Attempt".into(), "1".into()),
        ("X-Cariosan-Signature".into(), signature.into()),
    ]
}

/// Sends a delivery signed now by the independent signer.
pub async fn send_signed(addr: SocketAddr, id: &str, event_type: &str, body: &[u8]) -> Reply {
    let signature = independent_signature(SECRET, id, now(), body);
    send(addr, &delivery_headers(id, event_type, &signature), body).await
}

pub async fn send(addr: SocketAddr, headers: &[(String, String)], body: &[u8]) -> Reply {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    raw(addr, &request(&headers, body)).await
}

/// A `message.created` delivery's body under `id`, with `content` as the
/// message's text: tests make handlers behave by what the text says.
pub fn message_with(id: &str, content: &str) -> Vec<u8> {
    let body = String::from_utf8(with_id(&fixture("events/message.created.json"), id)).unwrap();
    body.replace("Halo, pesanan saya sudah dikirim?", content)
        .into_bytes()
}

/// Sends a `message.created` delivery signed now, as attempt `attempt`.
pub async fn send_attempt(addr: SocketAddr, id: &str, attempt: u32, body: &[u8]) -> Reply {
    let mut headers = delivery_headers(
        id,
        "message.created",
        &independent_signature(SECRET, id, now(), body),
    );
    headers[4].1 = attempt.to_string();
    send(addr, &headers, body).await
}

/// The body with its envelope id replaced: a distinct delivery of the same
/// event, for tests that must not be taken as duplicates.
pub fn with_id(body: &[u8], new_id: &str) -> Vec<u8> {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let start = text.find("\"id\"").expect("an envelope id");
    let open = start + text[start + 4..].find('"').unwrap() + 5;
    let close = open + text[open..].find('"').unwrap();
    format!("{}{new_id}{}", &text[..open], &text[close..]).into_bytes()
}

/// Handlers that count how many deliveries of a known type ran.
pub fn counting_webhooks() -> (
    cariosan_webhooks::Webhooks,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let webhooks = cariosan_webhooks::Webhooks::new().on_any(move |_| {
        let runs = counted.clone();
        async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    (webhooks, runs)
}
