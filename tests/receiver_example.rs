//! The `receiver` example as a user deploys it: a real process on
//! 127.0.0.1, fed every fixture by the independent signer; it must print
//! exactly one `handled <type> <id> ...` line per delivery its handlers
//! ran for, and nothing for a forgery.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::Value;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `cargo test` builds the examples next to the test binaries; a run of
/// this test alone builds the one it needs.
fn example_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join("examples").join(name);
    if !path.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(status.success(), "building the {name} example failed");
    }
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_prints_one_line_per_handled_delivery() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut child = Command::new(example_binary("receiver"))
        .env("CARIOSAN_WEBHOOK_SECRET", SECRET)
        .env("CARIOSAN_WEBHOOK_ADDR", addr.to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Killed(child);
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let _ = lines_tx.send(line.unwrap());
        }
    });
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let index: Value = serde_json::from_slice(&fixture("events/index.json")).unwrap();
    for delivery in index["deliveries"].as_array().unwrap() {
        let field = |k: &str| delivery[k].as_str().unwrap().to_owned();
        let body = fixture(&format!("events/{}", field("file")));
        let reply = send_signed(addr, &field("delivery"), &field("type"), &body).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "handled"),
            "{}",
            field("name")
        );
        let line = lines
            .recv_timeout(Duration::from_secs(10))
            .expect("a line per delivery");
        let prefix = format!("handled {} {} ", field("type"), field("delivery"));
        assert!(
            line.starts_with(&prefix),
            "{line:?} should start with {prefix:?}"
        );
        assert!(line.len() > prefix.len(), "a summary follows: {line:?}");
    }

    let body = fixture("events/message.created.json");
    let forged = independent_signature(
        "whsec_forger",
        "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A",
        now(),
        &body,
    );
    let reply = send(
        addr,
        &delivery_headers("evt_01JDB7Q3KX2W9V0M4T8R6N5P1A", "message.created", &forged),
        &body,
    )
    .await;
    assert_eq!(reply.status, 401);
    let unknown = br#"{"id":"evt_u1","type":"poll.closed","created_at":"2026-11-22T03:15:02Z","workspace_id":"ws_1","data":{}}"#;
    assert_eq!(
        send_signed(addr, "evt_u1", "poll.closed", unknown)
            .await
            .status,
        200
    );
    let line = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        line.starts_with("handled poll.closed evt_u1 "),
        "the forgery printed nothing, the unknown event one line: {line:?}"
    );
}
