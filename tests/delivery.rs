//! Delivery semantics with the default in-memory store, through real HTTP:
//! never acknowledge an unhandled delivery, never run handlers twice for
//! one, and answer so that Cariosan retries when it should.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::store::{
    BoxFuture, Claim, ClaimToken, IdempotencyStore, MemoryStore, StoreError,
};
use cariosan_webhooks::{CariosanWebhookLayer, HandlerError, Webhooks};
use common::*;

const TYPE: &str = "message.created";

/// A delivery of `message.created` whose content tells the handler what to
/// do: `ok`, `fail`, `slow:<ms>`, `retry`, `give_up`.
fn delivery(id: &str, content: &str) -> Vec<u8> {
    let body = String::from_utf8(with_id(&fixture("events/message.created.json"), id)).unwrap();
    body.replace("Halo, pesanan saya sudah dikirim?", content)
        .into_bytes()
}

#[derive(Default)]
struct Counts {
    started: AtomicUsize,
    succeeded: AtomicUsize,
    given_up: Mutex<Vec<String>>,
}

fn webhooks(counts: &Arc<Counts>) -> Webhooks {
    let handler_counts = counts.clone();
    let hook_counts = counts.clone();
    Webhooks::new()
        .on_message_created(move |event| {
            let counts = handler_counts.clone();
            async move {
                counts.started.fetch_add(1, Ordering::SeqCst);
                let content = event.message.content.as_str();
                if let Some(ms) = content.strip_prefix("slow:") {
                    tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
                }
                match content {
                    "fail" => return Err(HandlerError::msg("the database is down")),
                    "retry" => {
                        return Err(HandlerError::retry_later(
                            Duration::from_secs(120),
                            "the CRM is down",
                        ))
                    }
                    "give_up" => return Err(HandlerError::give_up("this customer was deleted")),
                    _ => {}
                }
                counts.succeeded.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .on_give_up(move |given_up| {
            hook_counts
                .given_up
                .lock()
                .unwrap()
                .push(given_up.id.to_string());
            async { Ok(()) }
        })
}

async fn receiver(layer: CariosanWebhookLayer) -> (SocketAddr, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks(&counts)).layer(layer),
    );
    (serve(app).await, counts)
}

fn layer() -> CariosanWebhookLayer {
    CariosanWebhookLayer::new(SECRET)
}

fn retry_after(reply: &Reply) -> Option<u64> {
    reply.head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("retry-after")
            .then(|| value.trim().parse().ok())?
    })
}

#[tokio::test]
async fn a_copy_after_success_is_acknowledged_without_running_again() {
    let (addr, counts) = receiver(layer()).await;
    let body = delivery("evt_once", "ok");
    let first = send_signed(addr, "evt_once", TYPE, &body).await;
    assert_eq!((first.status, first.body.as_str()), (200, "handled"));
    for _ in 0..3 {
        let again = send_signed(addr, "evt_once", TYPE, &body).await;
        assert_eq!((again.status, again.body.as_str()), (200, "duplicate"));
    }
    assert_eq!(counts.started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_failure_releases_the_claim_so_the_retry_runs() {
    let (addr, counts) = receiver(layer()).await;
    let reply = send_signed(addr, "evt_retry", TYPE, &delivery("evt_retry", "fail")).await;
    assert_eq!((reply.status, reply.body.as_str()), (500, "handler_failed"));
    let reply = send_signed(addr, "evt_retry", TYPE, &delivery("evt_retry", "ok")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    assert_eq!(counts.started.load(Ordering::SeqCst), 2);
    assert_eq!(counts.succeeded.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_copy_that_arrives_while_the_first_runs_is_told_to_retry() {
    let (addr, counts) = receiver(layer()).await;
    let body = delivery("evt_concurrent", "slow:500");
    let first = tokio::spawn(async move { send_signed(addr, "evt_concurrent", TYPE, &body).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let copy = send_signed(
        addr,
        "evt_concurrent",
        TYPE,
        &delivery("evt_concurrent", "slow:500"),
    )
    .await;
    assert_eq!(
        (copy.status, copy.body.as_str()),
        (503, "delivery_in_progress")
    );
    assert_eq!(retry_after(&copy), Some(10));
    let first = first.await.unwrap();
    assert_eq!((first.status, first.body.as_str()), (200, "handled"));
    assert_eq!(counts.started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_handler_over_the_budget_keeps_running_and_its_success_answers_the_retry() {
    let (addr, counts) = receiver(layer().handler_budget(Duration::from_millis(200))).await;
    let started = Instant::now();
    let reply = send_signed(addr, "evt_slow", TYPE, &delivery("evt_slow", "slow:800")).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "handler_still_running")
    );
    assert!(retry_after(&reply).is_some());
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "answered within the budget"
    );
    // Still running: a retry now is told to wait, and nothing is acknowledged.
    let early = send_signed(addr, "evt_slow", TYPE, &delivery("evt_slow", "slow:800")).await;
    assert_eq!(
        (early.status, early.body.as_str()),
        (503, "delivery_in_progress")
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        counts.succeeded.load(Ordering::SeqCst),
        1,
        "the handler ran to completion"
    );
    let retry = send_signed(addr, "evt_slow", TYPE, &delivery("evt_slow", "slow:800")).await;
    assert_eq!((retry.status, retry.body.as_str()), (200, "duplicate"));
    assert_eq!(counts.started.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_hangs_up_does_not_cancel_the_handler() {
    let (addr, counts) = receiver(layer()).await;
    let body = delivery("evt_hangup", "slow:300");
    let request = {
        let headers = delivery_headers(
            "evt_hangup",
            TYPE,
            &independent_signature(SECRET, "evt_hangup", now(), &body),
        );
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        request(&headers, &body)
    };
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &request)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(counts.succeeded.load(Ordering::SeqCst), 1);
    let retry = send_signed(addr, "evt_hangup", TYPE, &body).await;
    assert_eq!((retry.status, retry.body.as_str()), (200, "duplicate"));
}

#[tokio::test]
async fn past_the_concurrency_bound_deliveries_are_shed_not_queued() {
    let (addr, counts) = receiver(layer().max_concurrency(1)).await;
    let body = delivery("evt_busy", "slow:500");
    let first = tokio::spawn(async move { send_signed(addr, "evt_busy", TYPE, &body).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let other = send_signed(addr, "evt_other", TYPE, &delivery("evt_other", "ok")).await;
    assert_eq!((other.status, other.body.as_str()), (503, "overloaded"));
    assert!(retry_after(&other).is_some());
    assert_eq!(first.await.unwrap().status, 200);
    let other = send_signed(addr, "evt_other", TYPE, &delivery("evt_other", "ok")).await;
    assert_eq!((other.status, other.body.as_str()), (200, "handled"));
    assert_eq!(counts.succeeded.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn handlers_can_ask_for_a_later_retry_or_give_up() {
    let (addr, counts) = receiver(layer()).await;
    let reply = send_signed(addr, "evt_later", TYPE, &delivery("evt_later", "retry")).await;
    assert_eq!((reply.status, reply.body.as_str()), (503, "retry_later"));
    assert_eq!(retry_after(&reply), Some(120));
    let reply = send_signed(addr, "evt_later", TYPE, &delivery("evt_later", "ok")).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "handled"),
        "the claim was released"
    );

    let reply = send_signed(addr, "evt_gone", TYPE, &delivery("evt_gone", "give_up")).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "given_up"));
    assert_eq!(*counts.given_up.lock().unwrap(), ["evt_gone"]);
    let reply = send_signed(addr, "evt_gone", TYPE, &delivery("evt_gone", "give_up")).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "duplicate"),
        "given up is final"
    );
}

#[tokio::test]
async fn shutdown_waits_for_handlers_then_abandons_and_releases_them() {
    let store = Arc::new(MemoryStore::new());
    let layer = layer().store(SharedStore(store.clone()));
    let shutdown = layer.shutdown_handle();
    let (addr, counts) = receiver(layer).await;

    let quick = delivery("evt_quick", "slow:100");
    let quick = tokio::spawn(async move { send_signed(addr, "evt_quick", TYPE, &quick).await });
    let stuck = delivery("evt_stuck", "slow:60000");
    let stuck_reply =
        tokio::spawn(async move { send_signed(addr, "evt_stuck", TYPE, &stuck).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(shutdown.running(), 2);

    let drained = shutdown.drain(Duration::from_millis(400)).await;
    assert_eq!(
        drained.abandoned, 1,
        "the quick one finished, the stuck one was abandoned"
    );
    assert_eq!(quick.await.unwrap().status, 200);
    let stuck_reply = stuck_reply.await.unwrap();
    assert_eq!(
        (stuck_reply.status, stuck_reply.body.as_str()),
        (503, "shutting_down")
    );
    let refused = send_signed(addr, "evt_new", TYPE, &delivery("evt_new", "ok")).await;
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (503, "shutting_down")
    );
    // The abandoned claim was released: a replica sharing the store runs it.
    assert!(matches!(
        store
            .claim("evt_stuck", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Claimed(_)
    ));
    assert_eq!(
        store
            .claim("evt_quick", Duration::from_secs(30))
            .await
            .unwrap(),
        Claim::Completed
    );
    assert_eq!(counts.succeeded.load(Ordering::SeqCst), 1);
}

/// A store shared between a test and a layer.
struct SharedStore(Arc<MemoryStore>);

impl IdempotencyStore for SharedStore {
    fn claim<'a>(
        &'a self,
        id: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        self.0.claim(id, lease)
    }
    fn renew<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.0.renew(id, token, lease)
    }
    fn complete<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
        retention: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.0.complete(id, token, retention)
    }
    fn release<'a>(
        &'a self,
        id: &'a str,
        token: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.release(id, token)
    }
}

/// A store whose backend is down.
struct DownStore;

impl IdempotencyStore for DownStore {
    fn claim<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(async { Err(StoreError::new("connection refused")) })
    }
    fn renew<'a>(
        &'a self,
        _: &'a str,
        _: &'a ClaimToken,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async { Err(StoreError::new("connection refused")) })
    }
    fn complete<'a>(
        &'a self,
        _: &'a str,
        _: &'a ClaimToken,
        _: Duration,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async { Err(StoreError::new("connection refused")) })
    }
    fn release<'a>(
        &'a self,
        _: &'a str,
        _: &'a ClaimToken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::new("connection refused")) })
    }
}

#[tokio::test]
async fn an_unreachable_store_is_503_and_no_handler_runs() {
    let (addr, counts) = receiver(layer().store(DownStore)).await;
    let reply = send_signed(addr, "evt_down", TYPE, &delivery("evt_down", "ok")).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "store_unavailable")
    );
    assert_eq!(counts.started.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn the_in_memory_store_stays_within_its_bound_over_a_million_deliveries() {
    let store = MemoryStore::new();
    let lease = Duration::from_secs(30);
    let retention = Duration::from_secs(3 * 24 * 3600);
    let mut peak_bytes = 0;
    for n in 0..1_000_000u32 {
        let id = format!("evt_{n:026}");
        let Claim::Claimed(token) = store.claim(&id, lease).await.unwrap() else {
            panic!("{id} is new")
        };
        assert!(store.complete(&id, &token, retention).await.unwrap());
        if n % 50_000 == 0 {
            peak_bytes = peak_bytes.max(store.approximate_bytes());
        }
    }
    assert_eq!(store.len(), cariosan_webhooks::store::DEFAULT_MAX_ENTRIES);
    peak_bytes = peak_bytes.max(store.approximate_bytes());
    assert!(peak_bytes < 64 * 1024 * 1024, "{peak_bytes} bytes");
    // The newest are remembered; the oldest were forgotten first.
    assert_eq!(
        store
            .claim(&format!("evt_{:026}", 999_999), lease)
            .await
            .unwrap(),
        Claim::Completed
    );
    assert!(matches!(
        store.claim(&format!("evt_{:026}", 0), lease).await.unwrap(),
        Claim::Claimed(_)
    ));
}
