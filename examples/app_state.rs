//! Handlers that reach application state: a database-like store given to
//! the dispatcher with `Webhooks::with_state` and taken as a `State`
//! argument, the way axum shares a pool, and the same store captured in a
//! closure, which works too. Runs a few signed deliveries through the
//! router with `oneshot` (no network), prints the store, and exits.
//!
//! ```text
//! cargo run --example app_state
//! ```

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::Router;
use cariosan_webhooks::dispatch::State;
use cariosan_webhooks::model::{Event, EventType, MessageId};
use cariosan_webhooks::protocol::{DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER};
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

/// One handler for new and edited messages, with the store as its state.
async fn save(event: Delivery<Event>, State(store): State<Store>) -> HandlerResult {
    let message = match event.data() {
        Event::MessageCreated(created) => &created.message,
        Event::MessageUpdated(updated) => &updated.message,
        _ => return Ok(()),
    };
    store
        .upsert(message.id.clone(), message.content.clone())
        .await
}

fn app(store: Store, secret: &str) -> Router {
    let unsent = store.clone();
    let webhooks = Webhooks::with_state(store)
        .on([EventType::MessageCreated, EventType::MessageUpdated], save)
        // The capture style: a closure holding its own clone.
        .on_message_deleted(move |event| {
            let store = unsent.clone();
            async move {
                store
                    .upsert(event.message.id.clone(), "(unsent)".to_owned())
                    .await
            }
        });
    Router::new().route(
        "/webhooks/cariosan",
        CariosanWebhookLayer::new(secret).route(webhooks),
    )
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
            include_bytes!("../src/test_util/fixtures/events/message.created.json"),
        ),
        (
            "message.created",
            "evt_01JDB7R0AAAAAAAAAAAAAAAAAA",
            include_bytes!("../src/test_util/fixtures/events/message.created.reply.json"),
        ),
        (
            "message.updated",
            "evt_01JDB7T3UPDATEUPDATEUPD01",
            include_bytes!("../src/test_util/fixtures/events/message.updated.json"),
        ),
    ];
    for (event_type, id, body) in deliveries {
        let request = http::Request::post("/webhooks/cariosan")
            .header(DELIVERY_HEADER, id)
            .header(EVENT_HEADER, event_type)
            .header(
                SIGNATURE_HEADER,
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
