//! Handlers that reach application state: a database-like store shared by
//! capturing a clone of an `Arc` in each handler, the way an axum user
//! shares a pool. Runs a few signed deliveries through the router with
//! `oneshot` (no network), prints the store, and exits.
//!
//! ```text
//! cargo run --example app_state
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::model::{MessageEvent, MessageId};
use cariosan_webhooks::verify::{sign, Secret};
use cariosan_webhooks::{CariosanWebhookLayer, Delivery, HandlerError, HandlerResult, Webhooks};
use tower::ServiceExt;

/// Stands in for a database pool: cheap to clone, shared inside.
#[derive(Clone, Default)]
struct Store {
    messages: Arc<Mutex<HashMap<MessageId, String>>>,
}

impl Store {
    async fn upsert(&self, id: MessageId, content: String) -> Result<(), HandlerError> {
        self.messages
            .lock()
            .map_err(|_| HandlerError::msg("store poisoned"))?
            .insert(id, content);
        Ok(())
    }
}

fn app(store: Store, secret: &str) -> Router {
    // One async fn serves both created and edited messages; each closure
    // hands it a clone of the store.
    async fn save(store: Store, event: Delivery<MessageEvent>) -> HandlerResult {
        let message = event.into_inner().message;
        store.upsert(message.id, message.content).await
    }
    let (on_created, on_updated, on_deleted) = (store.clone(), store.clone(), store);
    let webhooks = Webhooks::new()
        .on_message_created(move |event| save(on_created.clone(), event))
        .on_message_updated(move |event| save(on_updated.clone(), event))
        .on_message_deleted(move |event| {
            let store = on_deleted.clone();
            async move {
                store
                    .upsert(event.data.message.id, "(unsent)".to_owned())
                    .await
            }
        });
    Router::new()
        .route("/webhooks/cariosan", post_service(webhooks))
        .layer(CariosanWebhookLayer::new(secret))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const SECRET: &str = "whsec_DEMO_ONLY_not_a_real_secret_0000";
    let store = Store::default();
    let app = app(store.clone(), SECRET);
    let secret = Secret::new(SECRET)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs() as i64;

    let deliveries: [(&str, &str, &[u8]); 3] = [
        (
            "message.created",
            "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A",
            include_bytes!("../tests/fixtures/events/message.created.json"),
        ),
        (
            "message.created",
            "evt_01JDB7R0AAAAAAAAAAAAAAAAAA",
            include_bytes!("../tests/fixtures/events/message.created.reply.json"),
        ),
        (
            "message.updated",
            "evt_01JDB7T3UPDATEUPDATEUPD01",
            include_bytes!("../tests/fixtures/events/message.updated.json"),
        ),
    ];
    for (event_type, id, body) in deliveries {
        let request = http::Request::post("/webhooks/cariosan")
            .header("x-cariosan-delivery", id)
            .header("x-cariosan-event", event_type)
            .header(
                "x-cariosan-signature",
                sign(std::slice::from_ref(&secret), id, now, body),
            )
            .body(Body::from(body))?;
        let response = app.clone().oneshot(request).await?;
        println!("{event_type} {id} -> {}", response.status());
    }

    let messages = store.messages.lock().map_err(|_| "store poisoned")?;
    let mut rows: Vec<_> = messages.iter().collect();
    rows.sort();
    for (id, content) in rows {
        println!("store: {id} = {content:?}");
    }
    Ok(())
}
