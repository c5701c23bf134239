//! Cariosan webhooks behind actix-web, which is not tower-based: the raw
//! body and the headers go to the framework-free verifier, the verified
//! delivery to `Webhooks::handle`, and its outcome becomes the status and
//! the short code.
//!
//! ```text
//! CARIOSAN_WEBHOOK_SECRET=whsec_... CARIOSAN_WEBHOOK_ADDR=127.0.0.1:3000 \
//!     cargo run -p cariosan-webhooks-frameworks --bin actix
//! ```
//!
//! It prints `handled <event type> <delivery id>` per delivery handled.
//! This shows the dispatcher alone: de-duplication and the other delivery
//! semantics are the tower delivery layer's (or a backend's of your own);
//! handlers here must be idempotent on the delivery id.

use actix_web::http::header::{HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use cariosan_webhooks::model::Event;
use cariosan_webhooks::protocol::{
    ATTEMPT_HEADER, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER,
};
use cariosan_webhooks::verify::{DeliveryHeaders, Verifier};
use cariosan_webhooks::{Delivery, Webhooks};

struct Receiver {
    verifier: Verifier,
    webhooks: Webhooks,
}

/// A protocol header as text, empty when absent or not text.
fn header<'a>(request: &'a HttpRequest, name: &str) -> &'a str {
    request
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
}

fn short(status: u16, code: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .content_type("text/plain; charset=utf-8")
        .body(code.to_owned())
}

async fn webhook(
    request: HttpRequest,
    body: web::Bytes,
    receiver: web::Data<Receiver>,
) -> HttpResponse {
    let headers = DeliveryHeaders::new(
        header(&request, DELIVERY_HEADER),
        header(&request, EVENT_HEADER),
        header(&request, SIGNATURE_HEADER),
    )
    .attempt(header(&request, ATTEMPT_HEADER).parse().ok());
    let delivery = match receiver.verifier.verify_delivery(&headers, &body) {
        Ok(delivery) => delivery,
        Err(error) => return short(error.status_code(), error.code()),
    };
    let outcome = receiver.webhooks.handle(&delivery).await;
    let mut response = short(outcome.status().as_u16(), outcome.code());
    if let Some(after) = outcome.retry_after() {
        if let Ok(value) = HeaderValue::from_str(&after.as_secs().max(1).to_string()) {
            response.headers_mut().insert(RETRY_AFTER, value);
        }
    }
    response
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let secret = std::env::var("CARIOSAN_WEBHOOK_SECRET")
        .map_err(|_| std::io::Error::other("CARIOSAN_WEBHOOK_SECRET is unset"))?;
    let addr = std::env::var("CARIOSAN_WEBHOOK_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let verifier = Verifier::new(secret).map_err(std::io::Error::other)?;
    let receiver = web::Data::new(Receiver {
        verifier,
        webhooks: Webhooks::new().on_any(|event: Delivery<Event>| async move {
            println!("handled {} {}", event.event_type(), event.id);
            Ok(())
        }),
    });
    HttpServer::new(move || {
        App::new()
            .app_data(receiver.clone())
            .route("/webhooks/cariosan", web::post().to(webhook))
    })
    .workers(1)
    .bind(addr)?
    .run()
    .await
}
