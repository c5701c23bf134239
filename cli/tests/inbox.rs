//! `cariosan-webhooks inbox` against a real PostgreSQL inbox, whose workers
//! run in this test process.
#![cfg(feature = "inbox")]

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cariosan_webhooks::store::postgres::sqlx::postgres::PgPoolOptions;
use cariosan_webhooks::store::postgres::{Inbox, InboxStatus, RetrySchedule};
use cariosan_webhooks::test_util::TestDelivery;
use cariosan_webhooks::{HandlerError, Webhooks};
use common::postgres_server::PostgresServer;
use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_cariosan-webhooks");

/// Runs the command with `DATABASE_URL`, off the runtime's threads.
async fn inbox_cli(url: &str, args: &[&str]) -> Output {
    let mut all = vec!["inbox".to_owned()];
    all.extend(args.iter().map(|a| a.to_string()));
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .args(&all)
            .env("DATABASE_URL", url)
            .env_remove("CARIOSAN_WEBHOOK_SECRET")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn list_show_and_replay_a_dead_delivery_once_the_handler_is_fixed() {
    let server = PostgresServer::start();
    let url = server.url();
    let pool = PgPoolOptions::new()
        .max_connections(6)
        .connect(&url)
        .await
        .unwrap();
    let inbox = Inbox::new(pool).retry(
        RetrySchedule::new()
            .first_delay(Duration::from_millis(5))
            .max_attempts(2),
    );
    inbox.migrate().await.unwrap();
    let broken = Arc::new(AtomicBool::new(true));
    let handled = Arc::new(AtomicUsize::new(0));
    let (flag, count) = (broken.clone(), handled.clone());
    let webhooks = Webhooks::new().on_any(move |_| {
        let (broken, handled) = (flag.load(Ordering::SeqCst), count.clone());
        async move {
            if broken {
                return Err(HandlerError::msg("the orders service is down"));
            }
            handled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let workers = inbox
        .workers(webhooks)
        .poll_interval(Duration::from_millis(10))
        .start();
    let id = "evt_cli_dead";
    let secret_text = "the private message text";
    let body = message_with(id, secret_text);
    let delivery = TestDelivery::json(body.clone())
        .secret(SECRET)
        .verify()
        .unwrap();
    inbox.ingest(&delivery, &body).await.unwrap();
    let started = Instant::now();
    while inbox.get(id).await.unwrap().unwrap().status != InboxStatus::Dead {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let listed = inbox_cli(&url, &["list", "--status", "dead"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed = text(&listed.stdout);
    assert!(listed.contains(id) && listed.contains("dead"), "{listed}");
    assert!(listed.contains("the orders service is down"), "{listed}");
    // Every column starts where its header does, whatever the values'
    // lengths ("dead" is shorter than "status").
    let all = text(&inbox_cli(&url, &["list"]).await.stdout);
    let mut lines = all.lines();
    let header = lines.next().unwrap();
    let columns: Vec<usize> = ["status", "type", "received"]
        .iter()
        .map(|name| header.find(name).unwrap())
        .collect();
    let mut rows = 0;
    for row in lines {
        rows += 1;
        for &at in &columns {
            assert!(
                row[..at].ends_with(' ') && !row[at..].starts_with(' '),
                "a column of {row:?} does not start at {at}:\n{all}"
            );
        }
    }
    assert!(rows >= 1, "{all}");
    let queued = text(
        &inbox_cli(&url, &["list", "--status", "queued"])
            .await
            .stdout,
    );
    assert!(!queued.contains(id), "{queued}");

    let shown = inbox_cli(&url, &["show", id]).await;
    let shown = text(&shown.stdout);
    assert!(
        shown.contains("X-Cariosan-Delivery  evt_cli_dead"),
        "{shown}"
    );
    assert!(shown.contains("attempts             2"), "{shown}");
    assert!(
        shown.contains(&format!("{} bytes kept", body.len())),
        "{shown}"
    );
    assert!(
        !shown.contains(secret_text),
        "no body without --body: {shown}"
    );
    assert!(!shown.contains(SECRET));
    let with_body = text(&inbox_cli(&url, &["show", id, "--body"]).await.stdout);
    assert!(with_body.contains(secret_text), "{with_body}");

    broken.store(false, Ordering::SeqCst);
    let replayed = inbox_cli(&url, &["replay", id]).await;
    assert!(replayed.status.success(), "{}", text(&replayed.stderr));
    assert_eq!(text(&replayed.stdout).trim(), format!("queued {id} again"));
    let started = Instant::now();
    while inbox.get(id).await.unwrap().unwrap().status != InboxStatus::Done {
        assert!(started.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handled.load(Ordering::SeqCst), 1);

    // Handled, so its body is gone: a second replay is refused, clearly.
    let again = inbox_cli(&url, &["replay", id]).await;
    assert_eq!(
        again.status.code(),
        Some(2),
        "a refusal is an error: exit 2"
    );
    assert!(
        text(&again.stderr).contains("has no stored body"),
        "{}",
        text(&again.stderr)
    );
    let missing = inbox_cli(&url, &["show", "evt_not_there"]).await;
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("no delivery evt_not_there"));
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn replay_dead_and_purge() {
    let server = PostgresServer::start();
    let url = server.url();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap();
    let inbox = Inbox::new(pool);
    inbox.migrate().await.unwrap();
    for id in ["evt_cli_a", "evt_cli_b"] {
        let body = message_with(id, "purge me");
        let delivery = TestDelivery::json(body.clone())
            .secret(SECRET)
            .verify()
            .unwrap();
        inbox.ingest(&delivery, &body).await.unwrap();
    }
    let purged = inbox_cli(&url, &["purge", "evt_cli_a"]).await;
    assert_eq!(
        text(&purged.stdout).trim(),
        "purged the body of evt_cli_a",
        "{}",
        text(&purged.stderr)
    );
    let entry = inbox.get("evt_cli_a").await.unwrap().unwrap();
    assert_eq!((entry.status, entry.body_len), (InboxStatus::Dead, None));
    assert_eq!(inbox.body("evt_cli_a").await.unwrap(), None);

    // Dead with a body: make the other one dead by purging nothing but its
    // state, as a worker out of attempts would.
    cariosan_webhooks::store::postgres::sqlx::query(
        "UPDATE cariosan_webhooks.inbox SET status = 'dead', outcome = 'failed' WHERE delivery_id = 'evt_cli_b'",
    )
    .execute(inbox.pool())
    .await
    .unwrap();
    let replayed = inbox_cli(&url, &["replay", "--dead"]).await;
    assert_eq!(
        text(&replayed.stdout).trim(),
        "queued 1 dead deliveries again\n\
         left 1 dead deliveries whose body is gone (purged, or dropped with a deleted message): they cannot run",
        "only the one with a body, and the purged one said: {}",
        text(&replayed.stderr)
    );
    assert_eq!(
        inbox.get("evt_cli_b").await.unwrap().unwrap().status,
        InboxStatus::Queued
    );
    let no_url = tokio::task::spawn_blocking(|| {
        Command::new(BIN)
            .args(["inbox", "list"])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(no_url.status.code(), Some(2));
    assert!(text(&no_url.stderr).contains("set DATABASE_URL"));
}
