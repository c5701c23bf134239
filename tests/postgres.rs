//! Exactly-once database effects on a real PostgreSQL: the delivery is
//! recorded in the handlers' own transaction. Each test starts its own
//! cluster (`initdb`, `pg_ctl`) on a free port of 127.0.0.1.
#![cfg(feature = "postgres")]

mod common;

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::dispatch::EventSelector;
use cariosan_webhooks::model::Event;
use cariosan_webhooks::store::postgres::sqlx::{self, PgPool};
use cariosan_webhooks::store::postgres::{PostgresBackend, Tx};
use cariosan_webhooks::{CariosanWebhookLayer, Delivery, HandlerError, HandlerResult, Webhooks};
use common::postgres_server::PostgresServer;
use common::process::ReceiverProcess;
use common::simulation::{check_acknowledged, deliver_all, webhooks_after, Tally, BUDGET};
use common::*;

async fn create_effects(pool: &PgPool) {
    sqlx::query("CREATE TABLE IF NOT EXISTS effects (delivery_id text NOT NULL, attempt integer)")
        .execute(pool)
        .await
        .unwrap();
}

async fn rows(pool: &PgPool, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM effects WHERE delivery_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Inserts `(id, attempt)` into `effects` in the delivery's transaction,
/// then does what the message says: `slow` waits 300 ms, `fail1` fails on
/// the first attempt, `pid` notes its connection's backend pid and waits 1 s.
fn effects(pid: Arc<AtomicI32>) -> Webhooks {
    Webhooks::new().on(
        EventSelector::AllKnown,
        move |event: Delivery<Event>, tx: Tx| {
            let pid = pid.clone();
            async move {
                let content = match event.data() {
                    Event::MessageCreated(created) => created.message.content.clone(),
                    _ => String::new(),
                };
                let attempt = event.attempt.map(|a| a as i32);
                {
                    let mut conn = tx.conn().await?;
                    sqlx::query("INSERT INTO effects (delivery_id, attempt) VALUES ($1, $2)")
                        .bind(event.id.as_str())
                        .bind(attempt)
                        .execute(&mut *conn)
                        .await?;
                    if content == "pid" {
                        let own: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
                            .fetch_one(&mut *conn)
                            .await?;
                        pid.store(own, Ordering::SeqCst);
                    }
                }
                match content.as_str() {
                    "slow" => tokio::time::sleep(Duration::from_millis(300)).await,
                    "pid" => tokio::time::sleep(Duration::from_secs(1)).await,
                    "fail1" if attempt == Some(1) => {
                        return Err(HandlerError::msg("failed after writing"))
                    }
                    _ => {}
                }
                HandlerResult::Ok(())
            }
        },
    )
}

/// A replica: its own pool and layer over the shared database.
async fn replica(server: &PostgresServer, webhooks: Webhooks) -> std::net::SocketAddr {
    let pool = server.pool(20).await;
    let backend = PostgresBackend::new(pool.clone());
    backend.migrate().await.unwrap();
    create_effects(&pool).await;
    let layer = CariosanWebhookLayer::new(SECRET)
        .backend(backend)
        .max_concurrency(18);
    serve(Router::new().route("/webhooks/cariosan", post_service(webhooks).layer(layer))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn concurrent_copies_across_two_replicas_commit_one_row_and_a_failure_none() {
    let server = PostgresServer::start();
    let pid = Arc::new(AtomicI32::new(0));
    let replicas = [
        replica(&server, effects(pid.clone())).await,
        replica(&server, effects(pid)).await,
    ];
    let check = server.pool(2).await;

    let body = message_with("evt_pg_copies", "slow");
    let answers = futures_util::future::join_all((0..16).map(|n| {
        let body = body.clone();
        async move {
            let reply = send_attempt(replicas[n % 2], "evt_pg_copies", 1, &body).await;
            (reply.status, reply.body)
        }
    }))
    .await;
    for (status, code) in &answers {
        assert!(*status == 200 || *status == 503, "{status} {code}");
    }
    assert!(
        answers.iter().any(|(_, code)| code == "handled"),
        "{answers:?}"
    );
    assert_eq!(rows(&check, "evt_pg_copies").await, 1, "{answers:?}");
    let again = send_attempt(replicas[1], "evt_pg_copies", 2, &body).await;
    assert_eq!((again.status, again.body.as_str()), (200, "duplicate"));
    assert_eq!(rows(&check, "evt_pg_copies").await, 1);

    let failing = message_with("evt_pg_fail", "fail1");
    let first = send_attempt(replicas[0], "evt_pg_fail", 1, &failing).await;
    assert_eq!((first.status, first.body.as_str()), (500, "handler_failed"));
    assert_eq!(
        rows(&check, "evt_pg_fail").await,
        0,
        "the failed run's write rolled back"
    );
    let retry = send_attempt(replicas[1], "evt_pg_fail", 2, &failing).await;
    assert_eq!((retry.status, retry.body.as_str()), (200, "handled"));
    assert_eq!(
        rows(&check, "evt_pg_fail").await,
        1,
        "committed before the acknowledgement"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_terminated_connection_mid_handler_answers_non_2xx_and_commits_nothing() {
    let server = PostgresServer::start();
    let pid = Arc::new(AtomicI32::new(0));
    let addr = replica(&server, effects(pid.clone())).await;
    let check = server.pool(2).await;
    let body = message_with("evt_pg_term", "pid");
    let sent = body.clone();
    let in_flight = tokio::spawn(async move { send_attempt(addr, "evt_pg_term", 1, &sent).await });
    let started = Instant::now();
    while pid.load(Ordering::SeqCst) == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the handler never ran"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let terminated: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(pid.load(Ordering::SeqCst))
        .fetch_one(&check)
        .await
        .unwrap();
    assert!(terminated);
    let reply = in_flight.await.unwrap();
    assert!(
        !(200..300).contains(&reply.status),
        "{} {}",
        reply.status,
        reply.body
    );
    // The session watcher cancels the run (`run_cancelled`), unless the
    // handler's sleep ends first and its commit fails (`store_unavailable`).
    assert!(
        reply.status == 503
            && ["run_cancelled", "store_unavailable"].contains(&reply.body.as_str()),
        "{} {}",
        reply.status,
        reply.body
    );
    assert_eq!(rows(&check, "evt_pg_term").await, 0);
    pid.store(0, Ordering::SeqCst);
    let retry = send_attempt(addr, "evt_pg_term", 2, &body).await;
    assert_eq!((retry.status, retry.body.as_str()), (200, "handled"));
    assert_eq!(rows(&check, "evt_pg_term").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn postgres_restarted_during_a_run_of_deliveries_leaves_one_row_each() {
    let server = Arc::new(PostgresServer::start());
    let addr = replica(&server, effects(Arc::default())).await;
    let outage = server.clone();
    let restarted = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(400));
        outage.stop_fast();
        // Longer than a delivery waits for a connection (2 s), so that the
        // outage is answered, not waited out.
        std::thread::sleep(Duration::from_millis(4000));
        outage.start_again();
    });
    let mut unavailable = 0;
    for n in 0..20 {
        let id = format!("evt_pg_restart_{n:02}");
        let body = message_with(&id, "slow");
        let mut attempt = 1;
        loop {
            let reply = send_attempt(addr, &id, attempt, &body).await;
            if (200..300).contains(&reply.status) {
                break;
            }
            assert_eq!(reply.status, 503, "{id}: {} {}", reply.status, reply.body);
            unavailable += 1;
            attempt += 1;
            assert!(attempt < 200, "{id} was never handled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    restarted.await.unwrap();
    assert!(unavailable > 0, "the outage was seen as 503s");
    let check = server.pool(2).await;
    for n in 0..20 {
        let id = format!("evt_pg_restart_{n:02}");
        assert_eq!(rows(&check, &id).await, 1, "{id}");
    }
}

#[tokio::test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn an_applications_own_sqlx_migrations_run_before_and_after_the_crates() {
    let server = PostgresServer::start();
    let pool = server.pool(4).await;
    let dir = server.dir().join("app_migrations");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("1_orders.sql"),
        "CREATE TABLE orders (id text PRIMARY KEY);",
    )
    .unwrap();
    sqlx::migrate::Migrator::new(dir.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    let backend = PostgresBackend::new(pool.clone());
    backend.migrate().await.unwrap();
    std::fs::write(
        dir.join("2_refunds.sql"),
        "CREATE TABLE refunds (id text PRIMARY KEY);",
    )
    .unwrap();
    sqlx::migrate::Migrator::new(dir.as_path())
        .await
        .unwrap()
        .run(&pool)
        .await
        .unwrap();
    backend.migrate().await.unwrap();
    let app: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(
        app,
        [1, 2],
        "sqlx's table holds the application's versions only"
    );
    let ours: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM cariosan_webhooks.schema_migrations")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        ours,
        [1, 2, 3, 4, 5],
        "the crate's versions: handled deliveries, the inbox, its generations and deleted messages, its ordering keys, its bodies' table"
    );
}

#[test]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
fn two_receivers_started_at_once_on_an_empty_database_both_start_and_migrate_once() {
    let server = PostgresServer::start();
    let url = server.url();
    let receivers: Vec<ReceiverProcess> = std::thread::scope(|scope| {
        let started: Vec<_> = (0..2)
            .map(|_| scope.spawn(|| ReceiverProcess::start(&[("DATABASE_URL", url.as_str())])))
            .collect();
        started.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(receivers.len(), 2);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = server.pool(2).await;
        let versions: i64 =
            sqlx::query_scalar("SELECT count(*) FROM cariosan_webhooks.schema_migrations")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(
            versions, 5,
            "each of the crate's five migrations recorded once"
        );
        let tables: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'receiver_effects'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(tables, 1);
        for receiver in &receivers {
            let reply = send_signed(
                receiver.addr,
                "evt_01JDB844PINGPINGPINGPIN01",
                "webhook.ping",
                &fixture("events/webhook.ping.json"),
            )
            .await;
            assert_eq!(reply.status, 200, "{}", reply.body);
        }
        let effects: i64 = sqlx::query_scalar("SELECT count(*) FROM receiver_effects")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            effects, 1,
            "one run across both receivers; the other answered duplicate"
        );
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_receiver_killed_mid_handler_commits_nothing_and_the_retry_adds_one_row() {
    let server = PostgresServer::start();
    let url = server.url();
    let mut slow = ReceiverProcess::start(&[
        ("DATABASE_URL", url.as_str()),
        ("CARIOSAN_DEMO_DELAY_MS", "5000"),
    ]);
    let body = fixture("events/webhook.ping.json");
    let id = "evt_01JDB844PINGPINGPINGPIN01";
    let addr = slow.addr;
    let sent = body.clone();
    let in_flight = tokio::spawn(async move { send_signed(addr, id, "webhook.ping", &sent).await });
    let check = server.pool(2).await;
    // Wait until the delivery's transaction is open and has written.
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
    assert_eq!(
        in_flight.await.unwrap().status,
        0,
        "no answer from a killed receiver"
    );
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM receiver_effects WHERE delivery_id = $1")
            .bind(id)
            .fetch_one(&check)
            .await
            .unwrap()
    };
    assert_eq!(count().await, 0);
    let fresh = ReceiverProcess::start(&[("DATABASE_URL", url.as_str())]);
    let started = Instant::now();
    let reply = loop {
        // PostgreSQL aborts the killed receiver's transaction as soon as it
        // sees the connection close; until then the key is still held.
        let reply = send_signed(fresh.addr, id, "webhook.ping", &body).await;
        if reply.status != 503 || started.elapsed() > Duration::from_secs(10) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    assert_eq!(count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn ten_thousand_deliveries_against_two_replicas_sharing_postgres() {
    const DELIVERIES: usize = 10_000;
    let server = PostgresServer::start();
    let tally = Arc::new(Tally::default());
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let pool = server.pool(70).await;
        let backend = PostgresBackend::new(pool.clone());
        backend.migrate().await.unwrap();
        create_effects(&pool).await;
        let first = Webhooks::new().on(
            EventSelector::AllKnown,
            |event: Delivery<Event>, tx: Tx| async move {
                let mut conn = tx.conn().await?;
                sqlx::query("INSERT INTO effects (delivery_id, attempt) VALUES ($1, $2)")
                    .bind(event.id.as_str())
                    .bind(event.attempt.map(|a| a as i32))
                    .execute(&mut *conn)
                    .await?;
                HandlerResult::Ok(())
            },
        );
        let layer = CariosanWebhookLayer::new(SECRET)
            .handler_budget(BUDGET)
            .backend(backend)
            .max_concurrency(68);
        replicas.push(
            serve(Router::new().route(
                "/webhooks/cariosan",
                post_service(webhooks_after(first, tally.clone())).layer(layer),
            ))
            .await,
        );
    }
    let report = deliver_all(&replicas, tally.clone(), DELIVERIES, 64).await;
    check_acknowledged(&report, &tally, DELIVERIES);
    let check = server.pool(2).await;
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
    eprintln!(
        "{} requests, {} handler runs, {DELIVERIES} deliveries with one row each",
        report.requests,
        tally.runs.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (initdb, pg_ctl); .ci/run installs postgresql and runs the ignored tests"]
async fn a_tx_handler_runs_in_a_unit_test_against_a_transaction_the_test_opens() {
    use cariosan_webhooks::model::MessageCreated;
    use cariosan_webhooks::test_util::{delivery, samples};

    async fn save(event: Delivery<MessageCreated>, tx: Tx) -> HandlerResult {
        let mut conn = tx.conn().await?;
        sqlx::query("INSERT INTO effects (delivery_id) VALUES ($1)")
            .bind(event.message.id.as_str())
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    let server = PostgresServer::start();
    let pool = server.pool(2).await;
    create_effects(&pool).await;
    let tx = Tx::begin_for_test(&pool).await.unwrap();
    let event = delivery::<MessageCreated>(samples::message_created());
    let message = event.message.id.to_string();
    save(event, tx.clone()).await.unwrap();
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM effects WHERE delivery_id = $1")
        .bind(&message)
        .fetch_one(&mut *tx.conn().await.unwrap())
        .await
        .unwrap();
    assert_eq!(
        inside, 1,
        "the test reads the handler's write in its transaction"
    );
    assert_eq!(
        rows(&pool, &message).await,
        0,
        "uncommitted: nobody else sees it"
    );
    tx.rollback_for_test().await;
    assert_eq!(rows(&pool, &message).await, 0, "rolled back");
    let again = Tx::begin_for_test(&pool).await.unwrap();
    assert!(
        again.conn().await.is_ok(),
        "the pool's connection came back clean"
    );
}
