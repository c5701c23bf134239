//! The receiver a user deploys: verifies Cariosan deliveries on
//! `POST /webhooks/cariosan` and prints one line per delivery its handlers
//! ran for, `handled <event type> <delivery id> <summary>`. Logs go to
//! stderr.
//!
//! ```text
//! CARIOSAN_WEBHOOK_SECRET=whsec_... CARIOSAN_WEBHOOK_ADDR=127.0.0.1:3000 \
//!     cargo run --example receiver
//! ```

mod support;

use std::io::Write;
use std::sync::Arc;

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

    let report: support::Report = Arc::new(|line| {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{line}");
        let _ = stdout.flush();
    });
    let app = Router::new()
        .route(
            "/webhooks/cariosan",
            post_service(support::webhooks(report)),
        )
        .layer(CariosanWebhookLayer::try_new(secret)?);

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
    Ok(())
}
