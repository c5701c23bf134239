//! The Redis store with a real redis-server: its atomic operations, an
//! outage, and a receiver process killed mid-handler. Each test runs its own
//! server on a free port. They need `redis-server` on PATH, so they are
//! ignored by a plain `cargo test`; `.ci/run` installs it and runs them.

#![cfg(feature = "redis")]

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::routing::post_service;
use axum::Router;
use cariosan_webhooks::store::{Claim, IdempotencyStore, RedisStore};
use cariosan_webhooks::CariosanWebhookLayer;
use common::process::ReceiverProcess;
use common::redis_server::RedisServer;
use common::*;

const LEASE: Duration = Duration::from_secs(30);

fn claimed(claim: Claim) -> cariosan_webhooks::store::ClaimToken {
    match claim {
        Claim::Claimed(token) => token,
        other => panic!("expected a claim, got {other:?}"),
    }
}

#[tokio::test]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn claims_are_exclusive_released_by_their_holder_only_and_expire() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .prefix("t1:");
    let token = claimed(store.claim("evt_1", LEASE).await.unwrap());
    let Claim::InProgress { remaining } = store.claim("evt_1", LEASE).await.unwrap() else {
        panic!("a second claim must wait")
    };
    assert!(remaining.unwrap() > Duration::from_secs(25));
    // Only the holder releases, and only its own claim.
    let stranger = cariosan_webhooks::store::ClaimToken::random();
    store.release("evt_1", &stranger).await.unwrap();
    assert!(matches!(
        store.claim("evt_1", LEASE).await.unwrap(),
        Claim::InProgress { .. }
    ));
    assert!(!store.renew("evt_1", &stranger, LEASE).await.unwrap());
    assert!(store.renew("evt_1", &token, LEASE).await.unwrap());
    store.release("evt_1", &token).await.unwrap();
    let _second = claimed(store.claim("evt_1", LEASE).await.unwrap());

    // A lease that runs out frees the id; the stale holder cannot renew.
    let short = claimed(
        store
            .claim("evt_2", Duration::from_millis(200))
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    let new = claimed(store.claim("evt_2", LEASE).await.unwrap());
    assert!(!store.renew("evt_2", &short, LEASE).await.unwrap());
    assert!(new.generation() > short.generation(), "generations grow");

    // A completion by the stale holder does not overwrite the live claim.
    assert!(!store
        .complete("evt_2", &short, Duration::from_secs(60))
        .await
        .unwrap());
    assert!(matches!(
        store.claim("evt_2", LEASE).await.unwrap(),
        Claim::InProgress { .. }
    ));

    // Completed is final for the retention, whoever holds a claim.
    assert!(store
        .complete("evt_2", &new, Duration::from_secs(60))
        .await
        .unwrap());
    assert_eq!(store.claim("evt_2", LEASE).await.unwrap(), Claim::Completed);
    store.release("evt_2", &short).await.unwrap();
    assert_eq!(store.claim("evt_2", LEASE).await.unwrap(), Claim::Completed);

    // Prefixes keep stores apart.
    let other = RedisStore::connect(&redis.url())
        .await
        .unwrap()
        .prefix("t2:");
    claimed(other.claim("evt_2", LEASE).await.unwrap());
}

#[tokio::test]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn a_redis_outage_is_503_and_the_delivery_succeeds_once_redis_returns() {
    let mut redis = RedisServer::start();
    let (webhooks, runs) = counting_webhooks();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let app = Router::new().route(
        "/webhooks/cariosan",
        post_service(webhooks).layer(CariosanWebhookLayer::new(SECRET).store(store)),
    );
    let addr = serve(app).await;
    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let body = fixture("events/message.created.json");

    redis.stop();
    let reply = send_signed(addr, id, "message.created", &body).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (503, "store_unavailable")
    );
    assert!(
        reply.head.to_ascii_lowercase().contains("retry-after"),
        "{}",
        reply.head
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        0,
        "nothing runs without a claim"
    );

    redis.restart();
    // The sender retries; the connection comes back by itself.
    let started = Instant::now();
    let reply = loop {
        let reply = send_signed(addr, id, "message.created", &body).await;
        if reply.status != 503 || started.elapsed() > Duration::from_secs(15) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!((reply.status, reply.body.as_str()), (200, "handled"));
    let again = send_signed(addr, id, "message.created", &body).await;
    assert_eq!((again.status, again.body.as_str()), (200, "duplicate"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs redis-server on PATH; .ci/run installs it and runs the ignored tests"]
async fn a_receiver_killed_mid_handler_leaves_a_claim_that_expires_and_the_retry_runs() {
    let redis = RedisServer::start();
    let url = redis.url();
    let id = "evt_01JDB7Q3KX2W9V0M4T8R6N5P1A";
    let body = fixture("events/message.created.json");

    let mut doomed = ReceiverProcess::start(&[
        ("REDIS_URL", &url),
        ("CARIOSAN_WEBHOOK_LEASE_SECS", "2"),
        ("CARIOSAN_DEMO_DELAY_MS", "60000"),
    ]);
    let first = {
        let (addr, body) = (doomed.addr, body.clone());
        tokio::spawn(async move { send_signed(addr, id, "message.created", &body).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    doomed.kill();
    let killed_at = Instant::now();
    let first = first.await.unwrap();
    assert_ne!(
        first.status, 200,
        "the killed receiver acknowledged nothing: {first:?}"
    );
    assert_eq!(
        doomed.line(Duration::from_millis(100)),
        None,
        "its handler never finished"
    );

    let survivor =
        ReceiverProcess::start(&[("REDIS_URL", &url), ("CARIOSAN_WEBHOOK_LEASE_SECS", "2")]);
    if killed_at.elapsed() < Duration::from_millis(1500) {
        let early = send_signed(survivor.addr, id, "message.created", &body).await;
        assert_eq!(
            (early.status, early.body.as_str()),
            (503, "delivery_in_progress"),
            "the dead claim holds until its lease runs out"
        );
    }
    tokio::time::sleep(Duration::from_millis(2500).saturating_sub(killed_at.elapsed())).await;
    let retry = send_signed(survivor.addr, id, "message.created", &body).await;
    assert_eq!((retry.status, retry.body.as_str()), (200, "handled"));
    let line = survivor
        .line(Duration::from_secs(10))
        .expect("the handler ran");
    assert!(
        line.starts_with(&format!("handled message.created {id} ")),
        "{line}"
    );
    let again = send_signed(survivor.addr, id, "message.created", &body).await;
    assert_eq!((again.status, again.body.as_str()), (200, "duplicate"));
    assert_eq!(
        survivor.line(Duration::from_millis(300)),
        None,
        "a duplicate runs nothing"
    );
}
