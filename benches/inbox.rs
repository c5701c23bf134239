//! The PostgreSQL inbox on this machine, against a local cluster the bench
//! starts (`synchronous_commit` on, PostgreSQL's default):
//!
//! - **ingest**: a server process pinned to core 0 that only verifies and
//!   stores (`Inbox::service` behind `VerificationLayer`), loaded by this
//!   process on core 1 with 16 keep-alive connections of new deliveries;
//!   beside it, the same `INSERT` sent straight from 16 sqlx tasks (what the
//!   database allows), and that `INSERT` with a `pg_notify` (the cost of
//!   waking other replicas' workers by `LISTEN`/`NOTIFY`);
//! - **workers**: the rows the ingest stored, drained by 4 and by 8 workers
//!   whose handler inserts one row in the row's transaction;
//! - **ordering**: 8 workers draining 3,000 of those rows unordered, keyed
//!   over 500 keys, and all under one hot key, interleaved in each round;
//! - **wake-up**: from a stored row to its handler starting, for a row this
//!   process stored (its workers are woken at once) and for one another
//!   replica stored (found by the 500 ms poll).
//!
//! Medians of 3 rounds. `cargo bench -p cariosan-webhooks-benches --bench
//! inbox` (about 2 minutes).

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cariosan_webhooks::dispatch::EventSelector;
use cariosan_webhooks::model::Event;
use cariosan_webhooks::store::postgres::sqlx::{self, postgres::PgPoolOptions, PgPool};
use cariosan_webhooks::store::postgres::{Inbox, Tx};
use cariosan_webhooks::test_util::TestDelivery;
use cariosan_webhooks::verification::VerificationLayer;
use cariosan_webhooks::{Delivery, HandlerResult, Webhooks};

mod support;

#[path = "../tests/common/postgres_server.rs"]
#[allow(dead_code)]
mod postgres_server;

use support::load::{free_port, load, signed_pool, stat_ticks, stop, wait_for};
use support::SECRET;

const INGEST_RUN: Duration = Duration::from_secs(5);
const ROUNDS: usize = 3;
const CONNECTIONS: usize = 16;
const ORDERED_ROWS: i64 = 3000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--serve-ingest") {
        serve_ingest(args[at + 1].parse().unwrap(), &args[at + 2]);
        return;
    }
    if args.iter().any(|a| a == "--test") || !args.iter().any(|a| a == "--bench") {
        println!("inbox: run with `cargo bench --bench inbox`");
        return;
    }
    let database = postgres_server::PostgresServer::start();
    let url = database.url();
    support::load::pin_to_core_1();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let pool = runtime.block_on(async {
        let pool = PgPoolOptions::new()
            .max_connections(24)
            .connect(&url)
            .await
            .unwrap();
        let inbox = Inbox::new(pool.clone());
        inbox.migrate().await.unwrap();
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS effects (delivery_id text NOT NULL, event_type text NOT NULL);
             CREATE TABLE raw_inbox (LIKE cariosan_webhooks.inbox INCLUDING ALL);
             CREATE TABLE saved_bodies (LIKE cariosan_webhooks.inbox_bodies INCLUDING ALL);
             CREATE TABLE raw_bodies (LIKE cariosan_webhooks.inbox_bodies INCLUDING ALL,
               FOREIGN KEY (tenant, delivery_id) REFERENCES raw_inbox (tenant, delivery_id) ON DELETE CASCADE);",
        )
        .execute(&pool)
        .await
        .unwrap();
        let commit: String = sqlx::query_scalar("SHOW synchronous_commit")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(commit, "on");
        pool
    });
    if std::env::var_os("CARIOSAN_INBOX_PROFILE").is_some() {
        runtime.block_on(profile(&pool));
        return;
    }
    if let Some(seconds) = std::env::var("CARIOSAN_INBOX_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        runtime.block_on(soak(&pool, Duration::from_secs(seconds)));
        return;
    }
    let signed = Arc::new(signed_pool(200_000));
    let body = support::compact_reply();

    let mut ingest = Vec::new();
    let mut raw = Vec::new();
    let mut notify = Vec::new();
    let mut drain = [Vec::new(), Vec::new()];
    let mut drain_async = Vec::new();
    let mut ordered = [Vec::new(), Vec::new(), Vec::new()];
    // The same drain without waiting for the WAL flush at commit: how much
    // of the workers' time is the two commits per delivery.
    let async_commit = runtime.block_on(async {
        let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
        PgPoolOptions::new()
            .max_connections(24)
            .connect_with(options.options([("synchronous_commit", "off")]))
            .await
            .unwrap()
    });
    for _ in 0..ROUNDS {
        runtime.block_on(truncate(&pool));
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut server = Command::new("taskset")
            .args(["-c", "0"])
            .arg(std::env::current_exe().unwrap())
            .args(["--serve-ingest", &addr.to_string(), &url])
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        wait_for(addr);
        let next = Arc::new(AtomicUsize::new(0));
        let result = runtime.block_on(load(
            addr,
            INGEST_RUN,
            CONNECTIONS,
            signed.clone(),
            next.clone(),
            &server,
        ));
        stop(&mut server);
        assert!(
            next.load(Ordering::Relaxed) < signed.len(),
            "ran out of ids"
        );
        let stored = runtime.block_on(count(&pool, "SELECT count(*) FROM cariosan_webhooks.inbox"));
        ingest.push((result, stored));

        raw.push(runtime.block_on(raw_inserts(&pool, &body, false)));
        notify.push(runtime.block_on(raw_inserts(&pool, &body, true)));

        for (at, workers) in [4, 8].into_iter().enumerate() {
            drain[at].push(runtime.block_on(drain_with(&pool, workers, stored)));
        }
        drain_async.push(runtime.block_on(drain_with(&async_commit, 8, stored)));
    }
    // After the ingest rounds, whose signed deliveries must stay within
    // the signature tolerance; on the rows the last round stored.
    let stored_last = ingest.last().map_or(0, |(_, stored)| *stored);
    for _ in 0..ROUNDS {
        for (at, keys) in [None, Some(500), Some(1)].into_iter().enumerate() {
            ordered[at].push(runtime.block_on(drain_keyed(
                &pool,
                keys,
                stored_last.min(ORDERED_ROWS),
            )));
        }
    }
    let wake = runtime.block_on(wake_ups(&url));

    ingest.sort_by(|a, b| a.0.rps.total_cmp(&b.0.rps));
    let (median, stored) = &ingest[ROUNDS / 2];
    println!("| what | deliveries/s | p50 | p99 | server CPU µs/delivery |");
    println!("|---|---|---|---|---|");
    println!(
        "| ingest over HTTP, {CONNECTIONS} connections (verify, INSERT, 202) | {:.0} | {:.0} µs | {:.0} µs | {:.1} |",
        median.rps, median.p50, median.p99, median.cpu_us
    );
    println!(
        "| the same INSERT from {CONNECTIONS} sqlx tasks, no HTTP | {:.0} | | | |",
        median_of(&mut raw)
    );
    println!(
        "| that INSERT with a pg_notify | {:.0} | | | |",
        median_of(&mut notify)
    );
    println!();
    println!("| workers (a handler that inserts one row) | deliveries/s | PostgreSQL CPU µs/delivery | worker process CPU µs/delivery |");
    println!("|---|---|---|---|");
    for (workers, runs) in [4, 8].into_iter().zip(drain.iter_mut()) {
        print_drain(&format!("{workers} workers, {stored} rows"), runs);
    }
    print_drain(
        "8 workers, `synchronous_commit` off (where the time goes)",
        &mut drain_async,
    );
    println!();
    println!("| 8 workers, {ORDERED_ROWS} rows | deliveries/s | PostgreSQL CPU µs/delivery | worker process CPU µs/delivery |");
    println!("|---|---|---|---|");
    for (name, runs) in ["unordered", "ordered, 500 keys", "ordered, one hot key"]
        .into_iter()
        .zip(ordered.iter_mut())
    {
        print_drain(name, runs);
    }
    println!();
    println!(
        "| wake-up, stored row to handler start (median of {}) | ms |",
        wake.0.len()
    );
    println!("|---|---|");
    println!(
        "| stored by this process (local wake-up) | {:.1} |",
        median_ms(wake.0)
    );
    println!(
        "| stored by another replica (500 ms poll) | {:.1} |",
        median_ms(wake.1)
    );
}

fn print_drain(name: &str, runs: &mut [Drain]) {
    runs.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let median = runs[runs.len() / 2];
    println!(
        "| {name} | {:.0} | {:.0} | {:.0} |",
        median.rate, median.postgres_cpu_us, median.worker_cpu_us
    );
}

fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn median_ms(mut values: Vec<Duration>) -> f64 {
    values.sort();
    values[values.len() / 2].as_secs_f64() * 1e3
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn truncate(pool: &PgPool) {
    sqlx::raw_sql("TRUNCATE cariosan_webhooks.inbox, cariosan_webhooks.inbox_bodies, raw_inbox, raw_bodies, saved_bodies, effects")
        .execute(pool)
        .await
        .unwrap();
}

/// The ingest service alone, as a receiver in inbox mode serves it.
fn serve_ingest(addr: SocketAddr, url: &str) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect(url)
            .await
            .unwrap();
        let inbox = Inbox::new(pool);
        let app = axum::Router::new().route(
            "/webhooks/cariosan",
            axum::routing::post_service(inbox.service()).layer(VerificationLayer::new(SECRET)),
        );
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        axum::serve(listener, app).await.unwrap();
    });
}

/// The ingest's INSERT sent straight from `CONNECTIONS` tasks for the
/// ingest run's length, into a copy of the table; deliveries/s.
async fn raw_inserts(pool: &PgPool, body: &[u8], with_notify: bool) -> f64 {
    // What ingest's one statement does: the deletion check (under the
    // message's deletion lock), the row, its body.
    let stored = "late AS (SELECT cariosan_webhooks.deletion_recorded(pg_catalog.hashtextextended(\
           'cariosan-webhooks deleted cariosan_webhooks' || pg_catalog.chr(31) || '' || pg_catalog.chr(31) || 'msg_1', 0), \
           '', 'msg_1', '2000') AS gone), \
         row AS (INSERT INTO raw_inbox (delivery_id, event_type, message_ids, signed_at, sender_attempt, due_at) \
           SELECT $1, 'message.created', ARRAY['msg_1'], 1, 1, now() FROM late WHERE NOT late.gone \
           ON CONFLICT DO NOTHING RETURNING tenant, delivery_id)";
    let sql = if with_notify {
        format!(
            "WITH {stored}, kept AS (INSERT INTO raw_bodies (tenant, delivery_id, body) \
               SELECT tenant, delivery_id, $2 FROM row) \
             SELECT pg_notify('cariosan_webhooks_inbox', '') FROM row"
        )
    } else {
        format!(
            "WITH {stored} INSERT INTO raw_bodies (tenant, delivery_id, body) \
             SELECT tenant, delivery_id, $2 FROM row"
        )
    };
    let sql: Arc<str> = sql.into();
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = started + INGEST_RUN;
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|task| {
            let (pool, done, body, sql) = (pool.clone(), done.clone(), body.to_vec(), sql.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    sqlx::query(&sql)
                        .bind(format!("evt_raw_{with_notify}_{task}_{n}"))
                        .bind(&body)
                        .execute(&pool)
                        .await
                        .unwrap();
                    n += 1;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// Handler runs that returned, counted here so that waiting for a drain
/// costs the database nothing.
static RAN: AtomicUsize = AtomicUsize::new(0);

async fn insert_effect(event: Delivery<Event>, tx: Tx) -> HandlerResult {
    let mut conn = tx.conn().await?;
    sqlx::query("INSERT INTO effects (delivery_id, event_type) VALUES ($1, $2)")
        .bind(event.id.as_str())
        .bind(event.event_type())
        .execute(&mut *conn)
        .await?;
    RAN.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Queues `rows` stored rows again, keyed over `keys` keys (in received
/// order) or unkeyed, the rest done, then times 8 workers draining them.
async fn drain_keyed(pool: &PgPool, keys: Option<i64>, rows: i64) -> Drain {
    sqlx::query(
        "WITH picked AS (SELECT delivery_id, row_number() OVER (ORDER BY delivery_id) AS n \
           FROM cariosan_webhooks.inbox) \
         UPDATE cariosan_webhooks.inbox AS row SET \
           ordering_key = CASE WHEN $2::bigint IS NULL THEN NULL ELSE 'key ' || (picked.n % $2) END, \
           event_at = row.received_at, \
           status = CASE WHEN picked.n <= $1 THEN 'queued' ELSE 'done' END \
         FROM picked WHERE picked.delivery_id = row.delivery_id",
    )
    .bind(rows)
    .bind(keys)
    .execute(pool)
    .await
    .unwrap();
    drain_queued(pool, 8, rows).await
}

/// Queues every stored row again (their bodies put back), then times
/// `workers` workers draining them; deliveries/s.
async fn drain_with(pool: &PgPool, workers: usize, rows: i64) -> Drain {
    sqlx::raw_sql("UPDATE cariosan_webhooks.inbox SET status = 'queued', ordering_key = NULL")
        .execute(pool)
        .await
        .unwrap();
    drain_queued(pool, workers, rows).await
}

/// Times `workers` workers draining the queued rows, `rows` of them, due
/// in the order they arrived.
async fn drain_queued(pool: &PgPool, workers: usize, rows: i64) -> Drain {
    // Handled rows drop their bodies, as by default: they are put back
    // from a copy for the next drain.
    sqlx::raw_sql(
        "TRUNCATE effects;
         INSERT INTO saved_bodies SELECT * FROM cariosan_webhooks.inbox_bodies ON CONFLICT DO NOTHING;
         INSERT INTO cariosan_webhooks.inbox_bodies SELECT * FROM saved_bodies ON CONFLICT DO NOTHING;
         UPDATE cariosan_webhooks.inbox SET outcome = NULL, attempts = 0,
           recorded_attempts = 0, due_at = received_at, finished_at = NULL, error_kind = NULL
           WHERE status = 'queued';
         DELETE FROM cariosan_webhooks.ordering_marks;",
    )
    .execute(pool)
    .await
    .unwrap();
    let inbox = Inbox::new(pool.clone());
    let ran = RAN.load(Ordering::Relaxed);
    let cpu_before = (postgres_ticks(), own_ticks());
    let started = Instant::now();
    let handle = inbox
        .workers(Webhooks::new().on(EventSelector::AllKnown, insert_effect))
        .concurrency(workers)
        .poll_interval(Duration::from_millis(5))
        .start();
    // The last runs' commits follow their handlers by a statement or two.
    while RAN.load(Ordering::Relaxed) - ran < rows as usize {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    while count(pool, "SELECT count(*) FROM effects").await < rows {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let took = started.elapsed();
    let cpu_after = (postgres_ticks(), own_ticks());
    handle.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        count(
            pool,
            "SELECT count(*) FROM cariosan_webhooks.inbox WHERE status = 'queued'"
        )
        .await,
        0
    );
    assert_eq!(count(pool, "SELECT count(*) FROM effects").await, rows);
    let per_delivery =
        |before: u64, after: u64| (after - before) as f64 / 100.0 * 1e6 / rows as f64;
    Drain {
        rate: rows as f64 / took.as_secs_f64(),
        postgres_cpu_us: per_delivery(cpu_before.0, cpu_after.0),
        worker_cpu_us: per_delivery(cpu_before.1, cpu_after.1),
    }
}

#[derive(Clone, Copy)]
struct Drain {
    rate: f64,
    /// CPU of every PostgreSQL process, per delivery.
    postgres_cpu_us: f64,
    /// CPU of this process (workers and handlers, and the bench's polling).
    worker_cpu_us: f64,
}

fn own_ticks() -> u64 {
    stat_ticks(&std::fs::read_to_string("/proc/self/stat").unwrap())
}

/// The ticks of every process named `postgres` (the cluster's backends and
/// its background processes).
fn postgres_ticks() -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if stat.contains("(postgres)") {
            total += stat_ticks(&stat);
        }
    }
    total
}

/// Stored row to handler start, 15 times each: stored through the workers'
/// own `Inbox` (this process), and through another `Inbox` on its own pool
/// (another replica).
async fn wake_ups(url: &str) -> (Vec<Duration>, Vec<Duration>) {
    let connect = || async {
        PgPoolOptions::new()
            .max_connections(6)
            .connect(url)
            .await
            .unwrap()
    };
    let own = Inbox::new(connect().await);
    let other = Inbox::new(connect().await);
    let started_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let seen = started_at.clone();
    let handle = own
        .workers(Webhooks::new().on_any(move |_| {
            let seen = seen.clone();
            async move {
                *seen.lock().unwrap() = Some(Instant::now());
                Ok(())
            }
        }))
        .start();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let template = support::compact_reply();
    let mut local = Vec::new();
    let mut remote = Vec::new();
    for n in 0..30 {
        let id = format!("evt_wake_{n}");
        let body = String::from_utf8(template.clone())
            .unwrap()
            .replace(support::REPLY_ID, &id);
        let delivery = TestDelivery::json(body.clone())
            .secret(SECRET)
            .verify()
            .unwrap();
        *started_at.lock().unwrap() = None;
        let via = if n % 2 == 0 { &own } else { &other };
        let stored = Instant::now();
        via.ingest(&delivery, body.as_bytes()).await.unwrap();
        let ran = loop {
            if let Some(at) = *started_at.lock().unwrap() {
                break at;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        let waited = ran.saturating_duration_since(stored);
        if n % 2 == 0 {
            local.push(waited);
        } else {
            remote.push(waited);
        }
        // Let the poll's phase drift, so that remote samples spread over it.
        tokio::time::sleep(Duration::from_millis(37 * (n % 7) as u64)).await;
    }
    handle.shutdown(Duration::from_secs(5)).await;
    (local, remote)
}

/// Where the database's time goes in a drain: stores rows through
/// `Inbox::ingest`, drains them with 8 workers, and prints the statements
/// by total time (needs `CARIOSAN_PG_OPTIONS="-c
/// shared_preload_libraries=pg_stat_statements"`).
async fn profile(pool: &PgPool) {
    let rows: i64 = std::env::var("CARIOSAN_INBOX_PROFILE")
        .ok()
        .and_then(|rows| rows.parse().ok())
        .unwrap_or(5000);
    sqlx::raw_sql("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(pool)
        .await
        .unwrap();
    let stored_at = Instant::now();
    store_many(&Inbox::new(pool.clone()), "profile", rows as usize).await;
    println!("stored {rows} rows in {:?}", stored_at.elapsed());
    for round in 0..2 {
        sqlx::raw_sql("SELECT pg_stat_statements_reset()")
            .execute(pool)
            .await
            .unwrap();
        let drain = drain_with(pool, 8, rows).await;
        println!(
            "round {round}: {:.0} deliveries/s, PostgreSQL {:.0} µs/delivery, workers {:.0} µs/delivery",
            drain.rate, drain.postgres_cpu_us, drain.worker_cpu_us
        );
    }
    let top: Vec<(i64, f64, String)> = sqlx::query_as(
        "SELECT calls, total_exec_time + total_plan_time, query FROM pg_stat_statements \
         ORDER BY total_exec_time + total_plan_time DESC LIMIT 20",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    println!("| calls | µs per delivery | statement |");
    for (calls, total_ms, query) in top {
        let query: String = query.split_whitespace().collect::<Vec<_>>().join(" ");
        println!(
            "| {calls} | {:.1} | {} |",
            total_ms * 1000.0 / rows as f64,
            query.chars().take(160).collect::<String>()
        );
    }
}

/// Stores `count` new deliveries through `Inbox::ingest` from 16 tasks,
/// ids from `prefix`; when each was stored, by id.
async fn store_many(inbox: &Inbox, prefix: &str, count: usize) -> Vec<(String, Instant)> {
    let template = String::from_utf8(support::compact_reply()).unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    let stored = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (inbox, next, template, stored) = (
                inbox.clone(),
                next.clone(),
                template.clone(),
                stored.clone(),
            );
            let prefix = prefix.to_owned();
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= count {
                        break;
                    }
                    let id = format!("evt_{prefix}_{n:09}");
                    let body = template.replace(support::REPLY_ID, &id);
                    let delivery = TestDelivery::json(body.clone())
                        .secret(SECRET)
                        .verify()
                        .unwrap();
                    inbox.ingest(&delivery, body.as_bytes()).await.unwrap();
                    stored.lock().unwrap().push((id, Instant::now()));
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(stored).unwrap().into_inner().unwrap()
}

/// Holds the rate over time: arrivals at half the rate 8 workers drain
/// (measured first), for `length`, with default autovacuum. Per minute:
/// what arrived and ran, the time from a stored row to its handler's
/// start (p50, p99), and the inbox's dead tuples.
async fn soak(pool: &PgPool, length: Duration) {
    let inbox = Inbox::new(pool.clone());
    store_many(&inbox, "soak_warm", 5000).await;
    let drained = drain_with(pool, 8, 5000).await;
    let rate = std::env::var("CARIOSAN_INBOX_SOAK_RATE")
        .ok()
        .and_then(|rate| rate.parse().ok())
        .unwrap_or(drained.rate / 2.0);
    println!(
        "drain rate {:.0}/s; arrivals at {rate:.0}/s for {length:?}",
        drained.rate
    );
    let started_at: Arc<Mutex<std::collections::HashMap<String, Instant>>> = Arc::default();
    let waits: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let handler = {
        let (started_at, waits) = (started_at.clone(), waits.clone());
        move |event: Delivery<Event>, tx: Tx| {
            let started = Instant::now();
            if let Some(at) = started_at.lock().unwrap().remove(event.id.as_str()) {
                waits.lock().unwrap().push(started - at);
            }
            async move { insert_effect(event, tx).await }
        }
    };
    let workers = inbox
        .workers(Webhooks::new().on(EventSelector::AllKnown, handler))
        .concurrency(8)
        .start();
    let template = String::from_utf8(support::compact_reply()).unwrap();
    let dead = || async {
        let (inbox, bodies): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = 'cariosan_webhooks' AND relname = 'inbox'), \
                    (SELECT n_dead_tup FROM pg_stat_user_tables WHERE schemaname = 'cariosan_webhooks' AND relname = 'inbox_bodies')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (inbox, bodies)
    };
    let (dead_inbox, dead_bodies) = dead().await;
    println!("| minute | arrived | handled | arrival → handler start p50 | p99 | inbox dead tuples | inbox_bodies dead tuples | inbox rows |");
    println!("|---|---|---|---|---|---|---|---|");
    println!("| 0 | | | | | {dead_inbox} | {dead_bodies} | |");
    let began = Instant::now();
    let mut sent = 0usize;
    let mut minute = 1;
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let ingesting = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    let mut stored_in_minute = 0usize;
    while began.elapsed() < length {
        ticker.tick().await;
        let due = (began.elapsed().as_secs_f64() * rate) as usize;
        while sent < due {
            let id = format!("evt_soak_{sent:09}");
            sent += 1;
            stored_in_minute += 1;
            let body = template.replace(support::REPLY_ID, &id);
            let (inbox, started_at) = (inbox.clone(), started_at.clone());
            let permit = ingesting.clone().acquire_owned().await.unwrap();
            tokio::spawn(async move {
                let delivery = TestDelivery::json(body.clone())
                    .secret(SECRET)
                    .verify()
                    .unwrap();
                started_at.lock().unwrap().insert(id, Instant::now());
                inbox.ingest(&delivery, body.as_bytes()).await.unwrap();
                drop(permit);
            });
        }
        if began.elapsed() >= Duration::from_secs(60 * minute) {
            let mut taken = std::mem::take(&mut *waits.lock().unwrap());
            taken.sort();
            let at = |q: f64| {
                taken
                    .get(((taken.len() as f64 - 1.0) * q) as usize)
                    .map_or(0.0, |d| d.as_secs_f64() * 1e3)
            };
            let (dead_inbox, dead_bodies) = dead().await;
            let rows: i64 = count(pool, "SELECT count(*) FROM cariosan_webhooks.inbox").await;
            println!(
                "| {minute} | {stored_in_minute} | {} | {:.1} ms | {:.1} ms | {dead_inbox} | {dead_bodies} | {rows} |",
                taken.len(),
                at(0.5),
                at(0.99)
            );
            stored_in_minute = 0;
            minute += 1;
        }
    }
    workers.shutdown(Duration::from_secs(10)).await;
    let autovacuums: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, autovacuum_count, autoanalyze_count FROM pg_stat_user_tables \
         WHERE schemaname = 'cariosan_webhooks' AND relname IN ('inbox', 'inbox_bodies') ORDER BY relname",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    println!("autovacuum and autoanalyze runs: {autovacuums:?}");
}
