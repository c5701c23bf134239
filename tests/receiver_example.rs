//! The `receiver` example as a user deploys it: a real process on
//! 127.0.0.1, fed every fixture by the independent signer; it must print
//! exactly one `handled <type> <id> ...` line per handler run, and nothing
//! for a forgery or a duplicate.

mod common;

use std::time::Duration;

use common::process::ReceiverProcess;
use common::*;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_prints_one_line_per_handled_delivery() {
    let receiver = ReceiverProcess::start(&[]);
    let addr = receiver.addr;
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
        let line = receiver
            .line(Duration::from_secs(10))
            .expect("a line per delivery");
        let prefix = format!("handled {} {} ", field("type"), field("delivery"));
        assert!(
            line.starts_with(&prefix),
            "{line:?} should start with {prefix:?}"
        );
        assert!(line.len() > prefix.len(), "a summary follows: {line:?}");
    }

    let body = fixture("events/message.created.json");
    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let forged = independent_signature("whsec_forger", id, now(), &body);
    let reply = send(
        addr,
        &delivery_headers(id, "message.created", &forged),
        &body,
    )
    .await;
    assert_eq!(reply.status, 401);
    let duplicate = send_signed(addr, id, "message.created", &body).await;
    assert_eq!(
        (duplicate.status, duplicate.body.as_str()),
        (200, "duplicate")
    );
    let unknown = br#"{"id":"evt_u1","type":"poll.closed","created_at":"2026-11-22T03:15:02Z","workspace_id":"ws_1","data":{}}"#;
    assert_eq!(
        send_signed(addr, "evt_u1", "poll.closed", unknown)
            .await
            .status,
        200
    );
    let line = receiver.line(Duration::from_secs(10)).unwrap();
    assert!(
        line.starts_with("handled poll.closed evt_u1 "),
        "the forgery and the duplicate printed nothing, the unknown event one line: {line:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_answers_health_checks_and_unknown_paths_beside_the_webhook() {
    let receiver = ReceiverProcess::start(&[]);
    let health = raw(
        receiver.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));
    let unknown = raw(
        receiver.addr,
        b"GET /metrics-or-anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(unknown.status, 404);
    let get_hook = raw(
        receiver.addr,
        b"GET /webhooks/cariosan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (get_hook.status, get_hook.body.as_str()),
        (405, "method_not_allowed")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_running_handler_finish_then_the_receiver_exits() {
    let mut receiver = ReceiverProcess::start(&[("CARIOSAN_DEMO_DELAY_MS", "1500")]);
    let addr = receiver.addr;
    let body = fixture("events/webhook.ping.json");
    let id = "evt_01JDB844PINGPINGPINGPIN01";
    let in_flight = tokio::spawn(async move { send_signed(addr, id, "webhook.ping", &body).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    receiver.terminate();
    let reply = in_flight.await.unwrap();
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    let line = receiver.line(Duration::from_secs(5)).unwrap();
    assert!(
        line.starts_with(&format!("handled webhook.ping {id} ")),
        "{line:?}"
    );
    let status = tokio::task::block_in_place(|| receiver.wait_exit(Duration::from_secs(10)))
        .expect("the receiver exits after SIGTERM");
    assert!(status.success(), "{status}");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "no longer listening"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_handler_answers_the_delivery_and_exits_within_the_drain_bound() {
    let mut receiver = ReceiverProcess::start(&[
        ("CARIOSAN_DEMO_DELAY_MS", "20000"),
        ("CARIOSAN_WEBHOOK_DRAIN_SECS", "2"),
    ]);
    let addr = receiver.addr;
    let body = fixture("events/webhook.ping.json");
    let id = "evt_01JDB844PINGPINGPINGPIN01";
    let in_flight = tokio::spawn(async move { send_signed(addr, id, "webhook.ping", &body).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let signalled = std::time::Instant::now();
    receiver.terminate();
    let reply = in_flight.await.unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "shutting_down"),
        "answered, so that Cariosan retries it elsewhere"
    );
    let status = tokio::task::block_in_place(|| receiver.wait_exit(Duration::from_secs(10)))
        .expect("the receiver exits after SIGTERM");
    let took = signalled.elapsed();
    // The documented bound: the drain deadline, plus CANCEL_GRACE, plus
    // the process's own exit.
    let bound = Duration::from_secs(2) + cariosan_webhooks::delivery::CANCEL_GRACE;
    assert!(
        took < bound + Duration::from_millis(1500),
        "exited {took:?} after SIGTERM, bound {bound:?}"
    );
    assert!(status.success(), "{status}");
}

#[test]
fn the_receiver_refuses_the_demo_secret_on_an_address_others_can_reach() {
    let output = std::process::Command::new(common::process::example_binary("receiver"))
        .env_remove("CARIOSAN_WEBHOOK_SECRET")
        .env("CARIOSAN_WEBHOOK_ADDR", "0.0.0.0:0")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("CARIOSAN_WEBHOOK_SECRET is unset: refusing to listen on 0.0.0.0:0"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_receiver_starts_on_loopback_without_a_secret() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(common::process::example_binary("receiver"))
        .env_remove("CARIOSAN_WEBHOOK_SECRET")
        .env("CARIOSAN_WEBHOOK_ADDR", format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let mut up = false;
    while started.elapsed() < Duration::from_secs(20) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(up, "the receiver started with the demo secret on loopback");
}

/// Sends a request's first header lines, then one header byte every 200 ms;
/// the half to read the server's end from.
async fn drip(addr: std::net::SocketAddr) -> tokio::net::tcp::OwnedReadHalf {
    use tokio::io::AsyncWriteExt;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"POST /webhooks/cariosan HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    tokio::spawn(async move {
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if write.write_all(b"a").await.is_err() {
                break;
            }
        }
    });
    read
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_dripping_headers_is_disconnected_and_connections_are_bounded() {
    use tokio::io::AsyncReadExt;
    let receiver = ReceiverProcess::start(&[
        ("CARIOSAN_WEBHOOK_HEADER_TIMEOUT_MS", "800"),
        ("CARIOSAN_WEBHOOK_MAX_CONNECTIONS", "2"),
    ]);
    let started = std::time::Instant::now();
    let mut slow = [drip(receiver.addr).await, drip(receiver.addr).await];
    tokio::time::sleep(Duration::from_millis(100)).await;

    // Both connections are taken: a third client waits until the header
    // timeout frees one.
    let body = fixture("events/webhook.ping.json");
    let reply = send_signed(
        receiver.addr,
        "evt_01JDB844PINGPINGPINGPIN01",
        "webhook.ping",
        &body,
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(700),
        "served only once a dripping client was cut off: {waited:?}"
    );

    for stream in &mut slow {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the dripping client was disconnected");
        let text = String::from_utf8_lossy(&rest);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "{text:?}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The status a delivery signed with `secret` gets, under a fresh id.
async fn status_with(addr: std::net::SocketAddr, secret: &str, n: &mut u32) -> (u16, String) {
    *n += 1;
    let id = format!("evt_rotation_{n}");
    let body = with_id(&fixture("events/webhook.ping.json"), &id);
    let signature = independent_signature(secret, &id, now(), &body);
    let reply = send(
        addr,
        &delivery_headers(&id, "webhook.ping", &signature),
        &body,
    )
    .await;
    (reply.status, reply.body)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_secrets_file_is_reloaded_on_sighup_and_never_left_empty() {
    let dir = std::env::temp_dir().join(format!("cariosan-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secrets");
    let (a, b) = ("whsec_rotation_A", "whsec_rotation_B");
    std::fs::write(&file, format!("{a}\n")).unwrap();
    let receiver = ReceiverProcess::start_with(
        &[("CARIOSAN_WEBHOOK_SECRETS_FILE", file.to_str().unwrap())],
        &["CARIOSAN_WEBHOOK_SECRET"],
    );
    let addr = receiver.addr;
    let mut n = 0;
    assert_eq!(status_with(addr, a, &mut n).await.0, 200);
    assert_eq!(
        status_with(addr, b, &mut n).await,
        (401, "signature_mismatch".into())
    );

    // Until a reload has happened, poll: SIGHUP is handled asynchronously.
    async fn after_reload(
        addr: std::net::SocketAddr,
        secret: &str,
        expect: u16,
        n: &mut u32,
    ) -> (u16, String) {
        let started = std::time::Instant::now();
        loop {
            let answer = status_with(addr, secret, n).await;
            if answer.0 == expect || started.elapsed() > Duration::from_secs(10) {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    std::fs::write(&file, format!("{b}\n{a}\n")).unwrap();
    receiver.signal("HUP");
    assert_eq!(after_reload(addr, b, 200, &mut n).await.0, 200);
    assert_eq!(
        status_with(addr, a, &mut n).await.0,
        200,
        "both during the rotation"
    );

    std::fs::write(&file, format!("{b}\n")).unwrap();
    receiver.signal("HUP");
    assert_eq!(
        after_reload(addr, a, 401, &mut n).await,
        (401, "signature_mismatch".into())
    );
    assert_eq!(status_with(addr, b, &mut n).await.0, 200);

    std::fs::write(&file, "\n").unwrap();
    receiver.signal("HUP");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        status_with(addr, b, &mut n).await.0,
        200,
        "an empty file keeps B"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_receiver_refuses_an_empty_secrets_file_or_both_variables() {
    let dir = std::env::temp_dir().join(format!("cariosan-secrets-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secrets");
    std::fs::write(&file, "  \n").unwrap();
    let run = |both: bool| {
        let mut command = std::process::Command::new(common::process::example_binary("receiver"));
        command
            .env("CARIOSAN_WEBHOOK_SECRETS_FILE", &file)
            .env("CARIOSAN_WEBHOOK_ADDR", "127.0.0.1:0")
            .env("RUST_LOG", "error");
        if both {
            command.env("CARIOSAN_WEBHOOK_SECRET", "whsec_x");
        } else {
            command.env_remove("CARIOSAN_WEBHOOK_SECRET");
        }
        command.output().unwrap()
    };
    let empty = run(false);
    assert!(!empty.status.success());
    assert!(
        String::from_utf8_lossy(&empty.stderr).contains("no secret in the file"),
        "{:?}",
        empty
    );
    let both = run(true);
    assert!(!both.status.success());
    assert!(
        String::from_utf8_lossy(&both.stderr).contains("not both"),
        "{:?}",
        both
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_the_outcomes_the_lag_and_the_secret_slot() {
    let receiver = ReceiverProcess::start(&[]);
    let addr = receiver.addr;
    let body = fixture("events/webhook.ping.json");
    let id = "evt_01JDB844PINGPINGPINGPIN01";
    assert_eq!(
        send_signed(addr, id, "webhook.ping", &body).await.status,
        200
    );
    let forged = independent_signature("whsec_forger", id, now(), &body);
    assert_eq!(
        send(addr, &delivery_headers(id, "webhook.ping", &forged), &body)
            .await
            .status,
        401
    );
    let duplicate = send_signed(addr, id, "webhook.ping", &body).await;
    assert_eq!(
        (duplicate.status, duplicate.body.as_str()),
        (200, "duplicate")
    );

    let scraped = raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(scraped.status, 200);
    let text = scraped.body;
    let line = |needle: &[&str]| {
        text.lines()
            .find(|l| !l.starts_with('#') && needle.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no metric with {needle:?} in:\n{text}"))
            .to_owned()
    };
    for outcome in ["handled", "signature_mismatch", "duplicate"] {
        let found = line(&[
            "cariosan_webhook_deliveries_total",
            &format!("outcome=\"{outcome}\""),
        ]);
        assert!(found.contains("event_type=\"webhook.ping\""), "{found}");
        assert!(found.trim_end().ends_with(" 1"), "{found}");
    }
    line(&["cariosan_webhook_delivery_lag_seconds_count"]);
    // Every series the README's alert rules name.
    let readme = include_str!("../README.md");
    let rules = &readme[readme.find("alert: CariosanWebhooksFailing").unwrap()..];
    let rules = &rules[..rules.find("```").unwrap()];
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if word.starts_with("cariosan_webhook_") {
            named += 1;
            line(&[word]);
        }
    }
    assert!(named >= 3, "the rules name series: {rules}");
    let slot = line(&["cariosan_webhook_secret_matches_total", "slot=\"primary\""]);
    assert!(
        slot.trim_end().ends_with(" 2"),
        "the delivery and its duplicate: {slot}"
    );
    line(&[
        "cariosan_webhook_handler_duration_seconds_bucket",
        "le=\"9\"",
    ]);
    assert!(!text.contains(id), "no delivery id in a label");
}
