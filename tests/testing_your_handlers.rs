//! How to test your own webhook handlers: copy this file. It uses only the
//! public test kit (feature `test-util`) and drives the application's
//! `Router` with `oneshot`: no network, no real Cariosan.
#![cfg(feature = "test-util")]

use std::sync::{Arc, Mutex};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::test_util::{samples, FixedClock, TestDelivery};
use cariosan_webhooks::{CariosanWebhookLayer, HandlerError, Webhooks};
use tower::ServiceExt;

const SECRET: &str = "whsec_test";

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
    Router::new()
        .route("/webhooks/cariosan", post_service(webhooks))
        .layer(CariosanWebhookLayer::new(SECRET))
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
    let mut envelope = samples::message_created_reply();
    let cariosan_webhooks::model::Event::MessageCreated(created) = &mut envelope.event else {
        unreachable!()
    };
    // Payloads are shared: make_mut gives this test its own copy to edit.
    std::sync::Arc::make_mut(created)
        .message
        .sender
        .as_mut()
        .unwrap()
        .external_id = "user_blocked".into();
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
    let app = Router::new()
        .route("/webhooks/cariosan", post_service(Webhooks::new()))
        .layer(CariosanWebhookLayer::new(SECRET).clock(FixedClock(1_795_000_000)));
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
    let app = Router::new()
        .route("/webhooks/cariosan", post_service(Webhooks::new()))
        .layer(CariosanWebhookLayer::new("whsec_old"));
    assert_eq!(app.oneshot(request).await.unwrap().status(), 200);
}

#[tokio::test]
async fn every_sample_is_accepted() {
    let app = Router::new()
        .route(
            "/webhooks/cariosan",
            post_service(Webhooks::new().on_any(|_| async { Ok(()) })),
        )
        .layer(CariosanWebhookLayer::new(SECRET));
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
