//! Handlers that take a resource the backend does not provide are refused
//! when they are mounted (`layer.route`, `Receiver`, inbox workers); the
//! 0.2 mounting, which cannot see the handlers, refuses each such delivery
//! with `500 resource_missing` and says why once.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::delivery::Generation;
use cariosan_webhooks::dispatch::{MissingResource, Resource};
use cariosan_webhooks::model::{EventType, MessageCreated};
use cariosan_webhooks::{CariosanWebhookLayer, Delivery, HandlerResult, Receiver, Webhooks};
use common::*;

/// Something an application means to get from a layer of its own.
#[derive(Clone)]
struct Mailer;

async fn mail(_event: Delivery<MessageCreated>, _mailer: Resource<Mailer>) -> HandlerResult {
    panic!("no handler runs without its resource");
}

async fn generation(event: Delivery<MessageCreated>, _g: Resource<Generation>) -> HandlerResult {
    assert!(event.generation.is_some());
    Ok(())
}

fn mailing() -> Webhooks {
    Webhooks::new()
        .on_channel_created(|_| async { Ok(()) })
        .on(EventType::MessageCreated, mail)
}

fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

fn assert_names_all_three(missing: &MissingResource, provider: &str) {
    let text = missing.to_string();
    assert_eq!(missing.event_types, "message.created", "{text}");
    assert!(missing.resource.ends_with("Mailer"), "{text}");
    assert!(missing.provider.contains(provider), "{text}");
    for part in ["message.created", "Mailer", provider] {
        assert!(text.contains(part), "{part} missing from: {text}");
    }
}

#[test]
fn route_refuses_a_resource_the_memory_store_does_not_provide() {
    let layer = CariosanWebhookLayer::new(SECRET);
    let missing = layer
        .try_route::<(), ()>(mailing())
        .expect_err("nothing provides a Mailer");
    assert_names_all_three(&missing, "MemoryStore");

    let panicked = catch_unwind(AssertUnwindSafe(|| layer.route::<(), ()>(mailing())))
        .expect_err("route panics");
    assert_eq!(panic_text(panicked), missing.to_string());

    // What the store does provide passes.
    let provided = Webhooks::new().on(EventType::MessageCreated, generation);
    assert!(layer.try_route::<(), ()>(provided.clone()).is_ok());
    assert!(Receiver::try_new(layer.clone(), provided).is_ok());
}

#[test]
fn a_receiver_refuses_it_too() {
    let layer = CariosanWebhookLayer::new(SECRET);
    let missing =
        Receiver::try_new(layer.clone(), mailing()).expect_err("nothing provides a Mailer");
    assert_names_all_three(&missing, "MemoryStore");
    let panicked = catch_unwind(AssertUnwindSafe(|| Receiver::new(layer, mailing())))
        .expect_err("Receiver::new panics");
    assert_eq!(panic_text(panicked), missing.to_string());
}

#[cfg(feature = "postgres")]
mod postgres {
    use cariosan_webhooks::store::postgres::{sqlx, Inbox, PostgresBackend, Tx};
    use cariosan_webhooks::store::RedisStore;

    use super::*;

    async fn save(_event: Delivery<MessageCreated>, _tx: Tx) -> HandlerResult {
        panic!("no handler runs without its transaction");
    }

    /// A pool that never connects: nothing here reaches a database, and the
    /// checks must refuse before anything would.
    fn unreachable_pool() -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:9/nowhere")
            .expect("a lazy pool")
    }

    #[tokio::test]
    async fn a_tx_handler_needs_a_postgres_backend() {
        let webhooks = Webhooks::new().on(EventType::MessageCreated, save);
        let memory = CariosanWebhookLayer::new(SECRET);
        let missing = memory
            .try_route::<(), ()>(webhooks.clone())
            .expect_err("the memory store gives no Tx");
        let text = missing.to_string();
        assert!(missing.resource.ends_with("::Tx"), "{text}");
        assert!(text.contains("MemoryStore"), "{text}");
        assert!(text.contains("PostgresBackend"), "the hint: {text}");

        let redis = CariosanWebhookLayer::new(SECRET)
            .store(RedisStore::connect_lazy("redis://127.0.0.1:9/").expect("a lazy client"));
        let missing = redis.check(&webhooks).expect_err("nor does Redis");
        assert!(missing.provider.contains("RedisStore"), "{missing}");

        let transactional =
            CariosanWebhookLayer::new(SECRET).backend(PostgresBackend::new(unreachable_pool()));
        assert!(transactional.try_route::<(), ()>(webhooks.clone()).is_ok());
        assert!(transactional
            .check(&mailing())
            .expect_err("nor a Mailer")
            .provider
            .contains("PostgresBackend"));
    }

    #[tokio::test]
    async fn inbox_workers_refuse_to_start_without_the_resource() {
        let inbox = Inbox::new(unreachable_pool());
        let missing = inbox
            .workers(mailing())
            .try_start()
            .expect_err("the inbox gives no Mailer");
        assert_names_all_three(&missing, "inbox");
        let panicked = catch_unwind(AssertUnwindSafe(|| inbox.workers(mailing()).start()))
            .expect_err("start panics");
        assert_eq!(panic_text(panicked), missing.to_string());
    }
}

#[tokio::test]
async fn the_old_mounting_refuses_each_such_delivery_and_says_why_once() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::ERROR)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The server's tasks run on this test's one thread, under this default.
    let _guard = tracing::subscriber::set_default(subscriber);

    let channels = Arc::new(AtomicUsize::new(0));
    let counted = channels.clone();
    let webhooks = Webhooks::new()
        .on_channel_created(move |_| {
            counted.fetch_add(1, Ordering::SeqCst);
            async { Ok(()) }
        })
        .on(EventType::MessageCreated, mail);
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks).layer(CariosanWebhookLayer::new(SECRET)),
    );
    let addr = serve(app).await;

    for id in ["evt_needs_a_mailer_1", "evt_needs_a_mailer_2"] {
        let body = message_with(id, "kirim email konfirmasi");
        let reply = send_signed(addr, id, "message.created", &body).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (500, "resource_missing")
        );
    }
    // A handler that needs nothing still runs.
    let channel = fixture("events/channel.created.json");
    let channel_id = "evt_channel_needs_nothing";
    let reply = send_signed(
        addr,
        channel_id,
        "channel.created",
        &with_id(&channel, channel_id),
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    assert_eq!(channels.load(Ordering::SeqCst), 1);
    // The refused delivery is not taken as handled: its retry is refused
    // again rather than answered `duplicate`.
    let body = message_with("evt_needs_a_mailer_1", "kirim email konfirmasi");
    let retry = send_signed(addr, "evt_needs_a_mailer_1", "message.created", &body).await;
    assert_eq!(retry.body, "resource_missing");

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let explained: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("resource that nothing provides"))
        .collect();
    assert_eq!(explained.len(), 1, "{logs}");
    assert!(explained[0].contains("ERROR"), "{logs}");
    assert!(explained[0].contains("message.created"), "{logs}");
    assert!(explained[0].contains("Mailer"), "{logs}");
    assert!(!logs.contains("kirim email"), "no body in the logs: {logs}");
}
