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
//! | `CARIOSAN_WEBHOOK_MODE` | `transactional` | with `DATABASE_URL`: how deliveries are recorded (only `transactional` in this version) |
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
//! delivery's transaction (then waits `CARIOSAN_DEMO_DELAY_MS`, then prints
//! its line), so a duplicate run would show as a second row.
//!
//! Built with `--features metrics`, it also serves `GET /metrics` in the
//! Prometheus text format.
//!
//! `SIGTERM` (a container's stop) or Ctrl-C stops accepting, lets running
//! handlers finish for up to 9 s, and cancels the rest, freeing their
//! deliveries for Cariosan's retry.

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{get, post_service};
use axum::Router;
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
    let (layer, first) = with_backend(layer).await?;
    let shutdown = layer.shutdown_handle();
    let app = Router::new()
        .route(
            "/webhooks/cariosan",
            post_service(support::webhooks_after(first, report, delay)).layer(layer),
        )
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
    support::serve::serve(listener, app, limits, support::serve::stop_signal()).await;
    let drained = shutdown.drain(Duration::from_secs(9)).await;
    tracing::info!(
        abandoned = drained.abandoned,
        stuck = drained.stuck,
        "stopped"
    );
    Ok(())
}

/// `GET /metrics` in the Prometheus text format, with histogram buckets
/// dense up to the 9 s budget.
#[cfg(feature = "metrics")]
fn with_metrics(app: Router) -> Result<Router, Error> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("cariosan_webhook_handler_duration_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 9.0, 30.0, 300.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("cariosan_webhook_delivery_lag_seconds".into()),
            &[0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0],
        )?
        .install_recorder()?;
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

/// The backend the environment asks for, and the handlers that must run
/// first with it: PostgreSQL with `DATABASE_URL`, Redis with `REDIS_URL`,
/// memory otherwise.
async fn with_backend(
    layer: CariosanWebhookLayer,
) -> Result<(CariosanWebhookLayer, Webhooks), Error> {
    if std::env::var_os("DATABASE_URL").is_some() {
        return postgres::with_postgres(layer).await;
    }
    Ok((with_store(layer).await?, Webhooks::new()))
}

#[cfg(feature = "postgres")]
mod postgres {
    use std::time::Duration;

    use cariosan_webhooks::dispatch::EventSelector;
    use cariosan_webhooks::model::{Event, UnknownEvent};
    use cariosan_webhooks::store::postgres::{sqlx, PostgresBackend, Tx};
    use cariosan_webhooks::{CariosanWebhookLayer, Delivery, HandlerResult, Webhooks};

    use super::Error;

    /// Connections in the pool; each running delivery holds one.
    const POOL: u32 = 32;

    pub(super) async fn with_postgres(
        layer: CariosanWebhookLayer,
    ) -> Result<(CariosanWebhookLayer, Webhooks), Error> {
        let mode =
            std::env::var("CARIOSAN_WEBHOOK_MODE").unwrap_or_else(|_| "transactional".into());
        if mode != "transactional" {
            return Err(format!(
                "CARIOSAN_WEBHOOK_MODE={mode:?}: this version has only \"transactional\""
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
        let first = Webhooks::new()
            .on(EventSelector::AllKnown, record)
            .on(EventSelector::AllUnknown, record_unknown);
        Ok((
            layer.backend(backend).max_concurrency(POOL as usize - 2),
            first,
        ))
    }

    /// The application's table, created under the crate's migration lock so
    /// that replicas starting together create it once.
    async fn create_effects_table(pool: &sqlx::PgPool, lock: i64) -> Result<(), Error> {
        let mut conn = pool.acquire().await?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(lock)
            .execute(&mut *conn)
            .await?;
        let created = sqlx::query(
            "CREATE TABLE IF NOT EXISTS receiver_effects (
                delivery_id text NOT NULL,
                event_type text NOT NULL,
                handled_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .execute(&mut *conn)
        .await;
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(lock)
            .execute(&mut *conn)
            .await?;
        created?;
        Ok(())
    }

    async fn insert(tx: &Tx, id: &str, event_type: &str) -> HandlerResult {
        let mut conn = tx.conn().await?;
        sqlx::query("INSERT INTO receiver_effects (delivery_id, event_type) VALUES ($1, $2)")
            .bind(id)
            .bind(event_type)
            .execute(&mut *conn)
            .await?;
        Ok(())
    }

    async fn record(event: Delivery<Event>, tx: Tx) -> HandlerResult {
        insert(&tx, event.id.as_str(), event.event_type()).await
    }

    async fn record_unknown(event: Delivery<UnknownEvent>, tx: Tx) -> HandlerResult {
        insert(&tx, event.id.as_str(), event.event_type()).await
    }
}

#[cfg(not(feature = "postgres"))]
mod postgres {
    use cariosan_webhooks::{CariosanWebhookLayer, Webhooks};

    pub(super) async fn with_postgres(
        _layer: CariosanWebhookLayer,
    ) -> Result<(CariosanWebhookLayer, Webhooks), super::Error> {
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
