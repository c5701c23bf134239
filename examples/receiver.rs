//! The receiver a user deploys: verifies Cariosan deliveries on
//! `POST /webhooks/cariosan` and prints one line per handler run,
//! `handled <event type> <delivery id> <summary>` (a duplicate delivery runs
//! nothing and prints nothing). Logs go to stderr.
//!
//! ```text
//! CARIOSAN_WEBHOOK_SECRET=whsec_... CARIOSAN_WEBHOOK_ADDR=127.0.0.1:3000 \
//!     cargo run --example receiver
//! ```
//!
//! With `REDIS_URL` set (and feature `redis`), delivery ids are claimed in
//! Redis so that several replicas share one view; otherwise in memory.
//! `CARIOSAN_WEBHOOK_LEASE_SECS` sets how long a claim outlives a crashed
//! receiver (default 30), and `CARIOSAN_DEMO_DELAY_MS` makes every handler
//! take that long, to watch the 9 s budget and Cariosan's retries at work.
//! Ctrl-C stops accepting, lets running handlers finish for up to 9 s, and
//! releases the claims of any it abandons.

mod support;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::CariosanWebhookLayer;
use tracing_subscriber::EnvFilter;

/// Used only when `CARIOSAN_WEBHOOK_SECRET` is unset, so that the example
/// runs with no setup. Never deploy with it.
const DEMO_SECRET: &str = "whsec_DEMO_ONLY_not_a_real_secret_0000";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let secret = std::env::var("CARIOSAN_WEBHOOK_SECRET").unwrap_or_else(|_| {
        tracing::warn!("CARIOSAN_WEBHOOK_SECRET is unset: using the DEMO secret {DEMO_SECRET:?}; never deploy with it");
        DEMO_SECRET.to_owned()
    });
    let addr =
        std::env::var("CARIOSAN_WEBHOOK_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());

    let delay = std::env::var("CARIOSAN_DEMO_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    let report: support::Report = Arc::new(|line| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    });
    let mut layer = CariosanWebhookLayer::try_new(secret)?;
    if let Some(secs) = std::env::var("CARIOSAN_WEBHOOK_LEASE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        layer = layer.lease(Duration::from_secs(secs));
    }
    layer = with_store(layer).await?;
    let shutdown = layer.shutdown_handle();
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(support::webhooks(report, delay)).layer(layer),
    );

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    tracing::info!(
        "listening on http://{}/webhooks/cariosan",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    let drained = shutdown.drain(Duration::from_secs(9)).await;
    tracing::info!(abandoned = drained.abandoned, "stopped");
    Ok(())
}

#[cfg(feature = "redis")]
async fn with_store(
    layer: CariosanWebhookLayer,
) -> Result<CariosanWebhookLayer, Box<dyn std::error::Error>> {
    Ok(match std::env::var("REDIS_URL") {
        Ok(url) => {
            tracing::info!("claiming deliveries in Redis");
            layer.store(cariosan_webhooks::store::RedisStore::connect(&url).await?)
        }
        Err(_) => layer,
    })
}

#[cfg(not(feature = "redis"))]
async fn with_store(
    layer: CariosanWebhookLayer,
) -> Result<CariosanWebhookLayer, Box<dyn std::error::Error>> {
    if std::env::var_os("REDIS_URL").is_some() {
        return Err(
            "REDIS_URL is set, but this build has no Redis support: run with --features redis"
                .into(),
        );
    }
    Ok(layer)
}
