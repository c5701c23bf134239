//! The receiver a user deploys: verifies Cariosan deliveries on
//! `POST /webhooks/cariosan`, answers `GET /healthz`, and prints one line
//! per handler run, `handled <event type> <delivery id> <summary>` (a
//! duplicate delivery runs nothing and prints nothing). Logs go to stderr,
//! one `info` line per delivery.
//!
//! ```text
//! CARIOSAN_WEBHOOK_SECRET=whsec_... CARIOSAN_WEBHOOK_ADDR=0.0.0.0:3000 \
//!     cargo run --example receiver
//! ```
//!
//! | variable | default | what it sets |
//! |---|---|---|
//! | `CARIOSAN_WEBHOOK_SECRET` | required, except on a loopback address (a labelled demo secret) | the signing secret |
//! | `CARIOSAN_WEBHOOK_SECRETS_FILE` | unset | instead of the secret: a file of secrets, one per line, newest first, read again on `SIGHUP` |
//! | `CARIOSAN_WEBHOOK_ADDR` | `127.0.0.1:3000` | where to listen |
//! | `DATABASE_URL` | unset: in memory | record deliveries in PostgreSQL (feature `postgres`), in each delivery's own transaction |
//! | `CARIOSAN_WEBHOOK_MODE` | `transactional` | with `DATABASE_URL`: `transactional` runs handlers inline in each delivery's transaction; `inbox` stores each delivery, answers `202 queued`, and runs it from workers |
//! | `CARIOSAN_INBOX_WORKERS` | 4 | inbox mode: deliveries run at once |
//! | `CARIOSAN_INBOX_FIRST_RETRY_MS` | 10000 | inbox mode: the wait after the first failed run, doubling up to 1 h |
//! | `CARIOSAN_INBOX_MAX_ATTEMPTS` | 10 | inbox mode: runs before a delivery is dead |
//! | `CARIOSAN_INBOX_POLL_MS` | 500 | inbox mode: how often idle workers look for rows another replica stored, or retries come due |
//! | `CARIOSAN_INBOX_KEEP_BODIES` | false | inbox mode: keep handled bodies for the retention (3 days), for replay |
//! | `REDIS_URL` | unset: in memory | claim deliveries in Redis (feature `redis`), shared by replicas |
//! | `CARIOSAN_WEBHOOK_LEASE_SECS` | 30 | how long a claim outlives a crashed receiver |
//! | `CARIOSAN_WEBHOOK_MAX_RUN_SECS` | 300 | the hard limit of a run |
//! | `CARIOSAN_WEBHOOK_HEADER_TIMEOUT_MS` | 10000 | how long a client may take to send its headers |
//! | `CARIOSAN_WEBHOOK_MAX_CONNECTIONS` | 1024 | connections served at once |
//! | `CARIOSAN_DEMO_DELAY_MS` | 0 | makes every handler take that long, to watch the budget and the retries |
//!
//! With `DATABASE_URL`, the receiver applies the crate's migrations at start
//! and, under the same advisory lock, creates an application table
//! `receiver_effects (delivery_id, event_type, handled_at)` with no unique
//! constraint; every handler run inserts one row into it inside the
//! delivery's transaction (in inbox mode, the row's), then waits
//! `CARIOSAN_DEMO_DELAY_MS`, then prints its line, so a duplicate run would
//! show as a second row. `CARIOSAN_DEMO_ABORT=1` aborts the process right
//! after that insert, on every run: a crash loop, for the fault tests.
//!
//! Built with `--features metrics`, it also serves `GET /metrics` in the
//! Prometheus text format.
//!
//! `SIGTERM` (a container's stop) or Ctrl-C stops accepting, lets running
//! handlers finish for up to 9 s, and cancels the rest, freeing their
//! deliveries for Cariosan's retry (in inbox mode, rolled back and due
//! again at once).

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use cariosan_webhooks::delivery::shutdown_signal;
use cariosan_webhooks::{CariosanWebhookLayer, Webhooks};
use tracing_subscriber::EnvFilter;

/// Used only when `CARIOSAN_WEBHOOK_SECRET` is unset and the receiver
/// listens on a loopback address, so that the example runs with no setup.
/// Never deploy with it.
const DEMO_SECRET: &str = "whsec_DEMO_ONLY_not_a_real_secret_0000";

type Error = Box<dyn std::error::Error>;

/// A variable parsed as `T`, or `None` when unset; an error when it does
/// not parse, rather than a silent default.
fn var<T: FromStr>(name: &str) -> Result<Option<T>, Error> {
    match std::env::var(name) {
        Err(_) => Ok(None),
        Ok(text) => text
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{name}={text:?} is not a valid value").into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let addr: SocketAddr = var("CARIOSAN_WEBHOOK_ADDR")?.unwrap_or(([127, 0, 0, 1], 3000).into());
    let secrets_file =
        std::env::var_os("CARIOSAN_WEBHOOK_SECRETS_FILE").map(std::path::PathBuf::from);
    if secrets_file.is_some() && std::env::var_os("CARIOSAN_WEBHOOK_SECRET").is_some() {
        return Err(
            "set CARIOSAN_WEBHOOK_SECRETS_FILE or CARIOSAN_WEBHOOK_SECRET, not both".into(),
        );
    }
    let secret = match std::env::var("CARIOSAN_WEBHOOK_SECRET") {
        Ok(secret) => secret,
        Err(_) if secrets_file.is_some() => String::new(),
        Err(_) if addr.ip().is_loopback() => {
            tracing::warn!("CARIOSAN_WEBHOOK_SECRET is unset: using the DEMO secret {DEMO_SECRET:?} on the loopback address {addr}; never deploy with it");
            DEMO_SECRET.to_owned()
        }
        Err(_) => {
            return Err(format!(
                "CARIOSAN_WEBHOOK_SECRET is unset: refusing to listen on {addr} with the public demo secret (set the secret, or listen on 127.0.0.1)"
            )
            .into())
        }
    };
    let delay = var::<u64>("CARIOSAN_DEMO_DELAY_MS")?.map(Duration::from_millis);
    let report: support::Report = Arc::new(|line| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    });

    let mut layer = match &secrets_file {
        Some(path) => {
            let secrets = support::secrets_file::read(path)
                .map_err(|e| format!("CARIOSAN_WEBHOOK_SECRETS_FILE: {e}"))?;
            let secrets = cariosan_webhooks::verify::Secrets::new(secrets)?;
            let layer = CariosanWebhookLayer::from_verifier(
                cariosan_webhooks::verify::Verifier::from_secrets(secrets),
            );
            support::secrets_file::reload_on_sighup(path.clone(), layer.secrets().clone());
            layer
        }
        None => CariosanWebhookLayer::try_new(secret)?,
    };
    if let Some(secs) = var("CARIOSAN_WEBHOOK_LEASE_SECS")? {
        layer = layer.lease(Duration::from_secs(secs));
    }
    if let Some(secs) = var("CARIOSAN_WEBHOOK_MAX_RUN_SECS")? {
        layer = layer.max_run_time(Duration::from_secs(secs));
    }
    let max_run_time = var::<u64>("CARIOSAN_WEBHOOK_MAX_RUN_SECS")?.map(Duration::from_secs);
    let finish = move |first: Webhooks| support::webhooks_after(first, report, delay);
    let (route, stop) = with_backend(layer, max_run_time, finish).await?;
    let app = Router::new()
        .route("/webhooks/cariosan", route)
        .route("/healthz", get(|| async { "ok" }));
    let app = with_metrics(app)?;

    let mut limits = support::serve::Limits::default();
    if let Some(ms) = var("CARIOSAN_WEBHOOK_HEADER_TIMEOUT_MS")? {
        limits.header_read_timeout = Duration::from_millis(ms);
    }
    if let Some(max) = var("CARIOSAN_WEBHOOK_MAX_CONNECTIONS")? {
        limits.max_connections = max;
    }
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(
        "listening on http://{}/webhooks/cariosan",
        listener.local_addr()?
    );
    // One signal starts both the drain and the server's graceful stop, so
    // that from the signal to exit takes at most the drain deadline plus
    // 1 s; the server waits a little longer for the answers to be written.
    limits.stop_timeout = drain_deadline() + cariosan_webhooks::delivery::CANCEL_GRACE * 2;
    let (stopping, stopped) = tokio::sync::watch::channel(false);
    let signal = shutdown_signal();
    let drained = tokio::spawn(async move {
        signal.await;
        let _ = stopping.send(true);
        stop().await;
    });
    let mut server_stop = stopped;
    let server_stops = async move {
        let _ = server_stop.wait_for(|stopping| *stopping).await;
    };
    support::serve::serve(listener, app, limits, server_stops).await;
    let _ = drained.await;
    Ok(())
}

/// `GET /metrics` in the Prometheus text format, with the crate's
/// recommended histogram buckets (without them the histograms are
/// summaries, and the README's lag alert matches nothing).
#[cfg(feature = "metrics")]
fn with_metrics(app: Router) -> Result<Router, Error> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let mut builder = PrometheusBuilder::new();
    for (name, buckets) in cariosan_webhooks::metrics::HISTOGRAM_BUCKETS {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), buckets)?;
    }
    let handle = builder.install_recorder()?;
    Ok(app.route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            async move { handle.render() }
        }),
    ))
}

#[cfg(not(feature = "metrics"))]
fn with_metrics(app: Router) -> Result<Router, Error> {
    Ok(app)
}

/// What stops the deliveries in progress once the server has stopped.
type Stop = Box<dyn FnOnce() -> futures_util::future::BoxFuture<'static, ()> + Send>;

/// The application's handlers after those the backend needs first.
type Finish = Box<dyn FnOnce(Webhooks) -> Webhooks + Send>;

/// The webhook route for the backend the environment asks for, and how to
/// stop it: PostgreSQL with `DATABASE_URL` (transactional or inbox), Redis
/// with `REDIS_URL`, memory otherwise.
async fn with_backend(
    layer: CariosanWebhookLayer,
    max_run_time: Option<Duration>,
    finish: impl FnOnce(Webhooks) -> Webhooks + Send + 'static,
) -> Result<(axum::routing::MethodRouter, Stop), Error> {
    if std::env::var_os("DATABASE_URL").is_some() {
        return postgres::with_postgres(layer, max_run_time, Box::new(finish)).await;
    }
    Ok(inline(with_store(layer).await?, finish(Webhooks::new())))
}

/// How long stopping waits for the runs in progress before it cancels
/// them: `CARIOSAN_WEBHOOK_DRAIN_SECS`, 8 s by default, so that with the
/// 1 s to cancel the rest a stop fits `docker stop`'s 10 s.
fn drain_deadline() -> Duration {
    std::env::var("CARIOSAN_WEBHOOK_DRAIN_SECS")
        .ok()
        .and_then(|secs| secs.parse().ok())
        .map_or(Duration::from_secs(8), Duration::from_secs)
}

/// Handlers run inline, under the delivery layer; stopping drains them for
/// the drain deadline.
fn inline(layer: CariosanWebhookLayer, webhooks: Webhooks) -> (axum::routing::MethodRouter, Stop) {
    let shutdown = layer.shutdown_handle();
    let stop: Stop = Box::new(move || {
        Box::pin(async move {
            let drained = shutdown.drain(drain_deadline()).await;
            tracing::info!(
                abandoned = drained.abandoned,
                stuck = drained.stuck,
                "stopped"
            );
        })
    });
    (layer.route(webhooks), stop)
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::sync::OnceLock;
    use std::time::Duration;

    use axum::routing::{post_service, MethodRouter};
    use cariosan_webhooks::dispatch::EventSelector;
    use cariosan_webhooks::model::{Event, UnknownEvent};
    use cariosan_webhooks::store::postgres::{
        sqlx, Inbox, OrderingKeys, PostgresBackend, RetrySchedule, StalePolicy, Tx,
    };
    use cariosan_webhooks::{CariosanWebhookLayer, Delivery, HandlerResult, Webhooks};

    use super::{var, Error, Finish, Stop};

    /// Connections in the pool; each running delivery holds one.
    const POOL: u32 = 32;

    pub(super) async fn with_postgres(
        layer: CariosanWebhookLayer,
        max_run_time: Option<Duration>,
        finish: Finish,
    ) -> Result<(MethodRouter, Stop), Error> {
        let mode =
            std::env::var("CARIOSAN_WEBHOOK_MODE").unwrap_or_else(|_| "transactional".into());
        if mode != "transactional" && mode != "inbox" {
            return Err(format!(
                "CARIOSAN_WEBHOOK_MODE={mode:?}: choose \"transactional\" or \"inbox\""
            )
            .into());
        }
        let url = std::env::var("DATABASE_URL")?;
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(POOL)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&url)
            .await
            .map_err(|e| format!("PostgreSQL at DATABASE_URL: {e}"))?;
        let first = Webhooks::new()
            .on(EventSelector::AllKnown, record)
            .on(EventSelector::AllUnknown, record_unknown);
        if mode == "inbox" {
            return with_inbox(layer, pool, max_run_time, finish(first)).await;
        }
        let backend = PostgresBackend::new(pool.clone());
        backend.migrate().await?;
        create_effects_table(&pool, backend.migration_lock_key()).await?;
        let pruner = backend.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                if let Err(error) = pruner.prune().await {
                    tracing::warn!(%error, "could not prune handled deliveries");
                }
            }
        });
        tracing::info!("recording deliveries in PostgreSQL, in each delivery's transaction");
        Ok(super::inline(
            layer.backend(backend).max_concurrency(POOL as usize - 2),
            finish(first),
        ))
    }

    /// Deliveries stored and acknowledged at once, run by workers.
    async fn with_inbox(
        layer: CariosanWebhookLayer,
        pool: sqlx::PgPool,
        max_run_time: Option<Duration>,
        webhooks: Webhooks,
    ) -> Result<(MethodRouter, Stop), Error> {
        let mut schedule = RetrySchedule::new();
        if let Some(ms) = var::<u64>("CARIOSAN_INBOX_FIRST_RETRY_MS")? {
            schedule = schedule.first_delay(Duration::from_millis(ms));
        }
        if let Some(attempts) = var::<u32>("CARIOSAN_INBOX_MAX_ATTEMPTS")? {
            if attempts == 0 {
                return Err("CARIOSAN_INBOX_MAX_ATTEMPTS must be at least 1".into());
            }
            schedule = schedule.max_attempts(attempts);
        }
        let mut inbox = Inbox::new(pool.clone())
            .retry(schedule)
            .keep_done_bodies(var("CARIOSAN_INBOX_KEEP_BODIES")?.unwrap_or(false));
        if var::<u8>("CARIOSAN_INBOX_ORDERED")? == Some(1) {
            inbox = inbox.ordered(OrderingKeys::default());
            if let Some(ms) = var::<u64>("CARIOSAN_INBOX_HOLD_MS")? {
                inbox = inbox.hold_for(Duration::from_millis(ms));
            }
            match std::env::var("CARIOSAN_INBOX_STALE").as_deref() {
                Err(_) | Ok("run") => {}
                Ok("supersede") => inbox = inbox.stale_deliveries(StalePolicy::Supersede),
                Ok(other) => {
                    return Err(format!(
                        "CARIOSAN_INBOX_STALE={other:?}: choose \"run\" or \"supersede\""
                    )
                    .into())
                }
            }
        } else if std::env::var_os("CARIOSAN_INBOX_HOLD_MS").is_some() {
            return Err("CARIOSAN_INBOX_HOLD_MS needs CARIOSAN_INBOX_ORDERED=1".into());
        }
        inbox.migrate().await?;
        create_effects_table(&pool, inbox.migration_lock_key()).await?;
        let workers_wanted = var::<usize>("CARIOSAN_INBOX_WORKERS")?.unwrap_or(4);
        if workers_wanted == 0 || workers_wanted >= POOL as usize - 4 {
            return Err(format!("CARIOSAN_INBOX_WORKERS must be within 1..{}", POOL - 4).into());
        }
        let mut workers = inbox.workers(webhooks).concurrency(workers_wanted);
        if let Some(limit) = max_run_time {
            workers = workers.max_run_time(limit);
        }
        if let Some(ms) = var::<u64>("CARIOSAN_INBOX_POLL_MS")? {
            workers = workers.poll_interval(Duration::from_millis(ms.max(1)));
        }
        let workers = workers.start();
        let pruner = inbox.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                if let Err(error) = pruner.prune().await {
                    tracing::warn!(%error, "could not prune the inbox");
                }
            }
        });
        tracing::info!(
            workers = workers_wanted,
            "storing deliveries in the PostgreSQL inbox; workers run them"
        );
        let stop: Stop = Box::new(move || {
            Box::pin(async move {
                let stopped = workers.shutdown(super::drain_deadline()).await;
                tracing::info!(cancelled = stopped.cancelled, "stopped");
            })
        });
        let (verification, _delivery) = layer.into_layers();
        Ok((post_service(inbox.service()).layer(verification), stop))
    }

    /// The application's table, created under the crate's migration lock so
    /// that replicas starting together create it once.
    async fn create_effects_table(pool: &sqlx::PgPool, lock: i64) -> Result<(), Error> {
        let mut conn = pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock)
            .execute(&mut *conn)
            .await?;
        // `seq` and `started_at` say in which order runs started, and
        // `stale` what an ordered inbox told the handler.
        let created = sqlx::Executor::execute(
            &mut *conn,
            "CREATE TABLE IF NOT EXISTS receiver_effects (
                delivery_id text NOT NULL,
                event_type text NOT NULL,
                handled_at timestamptz NOT NULL DEFAULT now()
            );
            ALTER TABLE receiver_effects
                ADD COLUMN IF NOT EXISTS seq bigserial,
                ADD COLUMN IF NOT EXISTS started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                ADD COLUMN IF NOT EXISTS stale boolean NOT NULL DEFAULT false;",
        )
        .await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock)
            .execute(&mut *conn)
            .await?;
        created?;
        Ok(())
    }

    /// `CARIOSAN_DEMO_ABORT=1` aborts the process after the insert, in every
    /// run: a crash loop, for the fault tests.
    fn abort_after_insert() -> bool {
        static ABORT: OnceLock<bool> = OnceLock::new();
        *ABORT.get_or_init(|| std::env::var("CARIOSAN_DEMO_ABORT").is_ok_and(|v| v == "1"))
    }

    async fn insert(tx: &Tx, id: &str, event_type: &str, stale: bool) -> HandlerResult {
        let mut conn = tx.conn().await?;
        sqlx::query(
            "INSERT INTO receiver_effects (delivery_id, event_type, stale) VALUES ($1, $2, $3)",
        )
        .bind(id)
        .bind(event_type)
        .bind(stale)
        .execute(&mut *conn)
        .await?;
        if abort_after_insert() {
            eprintln!("CARIOSAN_DEMO_ABORT=1: aborting the process mid-handler");
            std::process::abort();
        }
        Ok(())
    }

    async fn record(event: Delivery<Event>, tx: Tx) -> HandlerResult {
        insert(&tx, event.id.as_str(), event.event_type(), event.is_stale()).await
    }

    async fn record_unknown(event: Delivery<UnknownEvent>, tx: Tx) -> HandlerResult {
        insert(&tx, event.id.as_str(), event.event_type(), event.is_stale()).await
    }
}

#[cfg(not(feature = "postgres"))]
mod postgres {
    use cariosan_webhooks::CariosanWebhookLayer;

    pub(super) async fn with_postgres(
        _layer: CariosanWebhookLayer,
        _max_run_time: Option<std::time::Duration>,
        _finish: super::Finish,
    ) -> Result<(axum::routing::MethodRouter, super::Stop), super::Error> {
        Err("DATABASE_URL is set, but this build has no PostgreSQL support: run with --features postgres".into())
    }
}

#[cfg(feature = "redis")]
async fn with_store(layer: CariosanWebhookLayer) -> Result<CariosanWebhookLayer, Error> {
    Ok(match std::env::var("REDIS_URL") {
        Ok(url) => {
            tracing::info!("claiming deliveries in Redis");
            // Lazy: a replica starts while Redis is down, and answers 503
            // until it is back.
            layer.store(cariosan_webhooks::store::RedisStore::connect_lazy(&url)?)
        }
        Err(_) => layer,
    })
}

#[cfg(not(feature = "redis"))]
async fn with_store(layer: CariosanWebhookLayer) -> Result<CariosanWebhookLayer, Error> {
    if std::env::var_os("REDIS_URL").is_some() {
        return Err(
            "REDIS_URL is set, but this build has no Redis support: run with --features redis"
                .into(),
        );
    }
    Ok(layer)
}
