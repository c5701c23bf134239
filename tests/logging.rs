//! What the crate logs: a span per delivery with its id, type, attempt and
//! outcome; never the body, the secret or a MAC.

mod common;

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::{CariosanWebhookLayer, HandlerError, Webhooks};
use common::*;
use tower::ServiceExt;

/// Captures this thread's logs at `level` and above until the guard drops.
fn capture(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

fn request(
    id: &str,
    event_type: &str,
    signature: &str,
    body: &[u8],
) -> http::Request<axum::body::Body> {
    let mut builder = http::Request::post("/webhooks/cariosan");
    for (name, value) in delivery_headers(id, event_type, signature) {
        builder = builder.header(name, value);
    }
    builder.body(axum::body::Body::from(body.to_vec())).unwrap()
}

#[tokio::test]
async fn logs_carry_the_delivery_and_never_the_body_secret_or_mac() {
    let (captured, _guard) = capture(tracing::Level::TRACE);

    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(Webhooks::new().on_message_created(|event| async move {
            if event.message.content.contains("fail") {
                return Err(HandlerError::msg("storage unavailable"));
            }
            Ok(())
        }))
        .layer(CariosanWebhookLayer::new(SECRET)),
    );

    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let body = fixture("events/message.created.json");
    let good = independent_signature(SECRET, id, now(), &body);
    // A distinct delivery: the same id would be a handled duplicate.
    let failing_id = "evt_failing";
    let failing = String::from_utf8(with_id(&body, failing_id))
        .unwrap()
        .replace("Halo, pesanan", "fail pesanan");
    let failing_signature = independent_signature(SECRET, failing_id, now(), failing.as_bytes());
    let wrong = independent_signature("whsec_wrong", id, now(), &body);
    let invalid = b"{\"id\": \"not json at all";
    let invalid_signature = independent_signature(SECRET, id, now(), invalid);
    let cases: [(&str, &str, &[u8], u16); 4] = [
        (id, &good, &body, 200),
        (failing_id, &failing_signature, failing.as_bytes(), 500),
        (id, &wrong, &body, 401),
        (id, &invalid_signature, invalid, 400),
    ];
    for (id, signature, body, status) in cases {
        let response = app
            .clone()
            .oneshot(request(id, "message.created", signature, body))
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status);
    }

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains(&format!("delivery_id=\"{id}\""))
            || logs.contains(&format!("delivery_id={id}")),
        "{logs}"
    );
    assert!(logs.contains("event_type"), "{logs}");
    assert!(logs.contains("signature_mismatch"), "{logs}");
    assert!(logs.contains("envelope_invalid"), "{logs}");
    assert!(logs.contains("storage unavailable"), "{logs}");
    assert!(logs.contains("outcome"), "{logs}");
    for secret_thing in [
        SECRET,
        "whsec_wrong",
        &good[good.len() - 64..],
        &wrong[wrong.len() - 64..],
        "Halo, pesanan",
        "not json at all",
    ] {
        assert!(
            !logs.contains(secret_thing),
            "logs contain {secret_thing:?}:\n{logs}"
        );
    }
}

#[tokio::test]
async fn every_delivery_outcome_is_logged_at_info() {
    let (captured, _guard) = capture(tracing::Level::INFO);
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(Webhooks::new().on_any(|_| async { Ok(()) }))
            .layer(CariosanWebhookLayer::new(SECRET)),
    );
    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let body = fixture("events/message.created.json");
    for _ in 0..2 {
        let signature = independent_signature(SECRET, id, now(), &body);
        let response = app
            .clone()
            .oneshot(request(id, "message.created", &signature, &body))
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let answered: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("INFO") && l.contains("delivery answered"))
        .collect();
    assert_eq!(answered.len(), 2, "{logs}");
    assert_eq!(
        logs.lines().filter(|l| l.contains("INFO")).count(),
        2,
        "one info line per delivery, the duplicate's included: {logs}"
    );
    assert!(answered[0].contains("outcome=\"handled\""), "{logs}");
    assert!(answered[1].contains("outcome=\"duplicate\""), "{logs}");
}

#[tokio::test]
async fn a_tenants_deliveries_carry_its_name_and_an_unknown_tenant_its_path() {
    use cariosan_webhooks::verification::{Tenant, TenantQuery};
    use cariosan_webhooks::verify::Verifier;

    let (captured, _guard) = capture(tracing::Level::INFO);
    let resolve = |query: TenantQuery| async move {
        Ok::<_, std::io::Error>(
            (query.last_path_segment() == Some("acme"))
                .then(|| Tenant::new("acme", Verifier::new(SECRET).unwrap())),
        )
    };
    let app = Router::new().route(
        "/webhooks/{tenant}",
        post_service(Webhooks::new().on_any(|_| async { Ok(()) }))
            .layer(CariosanWebhookLayer::for_tenants(resolve)),
    );
    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let body = fixture("events/message.created.json");
    for (path, status) in [("/webhooks/acme", 200), ("/webhooks/initech", 404)] {
        let mut request = request(
            id,
            "message.created",
            &independent_signature(SECRET, id, now(), &body),
            &body,
        );
        *request.uri_mut() = path.parse().unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
    }
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let answered = logs
        .lines()
        .find(|l| l.contains("delivery answered"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(answered.contains("tenant=\"acme\""), "{answered}");
    let unknown = logs
        .lines()
        .find(|l| l.contains("no tenant for this request"))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(unknown.contains("path=\"/webhooks/initech\""), "{unknown}");
}
