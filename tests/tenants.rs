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
use cariosan_webhooks::verify::{FixedClock, Verifier};
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
    post_signed_at(addr, path, secret, id, now(), body).await
}

async fn post_signed_at(
    addr: std::net::SocketAddr,
    path: &str,
    secret: &str,
    id: &str,
    signed_at: i64,
    body: &[u8],
) -> Reply {
    let signature = independent_signature(secret, id, signed_at, body);
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

/// `acme` inherits the layer's settings; `strict` sets a tolerance of its
/// own (200 s), which wins over the layer's.
async fn resolve_with_own_tolerance(query: TenantQuery) -> Result<Option<Tenant>, std::io::Error> {
    Ok(match query.last_path_segment() {
        Some("acme") => Some(Tenant::new("acme", Verifier::new(ACME).unwrap())),
        Some("own") => Some(Tenant::new(
            "own",
            Verifier::new(GLOBEX)
                .unwrap()
                .tolerance(Duration::from_secs(200)),
        )),
        _ => None,
    })
}

#[tokio::test]
async fn a_tenant_layers_tolerance_and_clock_apply_to_every_tenant_without_its_own() {
    let tenants = Arc::new(Mutex::new(Vec::new()));
    let seen = tenants.clone();
    let webhooks = Webhooks::new().on_any(move |event: Delivery<Event>| {
        seen.lock().unwrap().push(event.tenant().map(str::to_owned));
        async { Ok(()) }
    });
    let layer = CariosanWebhookLayer::for_tenants(resolve_with_own_tolerance)
        .tolerance(Duration::from_secs(10));
    let app = Router::new().route("/webhooks/{tenant}", post_service(webhooks).layer(layer));
    let addr = serve(app).await;
    let body = fixture("events/webhook.ping.json");
    let id = "evt_01JDB844PINGPINGPINGPIN01";

    let old = post_signed_at(addr, "/webhooks/acme", ACME, id, now() - 100, &body).await;
    assert_eq!(
        (old.status, old.body.as_str()),
        (401, "timestamp_too_old"),
        "the layer's 10 s tolerance applies to a tenant that sets none"
    );
    let fresh = post_signed_at(addr, "/webhooks/acme", ACME, id, now() - 5, &body).await;
    assert_eq!((fresh.status, fresh.body.as_str()), (200, "handled"));
    let own = post_signed_at(addr, "/webhooks/own", GLOBEX, id, now() - 100, &body).await;
    assert_eq!(
        (own.status, own.body.as_str()),
        (200, "handled"),
        "a tenant's own tolerance wins over the layer's"
    );
    assert_eq!(
        *tenants.lock().unwrap(),
        [Some("acme".to_owned()), Some("own".to_owned())],
        "handlers read the delivery's tenant"
    );

    // A clock on the layer is every tenant's "now".
    let pinned = now() - 86_400;
    let webhooks = Webhooks::new().on_any(|_: Delivery<Event>| async { Ok(()) });
    let layer = CariosanWebhookLayer::for_tenants(resolve).clock(FixedClock(pinned));
    let addr =
        serve(Router::new().route("/webhooks/{tenant}", post_service(webhooks).layer(layer))).await;
    let as_of_clock = post_signed_at(addr, "/webhooks/acme", ACME, id, pinned - 60, &body).await;
    assert_eq!(
        (as_of_clock.status, as_of_clock.body.as_str()),
        (200, "handled")
    );
    let as_of_now = post(
        addr,
        "/webhooks/acme",
        ACME,
        "evt_now",
        &with_id(&body, "evt_now"),
    )
    .await;
    assert_eq!(
        (as_of_now.status, as_of_now.body.as_str()),
        (401, "timestamp_too_new"),
        "signed now, a day after the layer's clock"
    );
}

#[test]
fn a_tenant_layer_refuses_secrets_it_would_never_use() {
    let secret = std::panic::catch_unwind(|| {
        CariosanWebhookLayer::for_tenants(resolve).secret("whsec_never_used")
    });
    let message = *secret.unwrap_err().downcast::<String>().unwrap();
    assert!(message.contains("tenant layer"), "{message}");
    let layer = CariosanWebhookLayer::for_tenants(resolve);
    assert!(layer.verification().is_for_tenants());
    assert!(layer.verification().try_secrets().is_none());
    let secrets = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| layer.secrets().len()));
    assert!(secrets.is_err(), "secrets() on a tenant layer is refused");

    let single = CariosanWebhookLayer::new(ACME).secret(GLOBEX);
    assert_eq!(single.secrets().len(), 2);
    assert!(single.verification().try_secrets().is_some());
}
