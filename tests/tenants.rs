//! Several workspaces on one router: a resolver chooses each request's
//! tenant and secrets from its path before the body is read, and the tenant
//! joins the delivery id in the store's key.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::model::Event;
use cariosan_webhooks::verification::{Tenant, TenantQuery};
use cariosan_webhooks::verify::Verifier;
use cariosan_webhooks::{CariosanWebhookLayer, Delivery, Webhooks};
use common::*;

const ACME: &str = "whsec_tenant_acme";
const GLOBEX: &str = "whsec_tenant_globex";

async fn resolve(query: TenantQuery) -> Result<Option<Tenant>, std::io::Error> {
    // A database look-up, as a resolver would do behind a cache.
    tokio::time::sleep(Duration::from_millis(1)).await;
    Ok(match query.last_path_segment() {
        Some("acme") => Some(Tenant::new("acme", Verifier::new(ACME).unwrap())),
        Some("globex") => Some(Tenant::new("globex", Verifier::new(GLOBEX).unwrap())),
        Some("broken") => return Err(std::io::Error::other("the tenant table is down")),
        _ => None,
    })
}

async fn post(
    addr: std::net::SocketAddr,
    path: &str,
    secret: &str,
    id: &str,
    body: &[u8],
) -> Reply {
    let signature = independent_signature(secret, id, now(), body);
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (name, value) in delivery_headers(id, "webhook.ping", &signature) {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = request.into_bytes();
    bytes.extend_from_slice(body);
    raw(addr, &bytes).await
}

#[tokio::test]
async fn each_tenant_has_its_secrets_and_its_own_delivery_ids() {
    let handled: Arc<Mutex<Vec<String>>> = Arc::default();
    let runs = Arc::new(AtomicUsize::new(0));
    let (log, counted) = (handled.clone(), runs.clone());
    let webhooks = Webhooks::new().on_any(move |event: Delivery<Event>| {
        counted.fetch_add(1, Ordering::SeqCst);
        log.lock().unwrap().push(event.id.to_string());
        async { Ok(()) }
    });
    let app = Router::new().route(
        "/webhooks/{tenant}",
        post_service(webhooks).layer(CariosanWebhookLayer::for_tenants(resolve)),
    );
    let addr = serve(app).await;
    let id = "evt_01JDB844PINGPINGPINGPIN01";
    let body = fixture("events/webhook.ping.json");

    let acme = post(addr, "/webhooks/acme", ACME, id, &body).await;
    assert_eq!((acme.status, acme.body.as_str()), (200, "handled"));
    let globex = post(addr, "/webhooks/globex", GLOBEX, id, &body).await;
    assert_eq!(
        (globex.status, globex.body.as_str()),
        (200, "handled"),
        "the same delivery id from another tenant is another delivery"
    );
    for (path, secret) in [("/webhooks/acme", ACME), ("/webhooks/globex", GLOBEX)] {
        let again = post(addr, path, secret, id, &body).await;
        assert_eq!(
            (again.status, again.body.as_str()),
            (200, "duplicate"),
            "{path}"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2, "once for each tenant");

    let crossed = post(
        addr,
        "/webhooks/globex",
        ACME,
        "evt_crossed",
        &with_id(&body, "evt_crossed"),
    )
    .await;
    assert_eq!(
        (crossed.status, crossed.body.as_str()),
        (401, "signature_mismatch"),
        "a tenant's secret works on its own path only"
    );
    let unknown = post(addr, "/webhooks/initech", ACME, id, &body).await;
    assert_eq!(
        (unknown.status, unknown.body.as_str()),
        (404, "unknown_tenant")
    );
    let broken = post(addr, "/webhooks/broken", ACME, id, &body).await;
    assert_eq!(
        (broken.status, broken.body.as_str()),
        (503, "store_unavailable")
    );
    assert!(
        broken.head.to_ascii_lowercase().contains("retry-after"),
        "{}",
        broken.head
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
