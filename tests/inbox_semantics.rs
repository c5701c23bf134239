//! The inbox does what its docs say, on a real PostgreSQL: a give-up keeps
//! its writes, a deletion supersedes its message's own content events and
//! nothing else, no table keeps a deleted message's text, generations only
//! grow, and `on_give_up` runs at least once per dead row.
#![cfg(feature = "postgres")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::dispatch::EventSelector;
use cariosan_webhooks::model::Event;
use cariosan_webhooks::store::postgres::sqlx::{self, postgres::PgPoolOptions, PgPool};
use cariosan_webhooks::store::postgres::{Inbox, InboxEntry, InboxStatus, RetrySchedule, Tx};
use cariosan_webhooks::verification::VerificationLayer;
use cariosan_webhooks::{Delivery, HandlerError, HandlerResult, Webhooks};
use common::postgres_server::PostgresServer;
use common::*;
use serde_json::{json, Value};

async fn inbox(server: &PostgresServer, schedule: RetrySchedule) -> Inbox {
    let inbox = Inbox::new(server.pool(8).await).retry(schedule);
    inbox.migrate().await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS effects (delivery_id text NOT NULL, note text)")
        .execute(inbox.pool())
        .await
        .unwrap();
    inbox
}

async fn ingest(inbox: &Inbox) -> SocketAddr {
    serve(Router::new().route(
        "/webhooks/cariosan",
        post_service(inbox.service()).layer(VerificationLayer::new(SECRET)),
    ))
    .await
}

async fn effects(pool: &PgPool, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE delivery_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn insert_effect(tx: &Tx, id: &str, note: &str) -> HandlerResult {
    let mut conn = tx.conn().await?;
    sqlx::query("INSERT INTO effects (delivery_id, note) VALUES ($1, $2)")
        .bind(id)
        .bind(note)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn wait_for(
    inbox: &Inbox,
    id: &str,
    within: Duration,
    done: impl Fn(&InboxEntry) -> bool,
) -> InboxEntry {
    let started = Instant::now();
    loop {
        let entry = inbox.get(id).await.unwrap();
        if let Some(entry) = &entry {
            if done(entry) {
                return entry.clone();
            }
        }
        assert!(started.elapsed() < within, "waited {within:?}: {entry:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn status(status: InboxStatus) -> impl Fn(&InboxEntry) -> bool {
    move |entry| entry.status == status
}

/// A delivery of `event_type` with envelope id `id` about message
/// `message_id` saying `content`, quoting `quoted` (id, content) if given.
fn message_event(
    event_type: &str,
    id: &str,
    message_id: &str,
    content: &str,
    quoted: Option<(&str, &str)>,
) -> Vec<u8> {
    let path = match (event_type, quoted) {
        ("message.created", Some(_)) => "events/message.created.reply.json",
        ("message.created", None) => "events/message.created.json",
        ("message.updated", _) => "events/message.updated.json",
        ("message.deleted", _) => "events/message.deleted.json",
        (other, _) => panic!("no fixture for {other}"),
    };
    let mut event: Value = serde_json::from_slice(&fixture(path)).unwrap();
    event["id"] = json!(id);
    let message = &mut event["data"]["message"];
    message["id"] = json!(message_id);
    message["content"] = json!(content);
    if let Some((quoted_id, quoted_content)) = quoted {
        message["parent_id"] = json!(quoted_id);
        message["quoted_message"]["id"] = json!(quoted_id);
        message["quoted_message"]["content"] = json!(quoted_content);
    }
    serde_json::to_vec(&event).unwrap()
}

fn moderation_of(id: &str, message_id: &str, excerpt: &str) -> Vec<u8> {
    let mut event: Value =
        serde_json::from_slice(&fixture("events/moderation.action.json")).unwrap();
    event["id"] = json!(id);
    event["data"]["message_id"] = json!(message_id);
    event["data"]["excerpt"] = json!(excerpt);
    serde_json::to_vec(&event).unwrap()
}

async fn send_event(addr: SocketAddr, id: &str, event_type: &str, body: &[u8]) -> Reply {
    let reply = send_signed(addr, id, event_type, body).await;
    assert!(
        (200..300).contains(&reply.status),
        "{id}: {} {}",
        reply.status,
        reply.body
    );
    reply
}

/// The text of the first message of an event, or its excerpt.
fn text_of(event: &Delivery<Event>) -> String {
    match event.data() {
        Event::MessageCreated(created) => created.message.content.clone(),
        Event::MessageUpdated(updated) => updated.message.content.clone(),
        Event::ModerationAction(action) => action.excerpt.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_give_up_commits_its_writes_with_the_dead_record() {
    let server = PostgresServer::start();
    let inbox = inbox(&server, RetrySchedule::new()).await;
    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        |event: Delivery<Event>, tx: Tx| async move {
            insert_effect(&tx, event.id.as_str(), "before giving up").await?;
            Err::<(), _>(HandlerError::give_up("this order no longer exists"))
        },
    );
    let workers = inbox
        .workers(webhooks)
        .poll_interval(Duration::from_millis(20))
        .start();
    let addr = ingest(&inbox).await;
    let id = "evt_inbox_gives_up";
    send_event(addr, id, "message.created", &message_with(id, "gone")).await;
    let entry = wait_for(
        &inbox,
        id,
        Duration::from_secs(10),
        status(InboxStatus::Dead),
    )
    .await;
    assert_eq!(entry.outcome.as_deref(), Some("given_up"));
    assert_eq!(entry.error_kind.as_deref(), Some("given_up"));
    assert_eq!(
        effects(inbox.pool(), id).await,
        1,
        "the handler's write is kept"
    );
    workers.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_deletion_supersedes_its_messages_edits_but_never_a_moderation_action() {
    let server = PostgresServer::start();
    let schedule = RetrySchedule::new()
        .first_delay(Duration::from_millis(1500))
        .jitter(0.0);
    let inbox = inbox(&server, schedule).await;
    let runs: Arc<Mutex<Vec<(String, u32)>>> = Arc::default();
    let seen = runs.clone();
    // Everything but the deletion fails on its first attempt.
    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        move |event: Delivery<Event>, tx: Tx| {
            let seen = seen.clone();
            async move {
                let attempt = event.attempt.unwrap_or(0);
                seen.lock()
                    .unwrap()
                    .push((event.event_type().to_owned(), attempt));
                insert_effect(&tx, event.id.as_str(), "ran").await?;
                if attempt == 1 && event.event_type() != "message.deleted" {
                    return Err(HandlerError::msg("not yet"));
                }
                HandlerResult::Ok(())
            }
        },
    );
    let workers = inbox
        .workers(webhooks)
        .poll_interval(Duration::from_millis(20))
        .start();
    let addr = ingest(&inbox).await;
    let message = "msg_flagged_then_deleted";
    let flagged = "evt_flag_it";
    let edited = "evt_edit_it";
    let deleted = "evt_delete_it";
    send_event(
        addr,
        flagged,
        "moderation.action",
        &moderation_of(flagged, message, "rude"),
    )
    .await;
    send_event(
        addr,
        edited,
        "message.updated",
        &message_event("message.updated", edited, message, "rude, edited", None),
    )
    .await;
    for id in [flagged, edited] {
        wait_for(&inbox, id, Duration::from_secs(5), |e| {
            e.attempts_ended == 1
        })
        .await;
    }
    send_event(
        addr,
        deleted,
        "message.deleted",
        &message_event("message.deleted", deleted, message, "", None),
    )
    .await;
    wait_for(
        &inbox,
        deleted,
        Duration::from_secs(5),
        status(InboxStatus::Done),
    )
    .await;
    let edit = wait_for(
        &inbox,
        edited,
        Duration::from_secs(5),
        status(InboxStatus::Done),
    )
    .await;
    assert_eq!(edit.outcome.as_deref(), Some("superseded"));
    let action = wait_for(
        &inbox,
        flagged,
        Duration::from_secs(10),
        status(InboxStatus::Done),
    )
    .await;
    assert_eq!(action.outcome.as_deref(), Some("handled"), "{action:?}");
    assert_eq!(
        action.body_len, None,
        "its body (the excerpt) went once handled"
    );
    let runs = runs.lock().unwrap().clone();
    assert_eq!(
        runs.iter()
            .filter(|(event_type, _)| event_type == "moderation.action")
            .count(),
        2,
        "the moderation action ran again after the deletion: {runs:?}"
    );
    assert_eq!(
        runs.iter()
            .filter(|(event_type, _)| event_type == "message.updated")
            .count(),
        1,
        "the superseded edit never ran again: {runs:?}"
    );
    workers.shutdown(Duration::from_secs(1)).await;
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn after_a_handled_deletion_no_table_holds_the_messages_text() {
    let server = PostgresServer::start();
    let inbox = inbox(
        &server,
        RetrySchedule::new().first_delay(Duration::from_millis(200)),
    )
    .await
    .keep_done_bodies(true);
    let reply_started = Arc::new(AtomicBool::new(false));
    let started = reply_started.clone();
    let webhooks = Webhooks::new()
        .on(
            EventSelector::AllKnown,
            move |event: Delivery<Event>, tx: Tx| {
                let started = started.clone();
                async move {
                    let text = text_of(&event);
                    if text.starts_with("quoting") {
                        // A reply, running while its quoted message is deleted.
                        started.store(true, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    if text.starts_with("Zebra") {
                        // PostgreSQL's error quotes the value: the text.
                        let mut conn = tx.conn().await?;
                        sqlx::query("SELECT $1::integer")
                            .bind(&text)
                            .execute(&mut *conn)
                            .await?;
                    }
                    HandlerResult::Ok(())
                }
            },
        )
        .on_malformed(|_| async { Err(HandlerError::msg("cannot read it yet")) });
    let workers = inbox
        .workers(webhooks)
        .concurrency(4)
        .poll_interval(Duration::from_millis(20))
        .start();
    let addr = ingest(&inbox).await;

    // 1. A message whose handler's error quotes it.
    let quoted_in_error = "Zebra quagga okapi";
    send_event(
        addr,
        "evt_err_created",
        "message.created",
        &message_event(
            "message.created",
            "evt_err_created",
            "msg_err",
            quoted_in_error,
            None,
        ),
    )
    .await;
    let failing = wait_for(&inbox, "evt_err_created", Duration::from_secs(5), |e| {
        e.last_error.is_some()
    })
    .await;
    assert!(
        failing
            .last_error
            .as_deref()
            .unwrap()
            .contains(quoted_in_error),
        "the error does quote the text: {failing:?}"
    );

    // 2. A message, kept once handled, and a reply quoting it that runs
    // while the message is deleted.
    let kept = "Narwhal ibex tapir";
    send_event(
        addr,
        "evt_kept_created",
        "message.created",
        &message_event(
            "message.created",
            "evt_kept_created",
            "msg_kept",
            kept,
            None,
        ),
    )
    .await;
    wait_for(
        &inbox,
        "evt_kept_created",
        Duration::from_secs(5),
        status(InboxStatus::Done),
    )
    .await;
    send_event(
        addr,
        "evt_kept_reply",
        "message.created",
        &message_event(
            "message.created",
            "evt_kept_reply",
            "msg_reply",
            "quoting you",
            Some(("msg_kept", kept)),
        ),
    )
    .await;
    let waited = Instant::now();
    while !reply_started.load(Ordering::SeqCst) {
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "the reply never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // 3. A malformed creation: its data does not fit the model.
    let malformed_text = "Quokka wombat dingo";
    let mut malformed: Value = serde_json::from_slice(&message_event(
        "message.created",
        "evt_malformed_created",
        "msg_malformed",
        malformed_text,
        None,
    ))
    .unwrap();
    malformed["data"]["message"]["created_at"] = json!(12);
    send_event(
        addr,
        "evt_malformed_created",
        "message.created",
        &serde_json::to_vec(&malformed).unwrap(),
    )
    .await;
    wait_for(
        &inbox,
        "evt_malformed_created",
        Duration::from_secs(5),
        |e| e.attempts_ended >= 1,
    )
    .await;

    // The deletions.
    for message in ["msg_err", "msg_kept", "msg_malformed", "msg_late"] {
        let id = format!("evt_delete_{message}");
        send_event(
            addr,
            &id,
            "message.deleted",
            &message_event("message.deleted", &id, message, "", None),
        )
        .await;
        wait_for(
            &inbox,
            &id,
            Duration::from_secs(5),
            status(InboxStatus::Done),
        )
        .await;
    }
    wait_for(
        &inbox,
        "evt_kept_reply",
        Duration::from_secs(5),
        status(InboxStatus::Done),
    )
    .await;

    // 4. A late first copy of a deleted message's creation.
    let late = "Axolotl pangolin";
    let reply = send_event(
        addr,
        "evt_late_created",
        "message.created",
        &message_event(
            "message.created",
            "evt_late_created",
            "msg_late",
            late,
            None,
        ),
    )
    .await;
    assert_eq!(reply.status, 202);
    let late_entry = inbox.get("evt_late_created").await.unwrap().unwrap();
    assert_eq!(
        (
            late_entry.status,
            late_entry.outcome.as_deref(),
            late_entry.body_len
        ),
        (InboxStatus::Done, Some("superseded"), None)
    );
    let superseded = inbox.get("evt_err_created").await.unwrap().unwrap();
    assert_eq!(superseded.outcome.as_deref(), Some("superseded"));
    assert_eq!(superseded.last_error, None);
    assert_eq!(
        superseded.error_kind.as_deref(),
        Some("failed"),
        "the error's kind stays"
    );

    let dump = server.dump_data("cariosan_webhooks");
    assert!(dump.contains("evt_kept_reply"), "the dump holds the rows");
    for text in [quoted_in_error, kept, malformed_text, late] {
        for word in text.split(' ') {
            assert!(!dump.contains(word), "the dump holds {word:?}:\n{dump}");
            assert!(
                !dump.to_lowercase().contains(&hex(word)),
                "the dump holds {word:?} in hex"
            );
        }
    }
    workers.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn generations_only_grow_across_failures_a_replay_and_a_shutdowns_cancel() {
    let server = PostgresServer::start();
    let schedule = RetrySchedule::new()
        .first_delay(Duration::from_millis(50))
        .cap(Duration::from_millis(50))
        .max_attempts(3);
    let inbox = inbox(&server, schedule).await;
    let seen: Arc<Mutex<Vec<u64>>> = Arc::default();
    let fixed = Arc::new(AtomicBool::new(false));
    let webhooks = {
        let (seen, fixed) = (seen.clone(), fixed.clone());
        Webhooks::new().on(EventSelector::AllKnown, move |event: Delivery<Event>| {
            let (seen, fixed) = (seen.clone(), fixed.clone());
            async move {
                seen.lock().unwrap().push(event.generation.unwrap());
                if text_of(&event) == "hang" {
                    std::future::pending::<()>().await;
                }
                if fixed.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(HandlerError::msg("broken"))
                }
            }
        })
    };
    let workers = inbox
        .workers(webhooks.clone())
        .poll_interval(Duration::from_millis(20))
        .start();
    let addr = ingest(&inbox).await;
    let id = "evt_generations";
    send_event(
        addr,
        id,
        "message.created",
        &message_with(id, "generations"),
    )
    .await;
    let dead = wait_for(
        &inbox,
        id,
        Duration::from_secs(10),
        status(InboxStatus::Dead),
    )
    .await;
    assert_eq!(dead.generation, 3);
    fixed.store(true, Ordering::SeqCst);
    inbox.replay(id).await.unwrap();
    let done = wait_for(
        &inbox,
        id,
        Duration::from_secs(10),
        status(InboxStatus::Done),
    )
    .await;
    assert_eq!(done.last_error, None, "a done row shows no earlier error");
    let generations = seen.lock().unwrap().clone();
    assert_eq!(&generations[..3], [1, 2, 3]);
    assert!(
        generations.len() == 4 && generations[3] > 3,
        "a replay does not reset it: {generations:?}"
    );

    let hung = "evt_generation_hangs";
    send_event(addr, hung, "message.created", &message_with(hung, "hang")).await;
    wait_for(&inbox, hung, Duration::from_secs(5), |e| e.attempts == 1).await;
    let stopped = workers.shutdown(Duration::from_millis(200)).await;
    assert_eq!(stopped.cancelled, 1);
    let cancelled = inbox.get(hung).await.unwrap().unwrap();
    assert_eq!(
        (cancelled.attempts, cancelled.generation),
        (0, 1),
        "the attempt is given back, the generation kept"
    );
    let workers = inbox
        .workers(webhooks)
        .poll_interval(Duration::from_millis(20))
        .start();
    let runs_before = seen.lock().unwrap().len();
    wait_for(&inbox, hung, Duration::from_secs(5), |e| e.attempts == 1).await;
    assert_eq!(inbox.get(hung).await.unwrap().unwrap().generation, 2);
    // The claim commits before its handler starts: wait for the handler.
    let started = Instant::now();
    while seen.lock().unwrap().len() == runs_before {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the run never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*seen.lock().unwrap().last().unwrap(), 2);
    workers.shutdown(Duration::from_millis(100)).await;
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
fn on_give_up_runs_after_its_process_died_between_the_dead_commit_and_the_hook() {
    let server = PostgresServer::start();
    let url = server.url();
    let id = "evt_hook_owed";
    let hook_started = Arc::new(AtomicBool::new(false));

    // The first "process": its own runtime and pool. The delivery dies on
    // its only attempt; the hook starts and never returns, and the runtime
    // is dropped under it, as an exit would.
    {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let started = hook_started.clone();
        runtime.block_on(async {
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .connect(&url)
                .await
                .unwrap();
            let inbox = Inbox::new(pool).retry(RetrySchedule::new().max_attempts(1));
            inbox.migrate().await.unwrap();
            let webhooks = Webhooks::new()
                .on_any(|_| async { Err(HandlerError::msg("always fails")) })
                .on_give_up(move |_| {
                    started.store(true, Ordering::SeqCst);
                    std::future::pending()
                });
            // Its hook's lease (the time limit, then 10 s) is what the
            // next process waits before it runs the hook again.
            let _workers = inbox
                .workers(webhooks)
                .max_run_time(Duration::from_secs(2))
                .poll_interval(Duration::from_millis(20))
                .start();
            let addr = ingest(&inbox).await;
            send_event(addr, id, "message.created", &message_with(id, "owed")).await;
            let waited = Instant::now();
            while !hook_started.load(Ordering::SeqCst) {
                assert!(
                    waited.elapsed() < Duration::from_secs(10),
                    "the hook never started"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let entry = inbox.get(id).await.unwrap().unwrap();
            assert_eq!(
                (entry.status, entry.give_up_pending),
                (InboxStatus::Dead, true)
            );
        });
        runtime.shutdown_timeout(Duration::from_millis(100));
    }

    // The restarted process runs the hook it owes, once.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let inbox = Inbox::new(server.pool(4).await).retry(RetrySchedule::new().max_attempts(1));
        inbox.migrate().await.unwrap();
        let hooks = Arc::new(AtomicUsize::new(0));
        let counted = hooks.clone();
        let webhooks = Webhooks::new()
            .on_any(|_| async { Ok(()) })
            .on_give_up(move |given_up| {
                assert_eq!(given_up.id.as_str(), id);
                counted.fetch_add(1, Ordering::SeqCst);
                async { Ok(()) }
            });
        let workers = inbox
            .workers(webhooks)
            .poll_interval(Duration::from_millis(50))
            .start();
        let entry = wait_for(&inbox, id, Duration::from_secs(20), |e| !e.give_up_pending).await;
        assert_eq!(entry.status, InboxStatus::Dead);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(hooks.load(Ordering::SeqCst), 1);
        workers.shutdown(Duration::from_secs(1)).await;
    });
}
