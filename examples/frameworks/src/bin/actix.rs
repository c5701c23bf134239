//! Cariosan webhooks behind actix-web, which is not tower-based: each
//! request goes to a [`Receiver`], which gives it the whole contract of the
//! tower layer (verification, de-duplication, the budget, `max_run_time`,
//! the concurrency bound, the drain), and its [`Answer`](cariosan_webhooks::Answer)
//! becomes the status, the headers and the short code.
//!
//! ```text
//! CARIOSAN_WEBHOOK_SECRET=whsec_... CARIOSAN_WEBHOOK_ADDR=127.0.0.1:3000 \
//!     cargo run -p cariosan-webhooks-frameworks --bin actix
//! ```
//!
//! It prints `handled <event type> <delivery id>` per handler run;
//! `CARIOSAN_DEMO_DELAY_MS` makes each run take that long.

use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use cariosan_webhooks::model::Event;
use cariosan_webhooks::protocol::MAX_BODY_LEN;
use cariosan_webhooks::{CariosanWebhookLayer, Delivery, Receiver, Webhooks};

/// Every method reaches the receiver, so that a `GET` is its `405`, and
/// the body limit is the protocol's, not actix's 256 KiB default.
async fn webhook(
    request: HttpRequest,
    body: web::Bytes,
    receiver: web::Data<Receiver>,
) -> HttpResponse {
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_bytes()));
    let path = request.uri().path_and_query().map_or("/", |p| p.as_str());
    let answer = receiver
        .receive(request.method().as_str(), path, headers, body)
        .await;
    let status = StatusCode::from_u16(answer.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    for (name, value) in answer.headers() {
        response.insert_header((name, value));
    }
    response.body(answer.code().to_owned())
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let secret = std::env::var("CARIOSAN_WEBHOOK_SECRET")
        .map_err(|_| std::io::Error::other("CARIOSAN_WEBHOOK_SECRET is unset"))?;
    let addr = std::env::var("CARIOSAN_WEBHOOK_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let delay = std::env::var("CARIOSAN_DEMO_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(Duration::from_millis);
    let layer = CariosanWebhookLayer::try_new(secret).map_err(std::io::Error::other)?;
    let webhooks = Webhooks::new().on_any(move |event: Delivery<Event>| async move {
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        println!("handled {} {}", event.event_type(), event.id);
        Ok(())
    });
    let receiver = Receiver::new(layer, webhooks);
    let shutdown = receiver.shutdown_handle();
    let receiver = web::Data::new(receiver);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(receiver.clone())
            .app_data(web::PayloadConfig::new(MAX_BODY_LEN))
            .route("/webhooks/cariosan", web::route().to(webhook))
    })
    .workers(1)
    // The stop is ours: on SIGTERM or Ctrl-C, drain the deliveries (8 s,
    // then 1 s to cancel the rest) while actix stops gracefully.
    .disable_signals()
    .shutdown_timeout(10)
    .bind(addr)?
    .run();
    let handle = server.handle();
    let signal = cariosan_webhooks::delivery::shutdown_signal();
    actix_web::rt::spawn(async move {
        signal.await;
        let stopping = handle.stop(true);
        shutdown.drain(Duration::from_secs(8)).await;
        stopping.await;
    });
    server.await
}
