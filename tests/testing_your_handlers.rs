//! How to test your own webhook handlers: copy this file. It uses only the
//! public test kit (feature `test-util`): a handler function called
//! directly with a `Delivery` the kit builds, the dispatcher called without
//! HTTP, and the application's `Router` driven with `oneshot`. No network,
//! no real Cariosan.
#![cfg(feature = "test-util")]

use std::sync::{Arc, Mutex};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::model::MessageCreated;
use cariosan_webhooks::test_util::{delivery, samples, FixedClock, TestDelivery};
use cariosan_webhooks::{
    CariosanWebhookLayer, Delivery, HandlerError, HandlerResult, Outcome, Webhooks,
};
use tower::ServiceExt;

const SECRET: &str = "whsec_test";

/// The sample reply, edited: its sender is blocked. Payloads are shared, so
/// `make_mut` gives the test its own copy to edit.
fn reply_from_a_blocked_sender() -> cariosan_webhooks::model::Envelope {
    let mut envelope = samples::message_created_reply();
    let cariosan_webhooks::model::Event::MessageCreated(created) = &mut envelope.event else {
        unreachable!("the sample is a message.created")
    };
    std::sync::Arc::make_mut(created)
        .message
        .sender
        .as_mut()
        .expect("the sample has a sender")
        .external_id = "user_blocked".into();
    envelope
}

/// A handler as an application writes it: a plain async function.
async fn refuse_blocked_senders(event: Delivery<MessageCreated>) -> HandlerResult {
    match &event.message.sender {
        Some(sender) if sender.external_id == "user_blocked" => {
            Err(HandlerError::give_up("a blocked sender"))
        }
        Some(_) => Ok(()),
        None => Err(HandlerError::msg("a message with no sender")),
    }
}

#[tokio::test]
async fn a_handler_function_called_directly_with_a_test_delivery() {
    assert!(
        refuse_blocked_senders(delivery(samples::message_created_reply()))
            .await
            .is_ok()
    );

    let mut blocked: Delivery<MessageCreated> = delivery(samples::message_created_reply());
    assert_eq!(blocked.attempt, Some(1));
    blocked.attempt = Some(4);
    let envelope = reply_from_a_blocked_sender();
    let error = refuse_blocked_senders(delivery(envelope))
        .await
        .unwrap_err();
    assert!(error.is_give_up(), "{error}");

    let system = refuse_blocked_senders(delivery(samples::message_created_system())).await;
    assert_eq!(system.unwrap_err().to_string(), "a message with no sender");
}

#[tokio::test]
async fn the_dispatcher_called_without_http() {
    let webhooks = Webhooks::new().on_message_created(refuse_blocked_senders);
    let verified = TestDelivery::event(samples::message_created_reply())
        .attempt(2)
        .verify()
        .unwrap();
    assert_eq!(verified.attempt(), Some(2));
    assert!(matches!(webhooks.handle(&verified).await, Outcome::Handled));
    let forged = TestDelivery::event(samples::message_created_reply())
        .delivery_id("evt_other")
        .verify();
    assert_eq!(forged.unwrap_err().code(), "envelope_mismatch");
}

/// The application under test: it records who was mentioned in each
/// message, and refuses messages from a blocked sender.
fn app(mentioned: Arc<Mutex<Vec<String>>>) -> Router {
    let webhooks = Webhooks::new().on_message_created(move |event| {
        let mentioned = mentioned.clone();
        async move {
            if event
                .message
                .sender
                .as_ref()
                .is_some_and(|s| s.external_id == "user_blocked")
            {
                return Err(HandlerError::msg("blocked sender"));
            }
            let mut mentioned = mentioned.lock().unwrap();
            mentioned.extend(event.message.mentions.iter().map(|u| u.external_id.clone()));
            Ok(())
        }
    });
    Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks).layer(CariosanWebhookLayer::new(SECRET)),
    )
}

#[tokio::test]
async fn a_reply_with_mentions_is_recorded() {
    let mentioned = Arc::new(Mutex::new(Vec::new()));
    let request = TestDelivery::event(samples::message_created_reply())
        .secret(SECRET)
        .into_request("/webhooks/cariosan");
    let response = app(mentioned.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(*mentioned.lock().unwrap(), ["user_alice", "user_budi"]);
}

#[tokio::test]
async fn an_edited_sample_drives_the_failure_path() {
    let envelope = reply_from_a_blocked_sender();
    let request = TestDelivery::event(envelope)
        .secret(SECRET)
        .into_request("/webhooks/cariosan");
    let response = app(Arc::default()).oneshot(request).await.unwrap();
    assert_eq!(
        response.status(),
        500,
        "a failed handler is retried by Cariosan"
    );
}

#[tokio::test]
async fn a_request_signed_with_another_secret_is_refused() {
    let mentioned = Arc::new(Mutex::new(Vec::new()));
    let request = TestDelivery::event(samples::message_created_reply())
        .secret("whsec_not_ours")
        .into_request("/webhooks/cariosan");
    let response = app(mentioned.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 401);
    assert!(mentioned.lock().unwrap().is_empty());
}

#[tokio::test]
async fn verification_as_of_a_fixed_time() {
    // Sign at a fixed moment and verify "as of" a fixed clock: no wall time.
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(Webhooks::new())
            .layer(CariosanWebhookLayer::new(SECRET).clock(FixedClock(1_795_000_000))),
    );
    let at = |t: i64| {
        TestDelivery::event(samples::webhook_ping())
            .secret(SECRET)
            .timestamp(t)
            .attempt(3)
            .into_request("/webhooks/cariosan")
    };
    assert_eq!(
        app.clone()
            .oneshot(at(1_794_999_800))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        app.clone()
            .oneshot(at(1_794_999_699))
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn a_rotation_and_raw_fixture_bytes() {
    // During a rotation Cariosan signs with both secrets; your receiver may
    // hold only the new one.
    let fixture = include_str!("../src/test_util/fixtures/events/channel.created.json");
    let request = TestDelivery::json(fixture)
        .secrets(["whsec_new", "whsec_old"])
        .into_request("/webhooks/cariosan");
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(Webhooks::new()).layer(CariosanWebhookLayer::new("whsec_old")),
    );
    assert_eq!(app.oneshot(request).await.unwrap().status(), 200);
}

#[tokio::test]
async fn every_sample_is_accepted() {
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(Webhooks::new().on_any(|_| async { Ok(()) }))
            .layer(CariosanWebhookLayer::new(SECRET)),
    );
    for envelope in samples::all() {
        let event_type = envelope.event_type().to_owned();
        let request = TestDelivery::event(envelope)
            .secret(SECRET)
            .into_request("/webhooks/cariosan");
        assert_eq!(
            app.clone().oneshot(request).await.unwrap().status(),
            200,
            "{event_type}"
        );
    }
}
