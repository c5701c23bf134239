//! The `cariosan-webhooks` command, driven as a process.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::verify::Verifier;
use cariosan_webhooks::{CariosanWebhookLayer, HandlerError, Webhooks};
use common::process::ReceiverProcess;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_cariosan-webhooks");

fn cli(args: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(BIN);
    command.env("CARIOSAN_WEBHOOK_SECRET", SECRET);
    run(command, args, stdin)
}

/// Runs `command` with `args`, writing `stdin` to it.
fn run(mut command: Command, args: &[&str], stdin: &[u8]) -> Output {
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs the command off the async runtime's threads.
async fn cli_async(args: Vec<String>) -> Output {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args, b"")
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn send_is_acknowledged_and_handled_by_the_receiver_example() {
    let receiver = ReceiverProcess::start(&[]);
    let url = format!("http://{}/webhooks/cariosan", receiver.addr);
    let output = cli_async(vec![
        "send".into(),
        "message.created".into(),
        "--to".into(),
        url,
    ])
    .await;
    let printed = stdout(&output);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("attempt 1 -> 200 handled"), "{printed}");
    let id = printed.split_whitespace().nth(1).unwrap().to_owned();
    assert!(id.starts_with("evt_cli_"), "{printed}");
    let line = receiver
        .line(Duration::from_secs(10))
        .expect("the receiver handled it");
    assert!(
        line.starts_with(&format!("handled message.created {id} ")),
        "{line}"
    );
    assert!(
        line.contains("mentions user_alice,user_budi"),
        "a realistic sample: {line}"
    );
}

#[test]
fn sign_output_verifies_with_the_library_and_an_independent_hmac() {
    let body = fixture("events/message.created.json");
    let output = cli(
        &[
            "sign",
            "--delivery",
            "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A",
            "--timestamp",
            "1795000000",
        ],
        &body,
    );
    assert!(output.status.success());
    let printed = stdout(&output);
    let header = |name: &str| {
        printed
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("{name} in {printed}"))
            .to_owned()
    };
    let signature = header("x-cariosan-signature");
    assert_eq!(
        header("x-cariosan-event"),
        "message.created",
        "read from the body"
    );
    assert_eq!(
        signature,
        independent_signature(
            SECRET,
            "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A",
            1_795_000_000,
            &body
        )
    );
    let verifier = Verifier::new(SECRET).unwrap();
    assert!(verifier
        .verify_at(
            1_795_000_000,
            "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A",
            &signature,
            &body
        )
        .is_ok());
    assert!(printed.contains("curl -sS -X POST"), "{printed}");
}

#[test]
fn verify_names_the_failing_check() {
    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let body = fixture("events/message.created.json");
    let header = independent_signature(SECRET, id, 1_795_000_000, &body);
    let verify = |body: &[u8], now: &str, secret: &str| {
        cli(
            &[
                "verify",
                "--delivery",
                id,
                "--header",
                &header,
                "--now",
                now,
                "--secret",
                secret,
            ],
            body,
        )
    };

    let valid = verify(&body, "1795000010", SECRET);
    assert!(valid.status.success(), "{}", stdout(&valid));
    assert!(stdout(&valid).contains("matches under secret #1"));

    let mut tampered = body.clone();
    tampered[120] ^= 1;
    let out = verify(&tampered, "1795000010", SECRET);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAILED  signature")
            && stdout(&out).contains("invalid: signature_mismatch"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("ok      timestamp"),
        "the other checks pass: {}",
        stdout(&out)
    );

    let out = verify(&body, "1795003600", SECRET);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("FAILED  timestamp: signed 3600 s before now"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("invalid: timestamp_too_old"));

    let out = verify(&body, "1795000010", "whsec_wrong,whsec_also_wrong");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("no v1 matches under secret #2"),
        "{}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("invalid: signature_mismatch"));

    let out = verify(&body, "1795000010", &format!("whsec_wrong,{SECRET}"));
    assert!(
        out.status.success(),
        "rotation: the second secret matches: {}",
        stdout(&out)
    );
    assert!(stdout(&out).contains("matches under secret #2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn listen_prints_a_delivery_sent_by_send() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut listener = Command::new(BIN)
        .args(["listen", "--addr", &addr])
        .env("CARIOSAN_WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = listener.stdout.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let url = format!("http://{addr}/anything");
    let sent = cli_async(vec![
        "send".into(),
        "member.updated".into(),
        "--to".into(),
        url,
        "--delivery".into(),
        "evt_listen_1".into(),
    ])
    .await;
    assert!(
        stdout(&sent).contains("-> 200 handled"),
        "{}",
        stdout(&sent)
    );
    let forged = cli_async(vec![
        "send".into(),
        "member.updated".into(),
        "--to".into(),
        format!("http://{addr}/anything"),
        "--secret".into(),
        "whsec_forger".into(),
    ])
    .await;
    assert!(
        stdout(&forged).contains("-> 401 signature_mismatch"),
        "{}",
        stdout(&forged)
    );
    let mut printed = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        printed.push(line);
        if printed.iter().any(|l| l.contains("rejected:")) {
            break;
        }
    }
    let _ = listener.kill();
    let _ = listener.wait();
    let printed = printed.join("\n");
    assert!(
        printed.contains("member.updated evt_listen_1 attempt 1 at 2026-11-22T"),
        "an RFC 3339 time: {printed}"
    );
    assert!(
        printed.contains("\"previous_role\": \"member\""),
        "pretty JSON of the event: {printed}"
    );
    assert!(
        printed.contains("rejected: 401 signature_mismatch"),
        "rejections are printed: {printed}"
    );
    assert!(
        !printed.contains("\x1b["),
        "no colours when stdout is not a terminal"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_with_attempts_retries_like_cariosan_until_handled() {
    let attempts_seen = Arc::new(Mutex::new(Vec::new()));
    let seen = attempts_seen.clone();
    let webhooks = Webhooks::new().on_message_created(move |event| {
        let seen = seen.clone();
        async move {
            seen.lock()
                .unwrap()
                .push((event.id.to_string(), event.attempt));
            if event.attempt == Some(1) {
                return Err(HandlerError::msg("the first attempt always fails"));
            }
            Ok(())
        }
    });
    let app = Router::new()
        .route("/hook", post_service(webhooks))
        .layer(CariosanWebhookLayer::new(SECRET));
    let addr = serve(app).await;
    let output = cli_async(vec![
        "send".into(),
        "message.created".into(),
        "--to".into(),
        format!("http://{addr}/hook"),
        "--attempts".into(),
        "3".into(),
        "--retry-delay".into(),
        "0.2".into(),
    ])
    .await;
    let printed = stdout(&output);
    assert!(output.status.success(), "{printed}");
    assert!(
        printed.contains("attempt 1 -> 500 handler_failed"),
        "{printed}"
    );
    assert!(printed.contains("attempt 2 -> 200 handled"), "{printed}");
    assert!(
        !printed.contains("attempt 3"),
        "stops at the first 2xx: {printed}"
    );
    let seen = attempts_seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].0, seen[1].0, "the same delivery id on the retry");
    assert_eq!((seen[0].1, seen[1].1), (Some(1), Some(2)));
}

#[test]
fn errors_are_one_line_and_a_non_zero_exit() {
    let output = Command::new(BIN)
        .args(["send", "message.created", "--to", "http://127.0.0.1:1/x"])
        .env("CARIOSAN_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot connect to 127.0.0.1:1"),
        "{stderr}"
    );
    let output = Command::new(BIN)
        .args([
            "send",
            "poll.closed",
            "--to",
            "http://127.0.0.1:1/x",
            "--data",
            "/nonexistent/data.json",
        ])
        .env("CARIOSAN_WEBHOOK_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: cannot read /nonexistent/data.json"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_an_unknown_type_with_an_empty_data_object_and_hint_at_a_404() {
    let receiver = ReceiverProcess::start(&[]);
    let url = format!("http://{}/webhooks/cariosan", receiver.addr);
    let sent = cli_async(vec![
        "send".into(),
        "poll.closed".into(),
        "--to".into(),
        url,
    ])
    .await;
    assert!(
        sent.status.success(),
        "{}{}",
        stdout(&sent),
        String::from_utf8_lossy(&sent.stderr)
    );
    assert!(
        stdout(&sent).contains("-> 200 handled"),
        "{}",
        stdout(&sent)
    );
    let line = receiver.line(Duration::from_secs(10)).unwrap();
    assert!(line.starts_with("handled poll.closed evt_cli_"), "{line}");
    assert!(
        line.ends_with("unknown type, 2 bytes of data"),
        "an empty data object: {line}"
    );

    let wrong = format!("http://{}/webhook", receiver.addr);
    let missed = cli_async(vec![
        "send".into(),
        "message.created".into(),
        "--to".into(),
        wrong,
    ])
    .await;
    assert!(!missed.status.success());
    assert!(
        stdout(&missed)
            .contains("-> 404 (no code: nothing is mounted at this path; check the path in --to)"),
        "{}",
        stdout(&missed)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_with_attempts_retries_a_refused_connection() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let sender = tokio::spawn(cli_async(vec![
        "send".into(),
        "webhook.ping".into(),
        "--to".into(),
        format!("http://{addr}/webhooks/cariosan"),
        "--attempts".into(),
        "20".into(),
        "--retry-delay".into(),
        "0.5".into(),
    ]));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _receiver = tokio::task::spawn_blocking(move || {
        ReceiverProcess::start(&[("CARIOSAN_WEBHOOK_ADDR", addr.as_str())])
    })
    .await
    .unwrap();
    let sent = sender.await.unwrap();
    let printed = stdout(&sent);
    assert!(sent.status.success(), "{printed}");
    assert!(
        printed.contains("attempt 1 -> cannot connect to 127.0.0.1"),
        "{printed}"
    );
    assert!(printed.contains("-> 200 handled"), "{printed}");
}

#[test]
fn sign_takes_the_delivery_id_from_the_body_and_refuses_another() {
    let body = fixture("events/message.created.json");
    let signed = cli(&["sign", "--timestamp", "1795000000"], &body);
    assert!(
        signed.status.success(),
        "{}",
        String::from_utf8_lossy(&signed.stderr)
    );
    assert!(
        stdout(&signed).contains("x-cariosan-delivery: evt_01JDB7Q3KX2W9V0M4T8R6N5P1A"),
        "{}",
        stdout(&signed)
    );
    let mismatch = cli(&["sign", "--delivery", "evt_1"], &body);
    assert_eq!(mismatch.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&mismatch.stderr);
    assert!(
        stderr.contains("differs from the body's id evt_01JDB7Q3KX2W9V0M4T8R6N5P1A"),
        "{stderr}"
    );
}

#[test]
fn verify_checks_the_envelope_and_takes_a_pasted_header_line() {
    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let body = fixture("events/message.created.json");
    let run = |id: &str, body: &[u8], extra: &[&str]| {
        let header = format!(
            "X-Cariosan-Signature: {}",
            independent_signature(SECRET, id, 1_795_000_000, body)
        );
        let mut args = vec![
            "verify",
            "--delivery",
            id,
            "--header",
            &header,
            "--now",
            "1795000000",
        ];
        args.extend_from_slice(extra);
        let output = cli(&args, body);
        (output.status.code(), stdout(&output))
    };
    let (code, printed) = run(id, &body, &["--event", "message.created"]);
    assert_eq!(code, Some(0), "{printed}");
    assert!(
        printed.contains("ok      envelope: message.created"),
        "{printed}"
    );

    let (code, printed) = run(id, b"not json", &[]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains("[envelope_invalid]"), "{printed}");
    assert!(
        printed.ends_with("invalid: envelope_invalid\n"),
        "{printed}"
    );

    let other = with_id(&body, "evt_other");
    let (code, printed) = run(id, &other, &[]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(printed.contains("invalid: envelope_mismatch"), "{printed}");

    let (code, printed) = run(id, &body, &["--event", "message.updated"]);
    assert_eq!(code, Some(1), "{printed}");
    assert!(
        printed
            .contains("its type \"message.created\" is not the event header \"message.updated\""),
        "{printed}"
    );
}

/// Runs the command with `args` and no secret in the environment.
fn cli_without_env_secret(args: &[&str], stdin: &[u8]) -> Output {
    let mut command = Command::new(BIN);
    command.env_remove("CARIOSAN_WEBHOOK_SECRET");
    run(command, args, stdin)
}

#[test]
fn sign_with_several_secrets_signs_as_a_sender_mid_rotation() {
    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let body = fixture("events/message.created.json");
    let output = cli_without_env_secret(
        &[
            "sign",
            "--timestamp",
            "1795000000",
            "--secret",
            "whsec_newest",
            "--secret",
            "whsec_older",
        ],
        &body,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = stdout(&output);
    let signature = printed
        .lines()
        .find_map(|l| l.strip_prefix("x-cariosan-signature: "))
        .unwrap_or_else(|| panic!("{printed}"));
    let mac = |secret: &str| {
        let one = independent_signature(secret, id, 1_795_000_000, &body);
        one.split_once(",v1=").unwrap().1.to_owned()
    };
    assert_eq!(
        signature,
        format!(
            "t=1795000000,v1={},v1={}",
            mac("whsec_newest"),
            mac("whsec_older")
        ),
        "one v1 per secret, newest first"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn send_with_several_secrets_reaches_a_receiver_that_knows_only_the_older() {
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(Webhooks::new().on_any(|_| async { Ok(()) }))
            .layer(CariosanWebhookLayer::new("whsec_older")),
    );
    let url = format!("http://{}/webhooks/cariosan", serve(app).await);
    let output = tokio::task::spawn_blocking(move || {
        cli_without_env_secret(
            &[
                "send",
                "message.created",
                "--to",
                &url,
                "--secret",
                "whsec_newest",
                "--secret",
                "whsec_older",
            ],
            b"",
        )
    })
    .await
    .unwrap();
    let printed = stdout(&output);
    assert!(output.status.success(), "{printed}");
    assert!(printed.contains("attempt 1 -> 200 handled"), "{printed}");
}
