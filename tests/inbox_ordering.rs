//! Ordered processing in the inbox, on a real PostgreSQL: deliveries that
//! share a key run one at a time in `created_at` order, keys run in
//! parallel, late deliveries are stale or superseded, a failing or dead
//! predecessor holds only its own key, and a replica killed mid-run keeps
//! its key's order.
#![cfg(feature = "postgres")]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::model::Event;
use cariosan_webhooks::store::postgres::sqlx::{self, PgPool};
use cariosan_webhooks::store::postgres::{
    Inbox, InboxEntry, InboxStatus, OrderingKeys, RetrySchedule, StalePolicy, Tx,
};
use cariosan_webhooks::verification::VerificationLayer;
use cariosan_webhooks::{Delivery, HandlerError, HandlerResult, Webhooks};
use common::postgres_server::PostgresServer;
use common::process::ReceiverProcess;
use common::*;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One event to send: its id, type, body, and the key the default keys
/// give it.
#[derive(Clone)]
struct Sent {
    id: String,
    event_type: &'static str,
    body: Vec<u8>,
    key: String,
}

/// The fixture of `event_type` as delivery `id`, created at `at`.
fn event(event_type: &'static str, id: &str, at: OffsetDateTime) -> Value {
    let path = format!("events/{event_type}.json");
    let mut event: Value = serde_json::from_slice(&fixture(&path)).unwrap();
    event["id"] = json!(id);
    event["created_at"] = json!(at.format(&Rfc3339).unwrap());
    event
}

fn message(event_type: &'static str, id: &str, at: OffsetDateTime, message: &str) -> Sent {
    let mut body = event(event_type, id, at);
    body["data"]["message"]["id"] = json!(message);
    body["data"]["message"]["content"] = json!(format!("text of {id}"));
    Sent {
        id: id.to_owned(),
        event_type,
        body: serde_json::to_vec(&body).unwrap(),
        key: format!("message:{message}"),
    }
}

fn member(event_type: &'static str, id: &str, at: OffsetDateTime, channel: &str) -> Sent {
    let mut body = event(event_type, id, at);
    body["data"]["channel"]["id"] = json!(channel);
    Sent {
        id: id.to_owned(),
        event_type,
        body: serde_json::to_vec(&body).unwrap(),
        key: format!("members:{channel}"),
    }
}

/// 1,000 events over 50 channels: per channel four messages, each created
/// then edited three times (the first then deleted), two members added and
/// one removed; `created_at` one millisecond apart within a key.
fn thousand_events() -> Vec<Sent> {
    let base = OffsetDateTime::now_utc() - Duration::from_secs(60);
    let mut events = Vec::new();
    for channel in 0..50 {
        let ch = format!("ch_{channel:02}");
        for m in 0..4 {
            let msg = format!("msg_{channel:02}_{m}");
            let at = |step: u64| base + Duration::from_millis(step);
            events.push(message(
                "message.created",
                &format!("evt_{msg}_0"),
                at(0),
                &msg,
            ));
            for edit in 1..=3 {
                events.push(message(
                    "message.updated",
                    &format!("evt_{msg}_{edit}"),
                    at(edit),
                    &msg,
                ));
            }
            if m == 0 {
                events.push(message(
                    "message.deleted",
                    &format!("evt_{msg}_4"),
                    at(4),
                    &msg,
                ));
            }
        }
        for (n, event_type) in ["member.added", "member.added", "member.removed"]
            .into_iter()
            .enumerate()
        {
            events.push(member(
                event_type,
                &format!("evt_{ch}_member_{n}"),
                base + Duration::from_millis(n as u64),
                &ch,
            ));
        }
    }
    assert_eq!(events.len(), 1000);
    events
}

/// A deterministic shuffle (xorshift), so that a failure can be rerun.
fn shuffled<T>(mut items: Vec<T>, mut seed: u64) -> Vec<T> {
    for i in (1..items.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        items.swap(i, (seed % (i as u64 + 1)) as usize);
    }
    items
}

/// Sends every event (and a copy of every tenth) to the replicas, 16 at a
/// time, alternating between them; how long it took.
async fn send_all(replicas: &[SocketAddr], events: &[Sent]) -> Duration {
    let mut copies: Vec<Sent> = events.to_vec();
    copies.extend(events.iter().step_by(10).cloned());
    let copies = shuffled(copies, 0x9e37_79b9_7f4a_7c15);
    let queue = Arc::new(Mutex::new(copies.into_iter().enumerate()));
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..16 {
        let queue = queue.clone();
        let replicas = replicas.to_vec();
        senders.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap().next();
                let Some((n, sent)) = next else { break };
                let addr = replicas[n % replicas.len()];
                let reply = send_signed(addr, &sent.id, sent.event_type, &sent.body).await;
                assert!(
                    reply.status == 202 || reply.status == 200,
                    "{}: {} {}",
                    sent.id,
                    reply.status,
                    reply.body
                );
            }
        }));
    }
    for sender in senders {
        sender.await.unwrap();
    }
    started.elapsed()
}

/// The runs the receiver example recorded, in the order they started:
/// `(delivery id, key, event time, stale, started)`.
type Run = (String, String, OffsetDateTime, bool, OffsetDateTime);

async fn runs(pool: &PgPool) -> Vec<Run> {
    sqlx::query_as(
        "SELECT e.delivery_id, i.ordering_key, i.event_at, e.stale, e.started_at \
         FROM receiver_effects AS e JOIN cariosan_webhooks.inbox AS i USING (delivery_id) \
         ORDER BY e.seq",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn wait_until_done(pool: &PgPool, rows: i64, within: Duration) {
    let started = Instant::now();
    loop {
        let (done, all): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status <> 'queued'), count(*) FROM cariosan_webhooks.inbox",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        if done == rows && all == rows {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{done} of {all} rows finished after {within:?} ({rows} expected)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The most runs of distinct keys under way at one moment, from their
/// start times and a run time of at least `run_time` each.
fn most_keys_at_once(runs: &[Run], run_time: Duration) -> usize {
    runs.iter()
        .map(|(_, _, _, _, start)| {
            runs.iter()
                .filter(|(_, _, _, _, other)| *other <= *start && *start < *other + run_time)
                .map(|(_, key, ..)| key.as_str())
                .collect::<HashSet<_>>()
                .len()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_thousand_shuffled_events_run_in_order_per_key_on_two_replicas() {
    let server = PostgresServer::start();
    let url = server.url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("CARIOSAN_WEBHOOK_MODE", "inbox"),
        ("CARIOSAN_INBOX_ORDERED", "1"),
        ("CARIOSAN_INBOX_HOLD_MS", "10000"),
        ("CARIOSAN_INBOX_WORKERS", "4"),
        ("CARIOSAN_INBOX_POLL_MS", "20"),
        ("CARIOSAN_DEMO_DELAY_MS", "25"),
    ];
    let first = ReceiverProcess::start(&env);
    let second = ReceiverProcess::start(&env);
    let events = thousand_events();
    let took = send_all(&[first.addr, second.addr], &shuffled(events.clone(), 7)).await;
    assert!(
        took < Duration::from_secs(9),
        "sending took {took:?}: longer than the window, so the order is not promised"
    );
    let pool = server.pool(2).await;
    wait_until_done(&pool, 1000, Duration::from_secs(90)).await;

    let runs = runs(&pool).await;
    let ids: HashSet<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(runs.len(), 1000, "one run per delivery");
    assert_eq!(ids.len(), 1000, "every delivery ran exactly once");
    let mut by_key: BTreeMap<&str, Vec<(OffsetDateTime, &str)>> = BTreeMap::new();
    for (id, key, at, stale, _) in &runs {
        assert!(!stale, "{id} ran stale within the window");
        by_key.entry(key).or_default().push((*at, id));
    }
    let expected_keys: HashSet<&str> = events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(by_key.len(), expected_keys.len());
    for (key, ran) in &by_key {
        let mut sorted = ran.clone();
        sorted.sort();
        assert_eq!(ran, &sorted, "runs of {key} out of created_at order");
    }
    let at_once = most_keys_at_once(&runs, Duration::from_millis(25));
    assert!(
        at_once >= 4,
        "at most {at_once} keys ran at once on 8 workers"
    );
    let outcomes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT outcome, count(*) FROM cariosan_webhooks.inbox GROUP BY outcome ORDER BY outcome",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(outcomes, vec![("handled".to_owned(), 1000)]);
    eprintln!("sent in {took:?}; up to {at_once} keys ran at once");
}

/// An in-process replica: an ordered inbox with its ingest on 127.0.0.1.
async fn replica(pool: PgPool, configure: impl FnOnce(Inbox) -> Inbox) -> (Inbox, SocketAddr) {
    let inbox = configure(Inbox::new(pool).ordered(OrderingKeys::default()));
    inbox.migrate().await.unwrap();
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS runs (seq bigserial, delivery_id text NOT NULL, \
         stale boolean NOT NULL, text text)",
    )
    .execute(inbox.pool())
    .await
    .unwrap();
    let addr = serve(Router::new().route(
        "/webhooks/cariosan",
        post_service(inbox.service()).layer(VerificationLayer::new(SECRET)),
    ))
    .await;
    (inbox, addr)
}

async fn record_run(tx: &Tx, event: &Delivery<Event>) -> HandlerResult {
    let text = match event.data() {
        Event::MessageCreated(e) => Some(e.message.content.clone()),
        Event::MessageUpdated(e) => Some(e.message.content.clone()),
        _ => None,
    };
    let mut conn = tx.conn().await?;
    sqlx::query("INSERT INTO runs (delivery_id, stale, text) VALUES ($1, $2, $3)")
        .bind(event.id.as_str())
        .bind(event.is_stale())
        .bind(text)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

fn recording() -> Webhooks {
    Webhooks::new().on(
        cariosan_webhooks::dispatch::EventSelector::AllKnown,
        |event: Delivery<Event>, tx: Tx| async move { record_run(&tx, &event).await },
    )
}

async fn ran(pool: &PgPool) -> Vec<(String, bool)> {
    sqlx::query_as("SELECT delivery_id, stale FROM runs ORDER BY seq")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn wait_for(inbox: &Inbox, id: &str, done: impl Fn(&InboxEntry) -> bool) -> InboxEntry {
    let started = Instant::now();
    loop {
        let entry = inbox.get(id).await.unwrap();
        if let Some(entry) = &entry {
            if done(entry) {
                return entry.clone();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{id}: {entry:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn finished(entry: &InboxEntry) -> bool {
    entry.status != InboxStatus::Queued
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn without_a_window_late_deliveries_are_stale_or_superseded_and_the_rest_in_order() {
    let server = PostgresServer::start();
    let base = OffsetDateTime::now_utc() - Duration::from_secs(60);
    let at = |ms: u64| base + Duration::from_millis(ms);

    // Directed: the later edit runs first; the earlier one, arriving after,
    // runs stale under the default policy.
    let (inbox, addr) = replica(server.pool(6).await, |inbox| inbox).await;
    let workers = inbox
        .workers(recording())
        .poll_interval(Duration::from_millis(20))
        .start();
    let later = message("message.updated", "evt_edit_2", at(2), "msg_late");
    let earlier = message("message.updated", "evt_edit_1", at(1), "msg_late");
    send_signed(addr, &later.id, later.event_type, &later.body).await;
    wait_for(&inbox, &later.id, finished).await;
    send_signed(addr, &earlier.id, earlier.event_type, &earlier.body).await;
    let entry = wait_for(&inbox, &earlier.id, finished).await;
    assert_eq!(entry.outcome.as_deref(), Some("handled"));
    assert_eq!(entry.ordering_key.as_deref(), Some("message:msg_late"));
    assert_eq!(
        ran(inbox.pool()).await,
        vec![("evt_edit_2".into(), false), ("evt_edit_1".into(), true)]
    );

    // Shuffled, sent while the workers run: the runs of each key that are
    // not stale are in order, and every run older than one before it of
    // its key is stale.
    // Half of them first, and the rest once those ran: the second half
    // holds late predecessors.
    let events = thousand_events();
    let some: Vec<Sent> = events.into_iter().step_by(3).collect();
    let mixed = shuffled(some.clone(), 11);
    let (first_half, second_half) = mixed.split_at(mixed.len() / 2);
    for (half, rows) in [
        (first_half, 2 + first_half.len()),
        (second_half, 2 + some.len()),
    ] {
        send_all(&[addr], half).await;
        wait_until_done(inbox.pool(), rows as i64, Duration::from_secs(60)).await;
    }
    let key_of: HashMap<&str, &str> = some
        .iter()
        .map(|s| (s.id.as_str(), s.key.as_str()))
        .collect();
    // The latest delivery of each key that ran so far; ids sort as the
    // events' times do within a key.
    let mut latest: HashMap<&str, String> = HashMap::new();
    let mut stale_runs = 0;
    for (id, stale) in ran(inbox.pool()).await.into_iter().skip(2) {
        let key = key_of[id.as_str()];
        let in_order = latest.get(key).is_none_or(|before| *before < id);
        assert_eq!(stale, !in_order, "{id} of {key}: stale {stale}");
        if in_order {
            latest.insert(key, id);
        } else {
            stale_runs += 1;
        }
    }
    assert!(stale_runs > 0, "no late delivery among {}", some.len());
    workers.shutdown(Duration::from_secs(2)).await;
    eprintln!("{stale_runs} late deliveries ran stale");

    // With StalePolicy::Supersede a late delivery ends superseded, unrun,
    // its text gone.
    let (strict, strict_addr) = replica(server.pool(6).await, |inbox| {
        inbox.stale_deliveries(StalePolicy::Supersede)
    })
    .await;
    sqlx::query("TRUNCATE runs")
        .execute(strict.pool())
        .await
        .unwrap();
    let workers = strict
        .workers(recording())
        .poll_interval(Duration::from_millis(20))
        .start();
    let later = message("message.updated", "evt_strict_2", at(2), "msg_strict");
    let earlier = message("message.updated", "evt_strict_1", at(1), "msg_strict");
    send_signed(strict_addr, &later.id, later.event_type, &later.body).await;
    wait_for(&strict, &later.id, finished).await;
    send_signed(strict_addr, &earlier.id, earlier.event_type, &earlier.body).await;
    let entry = wait_for(&strict, &earlier.id, finished).await;
    assert_eq!(entry.outcome.as_deref(), Some("superseded"));
    assert_eq!(entry.body_len, None, "a superseded row keeps no body");
    assert_eq!(
        ran(strict.pool()).await,
        vec![("evt_strict_2".into(), false)]
    );

    // A stale deletion still runs: a moderation action on the message,
    // created after it, was handled first.
    let mut action = event("moderation.action", "evt_strict_mod", at(9));
    action["data"]["message_id"] = json!("msg_strict");
    let action = serde_json::to_vec(&action).unwrap();
    send_signed(strict_addr, "evt_strict_mod", "moderation.action", &action).await;
    wait_for(&strict, "evt_strict_mod", finished).await;
    let deletion = message("message.deleted", "evt_strict_del", at(5), "msg_strict");
    send_signed(
        strict_addr,
        &deletion.id,
        deletion.event_type,
        &deletion.body,
    )
    .await;
    let entry = wait_for(&strict, &deletion.id, finished).await;
    assert_eq!(entry.outcome.as_deref(), Some("handled"));
    assert_eq!(
        ran(strict.pool()).await.last(),
        Some(&("evt_strict_del".to_owned(), true))
    );
    let remembered: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM cariosan_webhooks.deleted_messages WHERE message_id = 'msg_strict'",
    )
    .fetch_one(strict.pool())
    .await
    .unwrap();
    assert_eq!(remembered, 1, "the stale deletion was recorded");
    workers.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_failing_predecessor_delays_only_its_key_and_a_dead_one_lets_its_successors_run() {
    let server = PostgresServer::start();
    let base = OffsetDateTime::now_utc() - Duration::from_secs(60);
    let at = |ms: u64| base + Duration::from_millis(ms);
    let schedule = RetrySchedule::new()
        .first_delay(Duration::from_millis(300))
        .max_attempts(4);
    let (inbox, addr) = replica(server.pool(6).await, |inbox| inbox.retry(schedule)).await;
    let failures = Arc::new(AtomicUsize::new(0));
    let failed = failures.clone();
    let webhooks = Webhooks::new().on(
        cariosan_webhooks::dispatch::EventSelector::AllKnown,
        move |event: Delivery<Event>, tx: Tx| {
            let failed = failed.clone();
            async move {
                let id = event.id.as_str();
                // Fails three times, then succeeds.
                if id == "evt_a_1" && failed.fetch_add(1, Ordering::SeqCst) < 3 {
                    return Err(HandlerError::msg("the CRM is down"));
                }
                // Always fails: dies after its four attempts.
                if id == "evt_c_1" {
                    return Err(HandlerError::msg("never works"));
                }
                record_run(&tx, &event).await
            }
        },
    );
    let workers = inbox
        .workers(webhooks)
        .concurrency(4)
        .poll_interval(Duration::from_millis(20))
        .start();
    let sent = [
        message("message.created", "evt_a_1", at(1), "msg_a"),
        message("message.updated", "evt_a_2", at(2), "msg_a"),
        message("message.created", "evt_b_1", at(1), "msg_b"),
        message("message.updated", "evt_b_2", at(2), "msg_b"),
        message("message.created", "evt_c_1", at(1), "msg_c"),
        message("message.updated", "evt_c_2", at(2), "msg_c"),
    ];
    for s in &sent {
        send_signed(addr, &s.id, s.event_type, &s.body).await;
    }
    // Key b is done while a's first row is still failing.
    wait_for(&inbox, "evt_b_2", finished).await;
    let a1 = inbox.get("evt_a_1").await.unwrap().unwrap();
    assert_eq!(a1.status, InboxStatus::Queued, "{a1:?}");
    let a2 = inbox.get("evt_a_2").await.unwrap().unwrap();
    assert_eq!(a2.waits_for.as_deref(), Some("evt_a_1"), "{a2:?}");
    assert_eq!(a2.attempts, 0, "a waiting row is not charged an attempt");
    if a1.attempts == a1.attempts_ended {
        assert!(
            a2.due_at >= a1.due_at,
            "not due before its retrying predecessor"
        );
    }

    let a2 = wait_for(&inbox, "evt_a_2", finished).await;
    assert_eq!(a2.outcome.as_deref(), Some("handled"));
    let a1 = inbox.get("evt_a_1").await.unwrap().unwrap();
    assert_eq!((a1.attempts, a1.outcome.as_deref()), (4, Some("handled")));
    let c2 = wait_for(&inbox, "evt_c_2", finished).await;
    let c1 = inbox.get("evt_c_1").await.unwrap().unwrap();
    assert_eq!(c1.status, InboxStatus::Dead);
    assert_eq!(c2.outcome.as_deref(), Some("handled"));
    assert!(c2.finished_at >= c1.finished_at, "c2 ran once c1 was dead");

    let order: Vec<String> = ran(inbox.pool()).await.into_iter().map(|r| r.0).collect();
    let place = |id: &str| order.iter().position(|o| o == id).unwrap();
    assert!(place("evt_a_1") < place("evt_a_2"), "{order:?}");
    assert!(place("evt_b_1") < place("evt_b_2"), "{order:?}");
    assert!(place("evt_b_2") < place("evt_a_1"), "{order:?}");
    assert!(!order.contains(&"evt_c_1".to_owned()));
    workers.shutdown(Duration::from_secs(2)).await;

    // With a wait after a dead predecessor, its successor waits that long.
    let (patient, patient_addr) = replica(server.pool(6).await, |inbox| {
        inbox
            .schema("patient")
            .retry(RetrySchedule::new().max_attempts(1))
            .after_dead_predecessor(Duration::from_secs(2))
    })
    .await;
    let webhooks = Webhooks::new().on(
        cariosan_webhooks::dispatch::EventSelector::AllKnown,
        |event: Delivery<Event>, tx: Tx| async move {
            if event.id.as_str() == "evt_d_1" {
                return Err(HandlerError::msg("never works"));
            }
            record_run(&tx, &event).await
        },
    );
    let workers = patient
        .workers(webhooks)
        .poll_interval(Duration::from_millis(20))
        .start();
    for s in [
        message("message.created", "evt_d_1", at(1), "msg_d"),
        message("message.updated", "evt_d_2", at(2), "msg_d"),
    ] {
        send_signed(patient_addr, &s.id, s.event_type, &s.body).await;
    }
    let d1 = wait_for(&patient, "evt_d_1", finished).await;
    let d2 = wait_for(&patient, "evt_d_2", finished).await;
    assert_eq!(d1.status, InboxStatus::Dead);
    let waited = d2.finished_at.unwrap() - d1.finished_at.unwrap();
    assert!(waited >= time::Duration::seconds(2), "waited {waited}");
    workers.shutdown(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_deletion_handled_before_its_creation_arrives_supersedes_the_creation() {
    let server = PostgresServer::start();
    let base = OffsetDateTime::now_utc() - Duration::from_secs(60);
    let (inbox, addr) = replica(server.pool(6).await, |inbox| inbox).await;
    let workers = inbox
        .workers(recording())
        .poll_interval(Duration::from_millis(20))
        .start();
    let created = message("message.created", "evt_gone_1", base, "msg_gone");
    let created_text = String::from_utf8(created.body.clone()).unwrap();
    assert!(created_text.contains("text of evt_gone_1"));
    let deleted = message(
        "message.deleted",
        "evt_gone_2",
        base + Duration::from_millis(5),
        "msg_gone",
    );
    send_signed(addr, &deleted.id, deleted.event_type, &deleted.body).await;
    wait_for(&inbox, &deleted.id, finished).await;
    let reply = send_signed(addr, &created.id, created.event_type, &created.body).await;
    assert!((200..300).contains(&reply.status), "{reply:?}");
    let entry = wait_for(&inbox, &created.id, finished).await;
    assert_eq!(entry.outcome.as_deref(), Some("superseded"));
    assert_eq!(entry.body_len, None);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ran(inbox.pool()).await, vec![("evt_gone_2".into(), false)]);
    workers.shutdown(Duration::from_secs(2)).await;
    let dump = server.dump_data("cariosan_webhooks") + &server.dump_data("public");
    assert!(
        !dump.contains("text of evt_gone_1"),
        "a table holds the deleted message's text"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_replica_killed_mid_run_keeps_its_keys_order() {
    let server = PostgresServer::start();
    let url = server.url();
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("CARIOSAN_WEBHOOK_MODE", "inbox"),
        ("CARIOSAN_INBOX_ORDERED", "1"),
        ("CARIOSAN_INBOX_FIRST_RETRY_MS", "60000"),
        ("CARIOSAN_INBOX_POLL_MS", "20"),
    ];
    let mut slow_env = env.to_vec();
    slow_env.push(("CARIOSAN_DEMO_DELAY_MS", "5000"));
    let mut slow = ReceiverProcess::start(&slow_env);
    let base = OffsetDateTime::now_utc() - Duration::from_secs(60);
    let first = message("message.created", "evt_kill_1", base, "msg_kill");
    send_signed(slow.addr, &first.id, first.event_type, &first.body).await;
    let pool = server.pool(2).await;
    // Its run has written its row, uncommitted, when the process dies.
    let started = Instant::now();
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction' AND backend_xid IS NOT NULL",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if open > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let later = message(
        "message.updated",
        "evt_kill_2",
        base + Duration::from_millis(1),
        "msg_kill",
    );
    send_signed(slow.addr, &later.id, later.event_type, &later.body).await;
    tokio::task::block_in_place(|| slow.kill());
    let killed = Instant::now();

    // Found lost once the claim's hold ends (at most 10 s for a keyed
    // row) and run again 5 s later, not after the row's 60 s backoff: its
    // key waits for it.
    let _fresh = ReceiverProcess::start(&env);
    wait_until_done(&pool, 2, Duration::from_secs(30)).await;
    assert!(
        killed.elapsed() < Duration::from_secs(25),
        "the key waited {:?}",
        killed.elapsed()
    );
    let order: Vec<String> = runs(&pool).await.into_iter().map(|r| r.0).collect();
    assert_eq!(
        order,
        vec!["evt_kill_1".to_owned(), "evt_kill_2".to_owned()]
    );
    let (attempts, outcome): (i32, String) = sqlx::query_as(
        "SELECT attempts, outcome FROM cariosan_webhooks.inbox WHERE delivery_id = 'evt_kill_1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((attempts, outcome.as_str()), (2, "handled"));
}
