//! The layer mounted the documented way guards only the webhook route: the
//! rest of the application answers as if it were not there.

mod common;

use axum::routing::{get, post, post_service};
use axum::Router;
use cariosan_webhooks::CariosanWebhookLayer;
use common::*;

#[tokio::test]
async fn the_layer_guards_the_webhook_route_and_nothing_else() {
    for route_helper in [true, false] {
        guards_only_its_route(route_helper).await;
    }
}

/// With `layer.route(webhooks)` (what the README shows) or the 0.2 mounting.
async fn guards_only_its_route(route_helper: bool) {
    let (webhooks, runs) = counting_webhooks();
    let layer = CariosanWebhookLayer::new(SECRET);
    let route = if route_helper {
        layer.route(webhooks)
    } else {
        post_service(webhooks).layer(layer)
    };
    let app = Router::new()
        .route("/webhooks/cariosan", route)
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/api/orders",
            post(|body: String| async move { format!("order of {} bytes", body.len()) }),
        );
    let addr = serve(app).await;

    let health = raw(
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((health.status, health.body.as_str()), (200, "ok"));

    let order = raw(
        addr,
        b"POST /api/orders HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!(
        (order.status, order.body.as_str()),
        (200, "order of 5 bytes")
    );

    let unknown = raw(
        addr,
        b"GET /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(unknown.status, 404);
    let unknown_post = raw(
        addr,
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(unknown_post.status, 404);

    // A GET on the webhook path reaches the layer through the route's method
    // fallback, and gets the layer's own answer.
    let get_hook = raw(
        addr,
        b"GET /webhooks/cariosan HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        (get_hook.status, get_hook.body.as_str()),
        (405, "method_not_allowed")
    );
    assert!(get_hook.head.to_ascii_lowercase().contains("allow: post"));

    let body = fixture("events/message.created.json");
    let reply = send_signed(
        addr,
        "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A",
        "message.created",
        &body,
    )
    .await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    let forged = send(
        addr,
        &delivery_headers(
            "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A",
            "message.created",
            "t=1,v1=00",
        ),
        &body,
    )
    .await;
    assert_eq!(forged.status, 401);
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}
