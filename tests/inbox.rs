//! The durable inbox on a real PostgreSQL: deliveries stored and
//! acknowledged at once, run by workers in each row's own transaction,
//! retried on the schedule, dead after the last attempt. Each test starts
//! its own cluster (`initdb`, `pg_ctl`) on a free port of 127.0.0.1.
#![cfg(feature = "postgres")]

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::dispatch::EventSelector;
use cariosan_webhooks::model::Event;
use cariosan_webhooks::store::postgres::sqlx::{self, PgPool};
use cariosan_webhooks::store::postgres::{
    Inbox, InboxEntry, InboxError, InboxStatus, ListFilter, ManualClock, RetrySchedule, Tx,
};
use cariosan_webhooks::test_util::TestDelivery;
use cariosan_webhooks::verification::VerificationLayer;
use cariosan_webhooks::{Delivery, HandlerError, HandlerResult, Webhooks};
use common::postgres_server::PostgresServer;
use common::process::ReceiverProcess;
use common::simulation::{deliver_all, webhooks_after, Tally};
use common::*;
use futures_util::StreamExt;
use time::OffsetDateTime;

/// A migrated inbox with an `effects` table beside it.
async fn inbox(server: &PostgresServer, size: u32) -> Inbox {
    let inbox = Inbox::new(server.pool(size).await);
    inbox.migrate().await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS effects (delivery_id text NOT NULL, attempt integer)")
        .execute(inbox.pool())
        .await
        .unwrap();
    inbox
}

async fn insert_effect(tx: &Tx, id: &str, attempt: Option<u32>) -> HandlerResult {
    let mut conn = tx.conn().await?;
    sqlx::query("INSERT INTO effects (delivery_id, attempt) VALUES ($1, $2)")
        .bind(id)
        .bind(attempt.map(|a| a as i32))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn effects(pool: &PgPool, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE delivery_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The ingest endpoint behind the verification layer, on 127.0.0.1.
async fn ingest(inbox: &Inbox) -> SocketAddr {
    serve(Router::new().route(
        "/webhooks/cariosan",
        post_service(inbox.service()).layer(VerificationLayer::new(SECRET)),
    ))
    .await
}

/// Polls `get` until `done` holds of the entry, for at most `within`.
async fn wait_for(
    inbox: &Inbox,
    id: &str,
    within: Duration,
    done: impl Fn(&InboxEntry) -> bool,
) -> InboxEntry {
    let started = Instant::now();
    loop {
        if let Some(entry) = inbox.get(id).await.unwrap() {
            if done(&entry) {
                return entry;
            }
            assert!(
                started.elapsed() < within,
                "waited {within:?}; the entry is {entry:?}"
            );
        } else {
            assert!(started.elapsed() < within, "no entry {id}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn is(status: InboxStatus) -> impl Fn(&InboxEntry) -> bool {
    move |entry| entry.status == status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn answers_in_under_a_second_while_the_handler_takes_three_and_runs_it_once() {
    let server = PostgresServer::start();
    let inbox = inbox(&server, 8).await;
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        move |event: Delivery<Event>, tx: Tx| {
            let runs = counted.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                insert_effect(&tx, event.id.as_str(), event.attempt).await?;
                tokio::time::sleep(Duration::from_secs(3)).await;
                HandlerResult::Ok(())
            }
        },
    );
    let workers = inbox.workers(webhooks).start();
    let addr = ingest(&inbox).await;
    let id = "evt_inbox_slow";
    let body = message_with(id, "slow");

    let sent = Instant::now();
    let reply = send_attempt(addr, id, 1, &body).await;
    let took = sent.elapsed();
    assert_eq!((reply.status, reply.body.as_str()), (202, "queued"));
    assert!(took < Duration::from_secs(1), "answered after {took:?}");
    let again = send_attempt(addr, id, 2, &body).await;
    assert_eq!((again.status, again.body.as_str()), (200, "duplicate"));

    let entry = wait_for(&inbox, id, Duration::from_secs(10), is(InboxStatus::Done)).await;
    assert!(sent.elapsed() >= Duration::from_secs(3));
    assert_eq!(entry.attempts, 1);
    assert_eq!(entry.outcome.as_deref(), Some("handled"));
    assert_eq!(entry.body_len, None, "a handled delivery's body is dropped");
    assert_eq!(
        entry.sender_attempt,
        Some(1),
        "the first copy is the one stored"
    );
    assert_eq!(effects(inbox.pool(), id).await, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cariosan_webhooks.inbox")
        .fetch_one(inbox.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1, "the copy added no row");
    let stopped = workers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(stopped.cancelled, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_failing_handler_is_retried_on_the_schedule_and_its_bookkeeping_outlives_the_rollback() {
    let server = PostgresServer::start();
    let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let clock = ManualClock::new(start);
    let schedule = RetrySchedule::new()
        .first_delay(Duration::from_secs(10))
        .jitter(0.0);
    let inbox = inbox(&server, 8).await.clock(clock.clone()).retry(schedule);
    // Fails on its first three runs, after writing; then succeeds.
    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        |event: Delivery<Event>, tx: Tx| async move {
            insert_effect(&tx, event.id.as_str(), event.attempt).await?;
            match event.attempt {
                Some(n @ 1..=3) => Err(HandlerError::msg(format!("failure number {n}"))),
                _ => Ok(()),
            }
        },
    );
    let workers = inbox
        .workers(webhooks)
        .poll_interval(Duration::from_millis(20))
        .start();
    let id = "evt_inbox_fails_three_times";
    let delivery = TestDelivery::json(message_with(id, "fails"))
        .secret(SECRET)
        .verify()
        .unwrap();
    assert!(inbox
        .ingest(&delivery, &message_with(id, "fails"))
        .await
        .unwrap());

    let mut now = start;
    for (attempt, wait) in [(1u32, 10u64), (2, 20), (3, 40)] {
        let entry = wait_for(&inbox, id, Duration::from_secs(10), |e| {
            e.attempts == attempt && e.attempts_ended == attempt
        })
        .await;
        assert_eq!(entry.status, InboxStatus::Queued);
        assert_eq!(
            entry.last_error.as_deref(),
            Some(format!("failure number {attempt}").as_str())
        );
        assert_eq!(
            entry.due_at,
            now + Duration::from_secs(wait),
            "after failed attempt {attempt}"
        );
        assert!(entry.body_len.is_some(), "a queued delivery keeps its body");
        assert_eq!(
            effects(inbox.pool(), id).await,
            0,
            "the failed run's effects rolled back"
        );
        // Not due before its time: a second later nothing has run.
        clock.set(entry.due_at - Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert_eq!(inbox.get(id).await.unwrap().unwrap().attempts, attempt);
        now = entry.due_at;
        clock.set(now);
    }
    let entry = wait_for(&inbox, id, Duration::from_secs(10), is(InboxStatus::Done)).await;
    assert_eq!(entry.attempts, 4);
    assert_eq!(entry.finished_at, Some(now));
    assert_eq!(effects(inbox.pool(), id).await, 1);
    let attempt: Option<i32> =
        sqlx::query_scalar("SELECT attempt FROM effects WHERE delivery_id = $1")
            .bind(id)
            .fetch_one(inbox.pool())
            .await
            .unwrap();
    assert_eq!(attempt, Some(4), "handlers see the inbox's attempt");
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn an_always_failing_handler_ends_dead_with_its_error_and_a_replay_runs_it_once_fixed() {
    let server = PostgresServer::start();
    let inbox = inbox(&server, 8).await.retry(
        RetrySchedule::new()
            .first_delay(Duration::from_millis(5))
            .max_attempts(3),
    );
    let broken = Arc::new(AtomicBool::new(true));
    let given_up = Arc::new(Mutex::new(Vec::new()));
    let (flag, reported) = (broken.clone(), given_up.clone());
    let webhooks = Webhooks::new()
        .on(
            EventSelector::AllKnown,
            move |event: Delivery<Event>, tx: Tx| {
                let broken = flag.load(Ordering::SeqCst);
                async move {
                    insert_effect(&tx, event.id.as_str(), event.attempt).await?;
                    if broken {
                        return Err(HandlerError::msg("the mentions table is missing"));
                    }
                    HandlerResult::Ok(())
                }
            },
        )
        .on_give_up(move |dead| {
            let reported = reported.clone();
            async move {
                reported.lock().unwrap().push((
                    dead.id.to_string(),
                    dead.attempt,
                    dead.error.to_string(),
                ));
                Ok(())
            }
        });
    let workers = inbox
        .workers(webhooks)
        .poll_interval(Duration::from_millis(10))
        .start();
    let addr = ingest(&inbox).await;
    let id = "evt_inbox_always_fails";
    assert_eq!(
        send_attempt(addr, id, 1, &message_with(id, "x"))
            .await
            .status,
        202
    );

    let dead = wait_for(&inbox, id, Duration::from_secs(10), is(InboxStatus::Dead)).await;
    assert_eq!(dead.attempts, 3);
    assert_eq!(dead.outcome.as_deref(), Some("failed"));
    assert_eq!(
        dead.last_error.as_deref(),
        Some("the mentions table is missing")
    );
    assert!(dead.body_len.is_some(), "a dead delivery keeps its body");
    assert_eq!(effects(inbox.pool(), id).await, 0);
    assert_eq!(
        *given_up.lock().unwrap(),
        [(
            id.to_owned(),
            Some(3),
            "the mentions table is missing".to_owned()
        )]
    );
    let listed = inbox
        .list(ListFilter::status(InboxStatus::Dead))
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id);

    broken.store(false, Ordering::SeqCst);
    inbox.replay(id).await.unwrap();
    let done = wait_for(&inbox, id, Duration::from_secs(10), is(InboxStatus::Done)).await;
    assert_eq!(done.attempts, 1, "a replay starts with fresh attempts");
    assert_eq!(effects(inbox.pool(), id).await, 1);
    assert!(
        matches!(inbox.replay(id).await, Err(InboxError::NoBody(_))),
        "its body went when it was handled"
    );
    assert!(matches!(
        inbox.replay("evt_nobody").await,
        Err(InboxError::NotFound(_))
    ));
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_run_past_max_run_time_is_cancelled_rolled_back_and_counted() {
    let server = PostgresServer::start();
    let inbox = inbox(&server, 8)
        .await
        .retry(RetrySchedule::new().max_attempts(1));
    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        |event: Delivery<Event>, tx: Tx| async move {
            insert_effect(&tx, event.id.as_str(), event.attempt).await?;
            tokio::time::sleep(Duration::from_secs(30)).await;
            HandlerResult::Ok(())
        },
    );
    let workers = inbox
        .workers(webhooks)
        .max_run_time(Duration::from_millis(300))
        .start();
    let id = "evt_inbox_hangs";
    let body = message_with(id, "hangs");
    let delivery = TestDelivery::json(body.clone())
        .secret(SECRET)
        .verify()
        .unwrap();
    inbox.ingest(&delivery, &body).await.unwrap();
    let dead = wait_for(&inbox, id, Duration::from_secs(10), is(InboxStatus::Dead)).await;
    assert!(
        dead.last_error.as_deref().unwrap().contains("max_run_time"),
        "{dead:?}"
    );
    assert_eq!(effects(inbox.pool(), id).await, 0);
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn shutdown_stops_claiming_and_rolls_back_what_runs_past_the_deadline() {
    let server = PostgresServer::start();
    let inbox = inbox(&server, 8).await;
    let started = Arc::new(AtomicUsize::new(0));
    let counted = started.clone();
    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        move |event: Delivery<Event>, tx: Tx| {
            let started = counted.clone();
            async move {
                insert_effect(&tx, event.id.as_str(), event.attempt).await?;
                started.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_secs(30)).await;
                HandlerResult::Ok(())
            }
        },
    );
    let workers = inbox.workers(webhooks).concurrency(1).start();
    for id in ["evt_inbox_stop_1", "evt_inbox_stop_2"] {
        let body = message_with(id, "stop");
        let delivery = TestDelivery::json(body.clone())
            .secret(SECRET)
            .verify()
            .unwrap();
        inbox.ingest(&delivery, &body).await.unwrap();
    }
    let began = Instant::now();
    while started.load(Ordering::SeqCst) == 0 {
        assert!(began.elapsed() < Duration::from_secs(10));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = Instant::now();
    let stopped = workers.shutdown(Duration::from_millis(200)).await;
    assert!(stopping.elapsed() < Duration::from_secs(3));
    assert_eq!(stopped.cancelled, 1);
    assert_eq!(
        started.load(Ordering::SeqCst),
        1,
        "nothing claimed after the stop"
    );
    let queued = inbox
        .list(ListFilter::status(InboxStatus::Queued))
        .await
        .unwrap();
    assert_eq!(queued.len(), 2);
    assert!(
        queued.iter().all(|e| e.attempts == 0),
        "a cancelled run gives its attempt back: {queued:?}"
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM effects")
        .fetch_one(inbox.pool())
        .await
        .unwrap();
    assert_eq!(rows, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn bodies_go_once_handled_and_a_message_deleted_leaves_no_row_with_its_text() {
    let server = PostgresServer::start();
    let inbox = inbox(&server, 8)
        .await
        .retry(RetrySchedule::new().max_attempts(1));
    // The edit fails, so its row is dead and keeps its body until the
    // deletion; everything else succeeds.
    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        |event: Delivery<Event>, tx: Tx| async move {
            insert_effect(&tx, event.id.as_str(), event.attempt).await?;
            if event.event_type() == "message.updated" {
                return Err(HandlerError::msg("edits are broken"));
            }
            HandlerResult::Ok(())
        },
    );
    let workers = inbox
        .workers(webhooks)
        .poll_interval(Duration::from_millis(10))
        .start();
    let addr = ingest(&inbox).await;
    let text = "pesanan saya";
    let deliveries = [
        (
            "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A",
            "message.created",
            "events/message.created.json",
        ),
        (
            "evt_01JDB7R0AAAAAAAAAAAAAAAAAA",
            "message.created",
            "events/message.created.reply.json",
        ),
        (
            "evt_01JDB7T3UPDATEUPDATEUPD01",
            "message.updated",
            "events/message.updated.json",
        ),
    ];
    for (id, event_type, path) in deliveries {
        let body = fixture(path);
        assert!(
            String::from_utf8_lossy(&body).contains(text),
            "{path} quotes the text"
        );
        assert_eq!(send_signed(addr, id, event_type, &body).await.status, 202);
    }
    let created = wait_for(
        &inbox,
        deliveries[0].0,
        Duration::from_secs(10),
        is(InboxStatus::Done),
    )
    .await;
    assert_eq!(created.body_len, None, "no body once handled");
    assert_eq!(inbox.body(deliveries[0].0).await.unwrap(), None);
    wait_for(
        &inbox,
        deliveries[1].0,
        Duration::from_secs(10),
        is(InboxStatus::Done),
    )
    .await;
    let edit = wait_for(
        &inbox,
        deliveries[2].0,
        Duration::from_secs(10),
        is(InboxStatus::Dead),
    )
    .await;
    assert!(edit.body_len.is_some());
    let holding = |pool: PgPool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT delivery_id FROM cariosan_webhooks.inbox_bodies WHERE position(convert_to($1, 'UTF8') in body) > 0",
        )
        .bind(text)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    assert_eq!(holding(inbox.pool().clone()).await, [deliveries[2].0]);

    let deleted = "evt_01JDB7U4DELETEDELETEDEL01";
    let reply = send_signed(
        addr,
        deleted,
        "message.deleted",
        &fixture("events/message.deleted.json"),
    )
    .await;
    assert_eq!(reply.status, 202);
    wait_for(
        &inbox,
        deleted,
        Duration::from_secs(10),
        is(InboxStatus::Done),
    )
    .await;
    assert_eq!(
        holding(inbox.pool().clone()).await,
        Vec::<String>::new(),
        "no row holds the deleted message's text"
    );
    let edit = inbox.get(deliveries[2].0).await.unwrap().unwrap();
    assert_eq!((edit.status, edit.body_len), (InboxStatus::Dead, None));
    assert!(matches!(
        inbox.replay(deliveries[2].0).await,
        Err(InboxError::NoBody(_))
    ));
    workers.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_kept_body_can_be_purged_and_a_purged_queued_delivery_is_dead() {
    let server = PostgresServer::start();
    let inbox = inbox(&server, 4).await.keep_done_bodies(true);
    let (webhooks, runs) = counting_webhooks();
    let id = "evt_inbox_kept";
    let body = message_with(id, "kept");
    let delivery = TestDelivery::json(body.clone())
        .secret(SECRET)
        .verify()
        .unwrap();
    inbox.ingest(&delivery, &body).await.unwrap();
    // Purged before any worker ran it: nothing can run, so it is dead.
    assert!(inbox.purge(id).await.unwrap());
    let entry = inbox.get(id).await.unwrap().unwrap();
    assert_eq!((entry.status, entry.body_len), (InboxStatus::Dead, None));
    assert!(!inbox.purge(id).await.unwrap(), "nothing left to purge");

    let other = "evt_inbox_kept_2";
    let body = message_with(other, "kept");
    let delivery = TestDelivery::json(body.clone())
        .secret(SECRET)
        .verify()
        .unwrap();
    inbox.ingest(&delivery, &body).await.unwrap();
    let workers = inbox.workers(webhooks).start();
    let done = wait_for(
        &inbox,
        other,
        Duration::from_secs(10),
        is(InboxStatus::Done),
    )
    .await;
    assert_eq!(done.body_len, Some(body.len()), "kept for replay");
    assert_eq!(inbox.body(other).await.unwrap().as_deref(), Some(&body[..]));
    inbox.replay(other).await.unwrap();
    wait_for(&inbox, other, Duration::from_secs(10), |e| {
        e.status == InboxStatus::Done && e.attempts == 1 && e.finished_at.is_some()
    })
    .await;
    assert!(inbox.purge(other).await.unwrap());
    assert_eq!(inbox.body(other).await.unwrap(), None);
    workers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2, "once, and once replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn ingest_answers_503_and_acknowledges_nothing_when_postgresql_is_down() {
    let server = PostgresServer::start();
    let inbox = inbox(&server, 2)
        .await
        .acquire_timeout(Duration::from_millis(500));
    let addr = ingest(&inbox).await;
    server.stop_fast();
    let id = "evt_inbox_down";
    let reply = send_attempt(addr, id, 1, &message_with(id, "down")).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "store_unavailable")
    );
    server.start_again();
    let started = Instant::now();
    let reply = loop {
        let reply = send_attempt(addr, id, 2, &message_with(id, "down")).await;
        if reply.status != 503 || started.elapsed() > Duration::from_secs(10) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((reply.status, reply.body.as_str()), (202, "queued"));
    assert_eq!(
        inbox.get(id).await.unwrap().unwrap().sender_attempt,
        Some(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn two_replicas_with_four_workers_each_drain_five_thousand_once_each() {
    const DELIVERIES: usize = 5_000;
    let server = PostgresServer::start();
    let first = inbox(&server, 4).await;
    let template = fixture("events/message.created.json");
    futures_util::stream::iter(0..DELIVERIES)
        .for_each_concurrent(16, |n| {
            let (inbox, template) = (first.clone(), template.clone());
            async move {
                let body = with_id(&template, &format!("evt_drain_{n:05}"));
                let delivery = TestDelivery::json(body.clone())
                    .secret(SECRET)
                    .verify()
                    .unwrap();
                assert!(inbox.ingest(&delivery, &body).await.unwrap());
            }
        })
        .await;
    let in_flight = Arc::new(Mutex::new(HashSet::new()));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let inbox = inbox(&server, 6).await;
        let (in_flight, overlaps) = (in_flight.clone(), overlaps.clone());
        let webhooks = Webhooks::new().on(
            EventSelector::AllKnown,
            move |event: Delivery<Event>, tx: Tx| {
                let (in_flight, overlaps) = (in_flight.clone(), overlaps.clone());
                async move {
                    let id = event.id.to_string();
                    if !in_flight.lock().unwrap().insert(id.clone()) {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    let result = insert_effect(&tx, &id, event.attempt).await;
                    tokio::task::yield_now().await;
                    in_flight.lock().unwrap().remove(&id);
                    result
                }
            },
        );
        replicas.push(inbox.workers(webhooks).concurrency(4).start());
    }
    let started = Instant::now();
    loop {
        let queued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM cariosan_webhooks.inbox WHERE status <> 'done'",
        )
        .fetch_one(first.pool())
        .await
        .unwrap();
        if queued == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "{queued} not done"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let took = started.elapsed();
    for replica in replicas {
        replica.shutdown(Duration::from_secs(5)).await;
    }
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT delivery_id, count(*) FROM effects GROUP BY delivery_id")
            .fetch_all(first.pool())
            .await
            .unwrap();
    assert_eq!(counts.len(), DELIVERIES);
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        doubled.is_empty(),
        "rows per delivery other than one: {doubled:?}"
    );
    assert_eq!(
        overlaps.load(Ordering::SeqCst),
        0,
        "a row ran on two workers at once"
    );
    let again: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT delivery_id, attempts, last_error FROM cariosan_webhooks.inbox WHERE attempts <> 1",
    )
    .fetch_all(first.pool())
    .await
    .unwrap();
    assert!(again.is_empty(), "one attempt each: {again:?}");
    eprintln!(
        "{DELIVERIES} deliveries drained by 2 x 4 workers in {took:?} ({:.0}/s)",
        DELIVERIES as f64 / took.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn ten_thousand_deliveries_through_two_inbox_replicas() {
    const DELIVERIES: usize = 10_000;
    let server = PostgresServer::start();
    let tally = Arc::new(Tally::default());
    let schedule = RetrySchedule::new()
        .first_delay(Duration::from_millis(5))
        .cap(Duration::from_millis(50));
    let mut replicas = Vec::new();
    let mut workers = Vec::new();
    for _ in 0..2 {
        let inbox = inbox(&server, 24).await.retry(schedule);
        let first = Webhooks::new().on(
            EventSelector::AllKnown,
            |event: Delivery<Event>, tx: Tx| async move {
                insert_effect(&tx, event.id.as_str(), event.attempt).await
            },
        );
        workers.push(
            inbox
                .workers(webhooks_after(first, tally.clone()))
                .concurrency(4)
                .poll_interval(Duration::from_millis(20))
                .start(),
        );
        replicas.push(ingest(&inbox).await);
    }
    let report = deliver_all(&replicas, tally.clone(), DELIVERIES, 64).await;
    assert_eq!(report.acknowledged, DELIVERIES, "{report:?}");
    assert!(report.never_acknowledged.is_empty(), "{report:?}");
    assert!(report.redeliveries_not_duplicate.is_empty(), "{report:?}");
    let check = server.pool(2).await;
    let started = Instant::now();
    loop {
        let queued: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM cariosan_webhooks.inbox WHERE status = 'queued'",
        )
        .fetch_one(&check)
        .await
        .unwrap();
        if queued == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "{queued} still queued"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for handle in workers {
        handle.shutdown(Duration::from_secs(5)).await;
    }
    let statuses: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, count(*) FROM cariosan_webhooks.inbox GROUP BY status")
            .fetch_all(&check)
            .await
            .unwrap();
    let dead: Vec<(String, i32, Option<String>)> = sqlx::query_as(
        "SELECT delivery_id, attempts, last_error FROM cariosan_webhooks.inbox WHERE status <> 'done'",
    )
    .fetch_all(&check)
    .await
    .unwrap();
    assert_eq!(
        statuses,
        [("done".to_owned(), DELIVERIES as i64)],
        "every acknowledged delivery handled: {dead:?}"
    );
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT delivery_id, count(*) FROM effects GROUP BY delivery_id")
            .fetch_all(&check)
            .await
            .unwrap();
    assert_eq!(counts.len(), DELIVERIES, "every delivery has its row");
    let doubled: Vec<_> = counts.iter().filter(|(_, n)| *n != 1).collect();
    assert!(
        doubled.is_empty(),
        "rows per delivery other than one: {doubled:?}"
    );
    for n in 0..DELIVERIES {
        assert_eq!(tally.successes(&format!("evt_sim_{n:05}")), 1);
    }
    assert_eq!(tally.overlapping_runs.load(Ordering::SeqCst), 0);
    eprintln!(
        "{} requests, {} handler runs, {DELIVERIES} deliveries with one row each",
        report.requests,
        tally.runs.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_receiver_killed_mid_handler_handles_the_row_once_after_a_restart() {
    let server = PostgresServer::start();
    let url = server.url();
    let inbox_env = [
        ("DATABASE_URL", url.as_str()),
        ("CARIOSAN_WEBHOOK_MODE", "inbox"),
        ("CARIOSAN_INBOX_FIRST_RETRY_MS", "50"),
        ("CARIOSAN_INBOX_POLL_MS", "20"),
    ];
    let mut slow_env = inbox_env.to_vec();
    slow_env.push(("CARIOSAN_DEMO_DELAY_MS", "5000"));
    let mut slow = ReceiverProcess::start(&slow_env);
    let id = "evt_01JDB844PINGPINGPINGPIN01";
    let body = fixture("events/webhook.ping.json");
    let reply = send_signed(slow.addr, id, "webhook.ping", &body).await;
    assert_eq!((reply.status, reply.body.as_str()), (202, "queued"));
    let check = server.pool(2).await;
    // Wait until the row's transaction has written the application's row.
    let started = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND backend_xid IS NOT NULL",
        )
        .fetch_one(&check)
        .await
        .unwrap();
        if open > 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the handler never wrote"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::block_in_place(|| slow.kill());
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM receiver_effects WHERE delivery_id = $1")
            .bind(id)
            .fetch_one(&check)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 0);
    let fresh = ReceiverProcess::start(&inbox_env);
    let line = tokio::task::block_in_place(|| fresh.line(Duration::from_secs(15)));
    assert!(
        line.as_deref()
            .is_some_and(|l| l.starts_with("handled webhook.ping")),
        "{line:?}"
    );
    // The line is printed inside the run, before its commit.
    let started = Instant::now();
    while sqlx::query_scalar::<_, String>(
        "SELECT status FROM cariosan_webhooks.inbox WHERE delivery_id = $1",
    )
    .bind(id)
    .fetch_one(&check)
    .await
    .unwrap()
        != "done"
    {
        assert!(started.elapsed() < Duration::from_secs(10), "never done");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let attempts: (String, i32, Option<String>) = sqlx::query_as(
        "SELECT status, attempts, last_error FROM cariosan_webhooks.inbox WHERE delivery_id = $1",
    )
    .bind(id)
    .fetch_one(&check)
    .await
    .unwrap();
    assert_eq!(attempts.0, "done");
    assert_eq!(attempts.1, 2, "the killed run used an attempt");
    assert_eq!(
        attempts.2, None,
        "a done row keeps no earlier attempt's error"
    );
    assert_eq!(count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_handler_that_aborts_its_process_every_time_ends_dead_after_the_last_attempt() {
    let server = PostgresServer::start();
    let url = server.url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("CARIOSAN_WEBHOOK_MODE", "inbox"),
        ("CARIOSAN_INBOX_FIRST_RETRY_MS", "20"),
        ("CARIOSAN_INBOX_MAX_ATTEMPTS", "3"),
        ("CARIOSAN_INBOX_POLL_MS", "20"),
        ("CARIOSAN_DEMO_ABORT", "1"),
    ];
    let mut receiver = ReceiverProcess::start(&env);
    let id = "evt_01JDB844PINGPINGPINGPIN01";
    let reply = send_signed(
        receiver.addr,
        id,
        "webhook.ping",
        &fixture("events/webhook.ping.json"),
    )
    .await;
    assert_eq!(reply.status, 202);
    let check = server.pool(2).await;
    let status = || async {
        sqlx::query_as::<_, (String, i32, Option<String>)>(
            "SELECT status, attempts, last_error FROM cariosan_webhooks.inbox WHERE delivery_id = $1",
        )
        .bind(id)
        .fetch_one(&check)
        .await
        .unwrap()
    };
    let mut crashes = 0;
    loop {
        let exited = tokio::task::block_in_place(|| receiver.wait_exit(Duration::from_secs(1)));
        if let Some(exit) = exited {
            assert!(!exit.success(), "the handler aborts the process");
            crashes += 1;
            assert!(crashes <= 3, "crashed {crashes} times");
            receiver = ReceiverProcess::start(&env);
        }
        if status().await.0 == "dead" {
            break;
        }
    }
    let (state, attempts, error) = status().await;
    assert_eq!((state.as_str(), attempts, crashes), ("dead", 3, 3));
    assert!(error.unwrap().contains("attempt 3 did not finish"));
    let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM receiver_effects")
        .fetch_one(&check)
        .await
        .unwrap();
    assert_eq!(effects, 0, "every crashed run rolled back");
    assert!(
        tokio::task::block_in_place(|| receiver.wait_exit(Duration::from_millis(500))).is_none(),
        "a dead delivery no longer crashes the receiver"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn bodies_stored_in_the_rows_before_version_5_move_to_their_table_and_still_run() {
    let server = PostgresServer::start();
    let inbox = inbox(&server, 8).await;
    let pool = inbox.pool().clone();
    // The schema as version 4 left it: each row's body in the row itself.
    sqlx::raw_sql(
        "DROP TABLE cariosan_webhooks.inbox_bodies;
         DROP FUNCTION cariosan_webhooks.deletion_recorded;
         ALTER TABLE cariosan_webhooks.inbox ADD COLUMN body bytea;
         DELETE FROM cariosan_webhooks.schema_migrations WHERE version = 5;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (queued, done) = (
        "evt_01JDB7U4QUEUEDBEFOREV5AA",
        "evt_01JDB7U4DONEBEFOREV5AAAA",
    );
    let body = message_with(queued, "stored by 0.x");
    for (id, status, body) in [(queued, "queued", Some(body.clone())), (done, "done", None)] {
        sqlx::query(
            "INSERT INTO cariosan_webhooks.inbox (delivery_id, event_type, message_ids, body, \
               signed_at, due_at, status) VALUES ($1, 'message.created', ARRAY['msg_1'], $2, $3, now(), $4)",
        )
        .bind(id)
        .bind(body)
        .bind(now())
        .bind(status)
        .execute(&pool)
        .await
        .unwrap();
    }

    inbox.migrate().await.unwrap();
    let column: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM information_schema.columns \
         WHERE table_schema = 'cariosan_webhooks' AND table_name = 'inbox' AND column_name = 'body'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(column, 0, "the rows no longer hold bodies");
    assert_eq!(
        inbox.body(queued).await.unwrap().as_deref(),
        Some(&body[..])
    );
    assert_eq!(inbox.body(done).await.unwrap(), None);
    assert_eq!(inbox.get(done).await.unwrap().unwrap().body_len, None);

    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        |event: Delivery<Event>, tx: Tx| async move {
            insert_effect(&tx, event.id.as_str(), event.attempt).await
        },
    );
    let workers = inbox.workers(webhooks).start();
    let entry = wait_for(
        &inbox,
        queued,
        Duration::from_secs(10),
        is(InboxStatus::Done),
    )
    .await;
    workers.shutdown(Duration::from_secs(5)).await;
    assert_eq!(entry.attempts, 1);
    assert_eq!(effects(&pool, queued).await, 1);
    assert_eq!(
        inbox.body(queued).await.unwrap(),
        None,
        "a handled row's body is dropped, from the bodies' table"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn prune_deletes_rows_past_their_retention_with_their_bodies_and_keeps_the_rest() {
    let server = PostgresServer::start();
    let start = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
    let clock = ManualClock::new(start);
    let inbox = inbox(&server, 8)
        .await
        .clock(clock.clone())
        .keep_done_bodies(true)
        .retry(RetrySchedule::new().max_attempts(1))
        .done_retention(Duration::from_secs(3 * 24 * 3600))
        .dead_retention(Duration::from_secs(7 * 24 * 3600));
    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        |event: Delivery<Event>| async move {
            match event.id.as_str() {
                "evt_prune_dies" => Err(HandlerError::msg("always")),
                _ => Ok(()),
            }
        },
    );
    let workers = inbox
        .workers(webhooks)
        .poll_interval(Duration::from_millis(20))
        .start();
    for id in ["evt_prune_done", "evt_prune_dies"] {
        let body = message_with(id, "text to prune");
        let delivery = TestDelivery::json(body.clone())
            .secret(SECRET)
            .verify()
            .unwrap();
        assert!(inbox.ingest(&delivery, &body).await.unwrap());
    }
    wait_for(
        &inbox,
        "evt_prune_done",
        Duration::from_secs(10),
        is(InboxStatus::Done),
    )
    .await;
    wait_for(
        &inbox,
        "evt_prune_dies",
        Duration::from_secs(10),
        is(InboxStatus::Dead),
    )
    .await;
    workers.shutdown(Duration::from_secs(5)).await;
    let bodies = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM cariosan_webhooks.inbox_bodies")
            .fetch_one(inbox.pool())
            .await
            .unwrap()
    };
    assert_eq!(bodies().await, 2, "a kept done body and a dead row's body");

    let pruned = inbox.prune().await.unwrap();
    assert_eq!(
        (pruned.done, pruned.dead),
        (0, 0),
        "nothing is past its retention yet"
    );

    clock.advance(Duration::from_secs(4 * 24 * 3600));
    let pruned = inbox.prune().await.unwrap();
    assert_eq!((pruned.done, pruned.dead), (1, 0));
    assert!(inbox.get("evt_prune_done").await.unwrap().is_none());
    assert_eq!(bodies().await, 1, "the done row's body went with it");

    clock.advance(Duration::from_secs(4 * 24 * 3600));
    let pruned = inbox.prune().await.unwrap();
    assert_eq!((pruned.done, pruned.dead), (0, 1));
    assert!(inbox.get("evt_prune_dies").await.unwrap().is_none());
    assert_eq!(bodies().await, 0, "no body outlives its row");
}

/// The advisory key a deletion of `message` holds (no tenant), as the
/// crate computes it.
const DELETION_LOCK: &str =
    "pg_catalog.hashtextextended('cariosan-webhooks deleted ' || 'cariosan_webhooks' \
     || pg_catalog.chr(31) || '' || pg_catalog.chr(31) || $1, 0)";

/// A transaction on `pool` holding the deletion lock of `message`, as a
/// deletion being recorded does.
async fn holding_deletion_lock(
    pool: &PgPool,
    message: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut deletion = pool.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT pg_catalog.pg_advisory_xact_lock({DELETION_LOCK})"
    ))
    .bind(message)
    .execute(&mut *deletion)
    .await
    .unwrap();
    deletion
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_copy_stored_while_its_messages_deletion_commits_is_stored_without_its_text() {
    let server = PostgresServer::start();
    copy_stored_while_its_messages_deletion_commits(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn under_a_repeatable_read_default_a_copy_stored_while_its_deletion_commits_is_stored_without_its_text(
) {
    let server = PostgresServer::start();
    sqlx::query("ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'")
        .execute(&server.pool(1).await)
        .await
        .unwrap();
    copy_stored_while_its_messages_deletion_commits(&server).await;
}

/// A deletion of the fixture's message recorded and holding its lock,
/// a copy of its creation ingested meanwhile, then the deletion committed.
async fn copy_stored_while_its_messages_deletion_commits(server: &PostgresServer) {
    let inbox = inbox(server, 4).await;
    let deleting = server.pool(1).await;
    let message = "msg_01JDB7Q3M0";
    // A deletion of the message, recorded and holding its lock, not committed.
    let mut deletion = holding_deletion_lock(&deleting, message).await;
    sqlx::query(
        "INSERT INTO cariosan_webhooks.deleted_messages (tenant, message_id, deleted_at) VALUES ('', $1, now())",
    )
    .bind(message)
    .execute(&mut *deletion)
    .await
    .unwrap();

    let id = "evt_01JDB7U4COPYDURINGDELETE";
    let body = message_with(id, "a text that was deleted");
    let delivery = TestDelivery::json(body.clone())
        .secret(SECRET)
        .verify()
        .unwrap();
    let storing = tokio::spawn({
        let inbox = inbox.clone();
        async move { inbox.ingest(&delivery, &body).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!storing.is_finished(), "the ingest waits for the deletion");
    deletion.commit().await.unwrap();

    assert!(storing.await.unwrap().unwrap(), "stored, as a new row");
    let entry = inbox.get(id).await.unwrap().unwrap();
    assert_eq!(entry.status, InboxStatus::Done);
    assert_eq!(entry.outcome.as_deref(), Some("superseded"));
    assert_eq!(entry.body_len, None);
    assert_eq!(
        inbox.body(id).await.unwrap(),
        None,
        "its text was never stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn an_ingest_cut_off_mid_statement_closes_its_connection_and_the_pool_still_works() {
    let server = PostgresServer::start();
    // One connection: the application's next statement gets the one the
    // cut-off ingest used, or a new one if that was closed.
    let inbox = Inbox::new(server.pool(1).await).acquire_timeout(Duration::from_millis(500));
    inbox.migrate().await.unwrap();
    let blocker = server.pool(1).await;
    let message = "msg_01JDB7Q3M0";
    let deletion = holding_deletion_lock(&blocker, message).await;

    let id = "evt_01JDB7U4CUTOFFINGESTAAAA";
    let body = message_with(id, "cut off");
    let delivery = TestDelivery::json(body.clone())
        .secret(SECRET)
        .verify()
        .unwrap();
    let started = Instant::now();
    let refused = inbox.ingest(&delivery, &body).await;
    assert!(refused.is_err(), "not acknowledged: {refused:?}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // The statement still runs on the server; its connection is not the
    // pool's any more, so the application's statements answer at once.
    let answered = tokio::time::timeout(Duration::from_secs(2), async {
        for n in 0..3 {
            let one: i32 = sqlx::query_scalar("SELECT $1")
                .bind(n)
                .fetch_one(inbox.pool())
                .await
                .unwrap();
            assert_eq!(one, n);
        }
    })
    .await;
    assert!(
        answered.is_ok(),
        "the pool's connection was left waiting on the cut-off statement"
    );
    // Nor does the statement wait on the server past the acquire timeout,
    // while the deletion still holds its lock.
    let watcher = server.pool(1).await;
    let waiting = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity \
             WHERE wait_event_type = 'Lock' AND query LIKE '%deletion_recorded%'",
        )
        .fetch_one(&watcher)
        .await
        .unwrap()
    };
    let cut_off = Instant::now();
    while waiting().await > 0 {
        assert!(
            cut_off.elapsed() < Duration::from_secs(3),
            "the cut-off ingest still waits on the server"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    deletion.commit().await.unwrap();

    // The server may have finished the cut-off statement after all: the
    // sender's retry then finds it, or else stores it; one row either way.
    inbox.ingest(&delivery, &body).await.unwrap();
    let stored = inbox.get(id).await.unwrap().unwrap();
    assert_eq!(stored.status, InboxStatus::Queued);
    assert_eq!(stored.body_len, Some(body.len()));
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM cariosan_webhooks.inbox")
        .fetch_one(inbox.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1);
}
