//! Both PostgreSQL modes under the faults production databases have: a
//! backend that stops answering mid-`BEGIN`, a handler stuck inside a
//! statement or behind a row lock, a session that ends under a running
//! handler, copies racing a handled delivery, a database whose default
//! isolation is not `READ COMMITTED`. Each test starts its own cluster and
//! stops, kills or pauses real processes.
#![cfg(feature = "postgres")]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::dispatch::EventSelector;
use cariosan_webhooks::model::Event;
use cariosan_webhooks::store::postgres::sqlx::{self, postgres::PgPoolOptions, PgPool};
use cariosan_webhooks::store::postgres::{
    Inbox, InboxStatus, PostgresBackend, RetrySchedule, Tx, LOST_SESSION_BOUND,
};
use cariosan_webhooks::verification::VerificationLayer;
use cariosan_webhooks::{CariosanWebhookLayer, Delivery, HandlerResult, Webhooks};
use common::postgres_server::PostgresServer;
use common::*;

async fn setup_tables(pool: &PgPool) {
    for sql in [
        "CREATE TABLE IF NOT EXISTS effects (delivery_id text NOT NULL, attempt integer)",
        "CREATE TABLE IF NOT EXISTS locked (id integer PRIMARY KEY, n integer NOT NULL)",
        "INSERT INTO locked VALUES (1, 0) ON CONFLICT DO NOTHING",
        "CREATE TABLE IF NOT EXISTS app_writes (note text NOT NULL)",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
}

async fn effects(pool: &PgPool, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE delivery_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Statements of other sessions still running on the server whose text
/// contains `needle`.
async fn running(check: &PgPool, needle: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' \
         AND pid <> pg_backend_pid() AND strpos(query, $1) > 0",
    )
    .bind(needle)
    .fetch_one(check)
    .await
    .unwrap()
}

/// Waits until no other session runs a statement containing `needle`;
/// how long that took.
async fn until_not_running(check: &PgPool, needle: &str, within: Duration) -> Duration {
    let started = Instant::now();
    while running(check, needle).await > 0 {
        assert!(
            started.elapsed() < within,
            "{needle:?} still running on the server after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

async fn until_running(check: &PgPool, needle: &str) {
    let started = Instant::now();
    while running(check, needle).await == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{needle:?} never ran"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn signal(pid: i32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// What the handlers below do on their first attempt, by the message's
/// text: `sleep` runs `pg_sleep(20)`, `lock` updates a row that another
/// session holds locked. Later attempts write their effect and succeed.
fn stuck_on_first_attempt() -> Webhooks {
    Webhooks::new().on(
        EventSelector::AllKnown,
        |event: Delivery<Event>, tx: Tx| async move {
            let content = match event.data() {
                Event::MessageCreated(created) => created.message.content.clone(),
                _ => String::new(),
            };
            let first = event.attempt == Some(1);
            let mut conn = tx.conn().await?;
            match content.as_str() {
                "sleep" if first => {
                    sqlx::query("SELECT pg_sleep(20)")
                        .execute(&mut *conn)
                        .await?;
                }
                "lock" if first => {
                    sqlx::query("UPDATE locked SET n = n + 1 WHERE id = 1")
                        .execute(&mut *conn)
                        .await?;
                }
                _ => {}
            }
            sqlx::query("INSERT INTO effects (delivery_id, attempt) VALUES ($1, $2)")
                .bind(event.id.as_str())
                .bind(event.attempt.map(|a| a as i32))
                .execute(&mut *conn)
                .await?;
            HandlerResult::Ok(())
        },
    )
}

/// A session that holds the row `locked.id = 1` locked until it drops.
async fn hold_row_lock(server: &PostgresServer) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let holder = server.pool(1).await;
    let mut tx = holder.begin().await.unwrap();
    sqlx::query("SELECT n FROM locked WHERE id = 1 FOR UPDATE")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx
}

const NEEDLES: [(&str, &str); 2] = [("sleep", "pg_sleep(20)"), ("lock", "UPDATE locked")];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn an_abandoned_begin_leaves_no_connection_in_a_transaction() {
    for test_before_acquire in [false, true] {
        let server = PostgresServer::start();
        let app_pool = PgPoolOptions::new()
            .max_connections(1)
            .test_before_acquire(test_before_acquire)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&server.url())
            .await
            .unwrap();
        let backend =
            PostgresBackend::new(app_pool.clone()).acquire_timeout(Duration::from_millis(300));
        backend.migrate().await.unwrap();
        setup_tables(&app_pool).await;
        let layer = CariosanWebhookLayer::new(SECRET)
            .backend(backend)
            .store_timeout(Duration::from_millis(300));
        let addr = serve(Router::new().route(
            "/webhooks/cariosan",
            post_service(stuck_on_first_attempt()).layer(layer),
        ))
        .await;
        let check = server.pool(2).await;

        // The pool's one connection: its backend stops answering.
        let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&app_pool)
            .await
            .unwrap();
        signal(pid, "-STOP");
        let id = "evt_pg_abandoned_begin";
        let reply = send_attempt(addr, id, 1, &message_with(id, "quick")).await;
        signal(pid, "-CONT");
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (503, "store_unavailable"),
            "test_before_acquire({test_before_acquire})"
        );

        let started = Instant::now();
        loop {
            let in_transaction: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            )
            .fetch_one(&check)
            .await
            .unwrap();
            if in_transaction == 0 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "a connection stayed idle in transaction (test_before_acquire({test_before_acquire}))"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The application's own autocommit write through the same pool is
        // visible to everyone.
        sqlx::query("INSERT INTO app_writes VALUES ('after the abandoned begin')")
            .execute(&app_pool)
            .await
            .unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM app_writes")
            .fetch_one(&check)
            .await
            .unwrap();
        assert_eq!(seen, 1, "test_before_acquire({test_before_acquire})");
        let retry = send_attempt(addr, id, 2, &message_with(id, "quick")).await;
        assert_eq!((retry.status, retry.body.as_str()), (200, "handled"));
        assert_eq!(effects(&check, id).await, 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn transactional_max_run_time_cancels_the_statement_on_the_server() {
    let server = PostgresServer::start();
    let app_pool = server.pool(8).await;
    let backend = PostgresBackend::new(app_pool.clone());
    backend.migrate().await.unwrap();
    setup_tables(&app_pool).await;
    let limit = Duration::from_secs(2);
    let layer = CariosanWebhookLayer::new(SECRET)
        .backend(backend)
        .max_run_time(limit)
        .handler_budget(Duration::from_secs(10));
    let addr = serve(Router::new().route(
        "/webhooks/cariosan",
        post_service(stuck_on_first_attempt()).layer(layer),
    ))
    .await;
    let check = server.pool(2).await;
    let _lock = hold_row_lock(&server).await;

    for (content, needle) in NEEDLES {
        let id = format!("evt_pg_stuck_{content}");
        let body = message_with(&id, content);
        let sent = Instant::now();
        let reply = send_attempt(addr, &id, 1, &body).await;
        let took = sent.elapsed();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (503, "run_cancelled"),
            "{content}"
        );
        assert!(
            took >= limit && took < limit + Duration::from_millis(1500),
            "{content}: answered after {took:?}"
        );
        until_not_running(&check, needle, Duration::from_secs(1)).await;
        let copy = send_attempt(addr, &id, 2, &body).await;
        assert_eq!(
            (copy.status, copy.body.as_str()),
            (200, "handled"),
            "{content}"
        );
        assert!(
            sent.elapsed() < limit + Duration::from_secs(3),
            "{content}: the copy was handled {:?} after the first was sent",
            sent.elapsed()
        );
        assert_eq!(effects(&check, &id).await, 1, "{content}");
    }
}

async fn inbox_with(server: &PostgresServer, schedule: RetrySchedule) -> Inbox {
    let inbox = Inbox::new(server.pool(8).await).retry(schedule);
    inbox.migrate().await.unwrap();
    setup_tables(inbox.pool()).await;
    inbox
}

async fn ingest_endpoint(inbox: &Inbox) -> SocketAddr {
    serve(Router::new().route(
        "/webhooks/cariosan",
        post_service(inbox.service()).layer(VerificationLayer::new(SECRET)),
    ))
    .await
}

async fn until_done(inbox: &Inbox, id: &str, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if let Some(entry) = inbox.get(id).await.unwrap() {
            if entry.status == InboxStatus::Done {
                return started.elapsed();
            }
        }
        assert!(
            started.elapsed() < within,
            "{id} not done within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn inbox_max_run_time_cancels_the_statement_on_the_server() {
    let server = PostgresServer::start();
    let schedule = RetrySchedule::new()
        .first_delay(Duration::from_millis(1500))
        .jitter(0.0);
    let inbox = inbox_with(&server, schedule).await;
    let limit = Duration::from_secs(1);
    let workers = inbox
        .workers(stuck_on_first_attempt())
        .max_run_time(limit)
        .poll_interval(Duration::from_millis(50))
        .start();
    let addr = ingest_endpoint(&inbox).await;
    let check = server.pool(2).await;
    let _lock = hold_row_lock(&server).await;

    for (content, needle) in NEEDLES {
        let id = format!("evt_inbox_stuck_{content}");
        let reply = send_attempt(addr, &id, 1, &message_with(&id, content)).await;
        assert_eq!((reply.status, reply.body.as_str()), (202, "queued"));
        until_running(&check, needle).await;
        let ran = Instant::now();
        let gone = until_not_running(&check, needle, limit + Duration::from_secs(1)).await;
        assert!(
            gone <= limit + Duration::from_millis(800),
            "{content}: {gone:?}"
        );
        let done = until_done(&inbox, &id, limit + Duration::from_secs(4)).await;
        assert!(
            ran.elapsed() < limit + Duration::from_secs(3),
            "{content}: the retry was handled {:?} after the run started ({done:?} of waiting)",
            ran.elapsed()
        );
        assert_eq!(effects(&check, &id).await, 1, "{content}");
    }
    workers.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_drain_past_its_deadline_stops_statements_on_the_server_in_both_modes() {
    let server = PostgresServer::start();
    let app_pool = server.pool(8).await;
    let backend = PostgresBackend::new(app_pool.clone());
    backend.migrate().await.unwrap();
    setup_tables(&app_pool).await;
    let check = server.pool(2).await;
    let _lock = hold_row_lock(&server).await;
    let deadline = Duration::from_secs(1);
    let bound = deadline + cariosan_webhooks::delivery::CANCEL_GRACE + Duration::from_millis(300);

    for (content, needle) in NEEDLES {
        let layer = CariosanWebhookLayer::new(SECRET).backend(backend.clone());
        let shutdown = layer.shutdown_handle();
        let addr = serve(Router::new().route(
            "/webhooks/cariosan",
            post_service(stuck_on_first_attempt()).layer(layer),
        ))
        .await;
        let id = format!("evt_pg_drain_{content}");
        let body = message_with(&id, content);
        let in_flight = tokio::spawn(async move { send_attempt(addr, &id, 1, &body).await });
        until_running(&check, needle).await;
        let started = Instant::now();
        let drained = shutdown.drain(deadline).await;
        assert!(
            started.elapsed() < bound,
            "{content}: drained in {:?}",
            started.elapsed()
        );
        assert_eq!((drained.abandoned, drained.stuck), (1, 0), "{content}");
        until_not_running(&check, needle, Duration::from_millis(500)).await;
        let reply = in_flight.await.unwrap();
        assert_eq!((reply.status, reply.body.as_str()), (503, "shutting_down"));
    }

    let inbox = inbox_with(&server, RetrySchedule::new()).await;
    let addr = ingest_endpoint(&inbox).await;
    for (content, needle) in NEEDLES {
        let workers = inbox.workers(stuck_on_first_attempt()).start();
        let id = format!("evt_inbox_drain_{content}");
        let reply = send_attempt(addr, &id, 1, &message_with(&id, content)).await;
        assert_eq!(reply.status, 202);
        until_running(&check, needle).await;
        let started = Instant::now();
        let stopped = workers.shutdown(deadline).await;
        assert!(
            started.elapsed() < bound,
            "{content}: stopped in {:?}",
            started.elapsed()
        );
        assert_eq!(stopped.cancelled, 1, "{content}");
        until_not_running(&check, needle, Duration::from_millis(500)).await;
        let entry = inbox
            .get(&format!("evt_inbox_drain_{content}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (entry.status, entry.attempts),
            (InboxStatus::Queued, 0),
            "{content}"
        );
        // Out of the next round's way: a purged queued row is dead.
        assert!(inbox.purge(&entry.id).await.unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn copies_of_handled_deliveries_are_always_duplicates() {
    let server = PostgresServer::start();
    let app_pool = server.pool(30).await;
    let backend = PostgresBackend::new(app_pool.clone());
    backend.migrate().await.unwrap();
    setup_tables(&app_pool).await;
    let layer = CariosanWebhookLayer::new(SECRET)
        .backend(backend)
        .max_concurrency(200);
    let addr = serve(Router::new().route(
        "/webhooks/cariosan",
        post_service(stuck_on_first_attempt()).layer(layer),
    ))
    .await;
    let ids: Vec<String> = (0..10).map(|n| format!("evt_pg_handled_{n}")).collect();
    for id in &ids {
        let reply = send_attempt(addr, id, 1, &message_with(id, "quick")).await;
        assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    }
    let copies = futures_util::future::join_all(ids.iter().flat_map(|id| {
        (0..10).map(move |n| async move {
            let reply = send_attempt(addr, id, 2 + n, &message_with(id, "quick")).await;
            (reply.status, reply.body)
        })
    }))
    .await;
    let duplicates = copies
        .iter()
        .filter(|(status, body)| *status == 200 && body == "duplicate")
        .count();
    assert_eq!(duplicates, 100, "{copies:?}");
}

/// A run's start and end, the end noted when its future completes or is
/// dropped (a cancelled run).
#[derive(Default, Clone)]
struct Runs(Arc<Mutex<Vec<Run>>>);

/// Its attempt, when it started, when it ended.
type Run = (u32, Instant, Option<Instant>);

struct RunEnds(Runs, usize);

impl Drop for RunEnds {
    fn drop(&mut self) {
        (self.0).0.lock().unwrap()[self.1].2 = Some(Instant::now());
    }
}

impl Runs {
    fn start(&self, attempt: u32) -> RunEnds {
        let mut runs = self.0.lock().unwrap();
        runs.push((attempt, Instant::now(), None));
        RunEnds(self.clone(), runs.len() - 1)
    }

    fn all(&self) -> Vec<Run> {
        self.0.lock().unwrap().clone()
    }

    /// No run started before an earlier one ended.
    fn assert_never_overlapped(&self) {
        let runs = self.all();
        for pair in runs.windows(2) {
            let (earlier, later) = (&pair[0], &pair[1]);
            let ended = earlier.2.expect("every earlier run ended");
            assert!(
                ended <= later.1,
                "run of attempt {} started {:?} before run of attempt {} ended",
                later.0,
                ended - later.1,
                earlier.0
            );
        }
    }
}

/// Notes its session's pid, then, on the first attempt, works 6 s outside
/// the database (`idle` also sets a 1 s idle-in-transaction timeout, so
/// that the server ends the session itself). Every run is counted.
fn outside_the_database(runs: Runs, pid: Arc<AtomicI32>) -> Webhooks {
    Webhooks::new().on(
        EventSelector::AllKnown,
        move |event: Delivery<Event>, tx: Tx| {
            let (runs, pid) = (runs.clone(), pid.clone());
            async move {
                let attempt = event.attempt.unwrap_or(0);
                let _ends = runs.start(attempt);
                let content = match event.data() {
                    Event::MessageCreated(created) => created.message.content.clone(),
                    _ => String::new(),
                };
                {
                    let mut conn = tx.conn().await?;
                    if content == "idle" {
                        sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 1000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    sqlx::query("INSERT INTO effects (delivery_id, attempt) VALUES ($1, $2)")
                        .bind(event.id.as_str())
                        .bind(attempt as i32)
                        .execute(&mut *conn)
                        .await?;
                    let own: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                        .fetch_one(&mut *conn)
                        .await?;
                    pid.store(own, Ordering::SeqCst);
                }
                if attempt == 1 {
                    tokio::time::sleep(Duration::from_secs(6)).await;
                }
                HandlerResult::Ok(())
            }
        },
    )
}

async fn until_pid(pid: &AtomicI32) -> i32 {
    let started = Instant::now();
    loop {
        let seen = pid.load(Ordering::SeqCst);
        if seen != 0 {
            return seen;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the handler never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn transactional_a_lost_session_cancels_its_run_before_a_copy_starts() {
    let server = PostgresServer::start();
    let app_pool = server.pool(8).await;
    let backend = PostgresBackend::new(app_pool.clone());
    backend.migrate().await.unwrap();
    setup_tables(&app_pool).await;
    let check = server.pool(2).await;

    for how in ["terminate", "idle"] {
        let runs = Runs::default();
        let pid = Arc::new(AtomicI32::new(0));
        let layer = CariosanWebhookLayer::new(SECRET)
            .backend(backend.clone())
            .handler_budget(Duration::from_secs(10));
        let addr = serve(Router::new().route(
            "/webhooks/cariosan",
            post_service(outside_the_database(runs.clone(), pid.clone())).layer(layer),
        ))
        .await;
        let id = format!("evt_pg_lost_{how}");
        let body = message_with(&id, how);
        let sent = Instant::now();
        let first = {
            let (id, body) = (id.clone(), body.clone());
            tokio::spawn(async move { send_attempt(addr, &id, 1, &body).await })
        };
        let backend_pid = until_pid(&pid).await;
        let lost_at = if how == "terminate" {
            tokio::time::sleep_until((sent + Duration::from_secs(1)).into()).await;
            let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                .bind(backend_pid)
                .fetch_one(&check)
                .await
                .unwrap();
            assert!(terminated);
            Instant::now()
        } else {
            // The server ends it 1 s after the handler went idle.
            Instant::now() + Duration::from_secs(1)
        };
        tokio::time::sleep_until(
            (sent + Duration::from_millis(2500))
                .max(lost_at + LOST_SESSION_BOUND)
                .into(),
        )
        .await;
        let copy = send_attempt(addr, &id, 2, &body).await;
        assert_eq!((copy.status, copy.body.as_str()), (200, "handled"), "{how}");
        let reply = first.await.unwrap();
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (503, "run_cancelled"),
            "{how}"
        );
        let all = runs.all();
        assert_eq!(all.len(), 2, "{how}");
        let cancelled_after = all[0].2.unwrap().saturating_duration_since(lost_at);
        assert!(
            cancelled_after <= LOST_SESSION_BOUND,
            "{how}: cancelled {cancelled_after:?} after its session ended"
        );
        runs.assert_never_overlapped();
        assert_eq!(
            effects(&check, &id).await,
            1,
            "{how}: only the copy's write committed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn inbox_a_lost_session_cancels_its_run_before_another_worker_claims_it() {
    let server = PostgresServer::start();
    let schedule = RetrySchedule::new()
        .first_delay(Duration::from_millis(100))
        .jitter(0.0);
    let inbox = inbox_with(&server, schedule).await;
    let check = server.pool(2).await;
    let runs = Runs::default();
    let pid = Arc::new(AtomicI32::new(0));
    let workers = inbox
        .workers(outside_the_database(runs.clone(), pid.clone()))
        .concurrency(4)
        .poll_interval(Duration::from_millis(50))
        .start();
    let addr = ingest_endpoint(&inbox).await;
    let id = "evt_inbox_lost_session";
    let reply = send_attempt(addr, id, 1, &message_with(id, "terminate")).await;
    assert_eq!(reply.status, 202);
    let backend_pid = until_pid(&pid).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(backend_pid)
        .fetch_one(&check)
        .await
        .unwrap();
    assert!(terminated);
    let lost_at = Instant::now();
    until_done(&inbox, id, Duration::from_secs(15)).await;
    let all = runs.all();
    assert_eq!(all.len(), 2, "the lost run and its retry");
    let cancelled_after = all[0].2.unwrap().saturating_duration_since(lost_at);
    assert!(
        cancelled_after <= LOST_SESSION_BOUND,
        "cancelled {cancelled_after:?} after its session ended"
    );
    runs.assert_never_overlapped();
    assert_eq!(effects(&check, id).await, 1);
    workers.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_repeatable_read_default_still_runs_each_delivery_once_in_read_committed() {
    let server = PostgresServer::start();
    let admin = server.pool(1).await;
    sqlx::query("ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'")
        .execute(&admin)
        .await
        .unwrap();
    let app_pool = server.pool(30).await;
    let default: String = sqlx::query_scalar("SHOW default_transaction_isolation")
        .fetch_one(&app_pool)
        .await
        .unwrap();
    assert_eq!(default, "repeatable read");
    let backend = PostgresBackend::new(app_pool.clone());
    backend.migrate().await.unwrap();
    setup_tables(&app_pool).await;
    let isolation: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = isolation.clone();
    let webhooks = Webhooks::new().on(
        EventSelector::AllKnown,
        move |event: Delivery<Event>, tx: Tx| {
            let seen = seen.clone();
            async move {
                let mut conn = tx.conn().await?;
                let level: String = sqlx::query_scalar("SHOW transaction_isolation")
                    .fetch_one(&mut *conn)
                    .await?;
                seen.lock().unwrap().push(level);
                sqlx::query("INSERT INTO effects (delivery_id) VALUES ($1)")
                    .bind(event.id.as_str())
                    .execute(&mut *conn)
                    .await?;
                drop(conn);
                tokio::time::sleep(Duration::from_millis(200)).await;
                HandlerResult::Ok(())
            }
        },
    );
    let layer = CariosanWebhookLayer::new(SECRET)
        .backend(backend)
        .max_concurrency(100);
    let addr =
        serve(Router::new().route("/webhooks/cariosan", post_service(webhooks).layer(layer))).await;
    let ids: Vec<String> = (0..5).map(|n| format!("evt_pg_rr_{n}")).collect();
    // Copies keep arriving before, during and after each first commit.
    let answers = futures_util::future::join_all(ids.iter().flat_map(|id| {
        (0..16u32).map(move |n| async move {
            tokio::time::sleep(Duration::from_millis(u64::from(n) * 25)).await;
            let reply = send_attempt(addr, id, n + 1, &message_with(id, "rr")).await;
            (reply.status, reply.body)
        })
    }))
    .await;
    for (status, body) in &answers {
        assert!(
            (*status, body.as_str()) == (200, "handled")
                || (*status, body.as_str()) == (200, "duplicate")
                || (*status, body.as_str()) == (503, "delivery_in_progress"),
            "{status} {body}"
        );
    }
    for id in &ids {
        assert_eq!(effects(&admin, id).await, 1, "{id}");
    }
    let levels = isolation.lock().unwrap().clone();
    assert_eq!(
        levels.len(),
        ids.len(),
        "each delivery ran once: {levels:?}"
    );
    assert!(
        levels.iter().all(|level| level == "read committed"),
        "{levels:?}"
    );
}
